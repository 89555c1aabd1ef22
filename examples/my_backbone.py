"""A backbone in one file: score upsamplers on it with
    python run_bench.py run --plugin examples/my_backbone.py --backbone my_backbone -m bilinear,featup_jbu --profile smoke

``timm_spec`` reads the stride, feature dim, input size and mean/std from timm's own config for the
model (a ViT's patch grid; a convnet's last stage, or ``stage=`` another). This example is timm's
tiny ``test_vit`` (patch 16, 64-d), randomly initialised so it runs offline with no weights: its
numbers test the plumbing, not the upsamplers. For a real backbone drop ``random_init`` and give the
weights with ``--weights PATH`` (or have them in the Hugging Face cache), e.g.

    BACKBONES.register(timm_spec("vit_base_patch14_dinov2.lvd142m", name="my_dinov2"))

Without a plugin, ``--backbone timm:NAME`` (``timm:NAME@stage`` for a convnet's stage) does the same.
"""
from bench.backbones.names import timm_spec
from bench.registry import BACKBONES

BACKBONES.register(timm_spec(
    "test_vit", name="my_backbone", random_init=True,
    summary="timm test_vit (ViT, patch 16, 64-d), randomly initialised: an offline example",
))
