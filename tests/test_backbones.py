import datetime
import functools
import pickle
import time

import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F

from bench.backbones.weights import BackboneWeightsError
from bench.backbones import ImageError, backbone_from_model, load_backbone

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@functools.cache
def _lite(name):
    """Each EfficientNet-Lite backbone loaded once for this module (they are frozen)."""
    return load_backbone(name)


@pytest.mark.parametrize("name, native", list(zip(LITES, [224, 240, 260])))
def test_efficientnet_lites_are_real_imagenet_classifiers(name, native):
    lite = _lite(name)
    assert lite.model.pretrained_cfg["input_size"] == (3, native, native)
    cat = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    cat = F.interpolate(cat, size=(native, native), mode="bilinear", antialias=True)
    logits = lite.classify(lite.features(cat)).mean((2, 3))
    assert 281 <= logits.argmax().item() <= 285  # ImageNet's domestic cat classes
    assert logits.softmax(-1).max() > 0.5
    torch.testing.assert_close(logits, lite.model((cat - 0.5) / 0.5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, dim, grid", [
    ("efficientnet_lite0", 320, 7), ("efficientnet_lite1", 320, 7), ("efficientnet_lite2", 352, 7),
    ("efficientnet_lite0_s16", 112, 14), ("efficientnet_lite1_s16", 112, 14), ("efficientnet_lite2_s16", 120, 14),
])
def test_lite_feature_dims_and_grid_at_224(name, dim, grid):
    lite = _lite(name)
    assert lite.dim == dim and lite.grid_size((224, 224)) == (grid, grid)
    assert lite.features(torch.rand(1, 3, 224, 224)).shape == (1, dim, grid, grid)


@pytest.mark.parametrize("name", LITES)
def test_s16_is_the_stride16_stage_of_the_same_weights(name, images):
    full, s16 = _lite(name), _lite(f"{name}_s16")
    seen = []
    hook = full.model.blocks[4].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        full.features(images)
    finally:
        hook.remove()
    torch.testing.assert_close(s16.features(images), seen[0])
    assert seen[0].shape[-2:] == (5, 7)  # ceil((70, 100) / 16)


def test_s16_halved_stride_runs_only_its_own_stages_and_restores():
    s16 = _lite("efficientnet_lite0_s16")
    x = torch.rand(1, 3, 224, 224)
    before = s16.features(x)
    calls = []
    hook = s16.model.blocks[5].register_forward_hook(lambda *_: calls.append(1))
    try:
        with s16.halved_stride():
            assert s16.stride == 8
            assert s16.features(x).shape == (1, 112, 28, 28)
    finally:
        hook.remove()
    assert calls == []  # neither the stride probe nor features ran the stride-32 stage
    assert s16.stride == 16
    torch.testing.assert_close(s16.features(x), before)


def test_truncated_backbone_refuses_to_classify():
    s16 = _lite("efficientnet_lite0_s16")
    with pytest.raises(RuntimeError, match="efficientnet_lite0_s16.*not pointwise"):
        s16.classify(s16.features(torch.rand(1, 3, 64, 64)))


def test_feature_grid_is_ceil_of_size_over_stride(lite0, images):
    assert lite0.features(images).shape == (2, 320, 3, 4)
    assert lite0.grid_size((70, 100)) == (3, 4)


@pytest.mark.parametrize("name", ["vit", "timm:vit_small_patch16_224"])
def test_missing_weights_fail_fast_and_say_how(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match=f"backbone '{name}' .*--weights PATH"):
        load_backbone(name)
    assert time.perf_counter() - start < 10


def test_weights_path_that_is_not_a_file():
    with pytest.raises(BackboneWeightsError, match="is not a file"):
        load_backbone("dinov2", weights="/nonexistent/dinov2.safetensors")


def _text_file(path):
    path.write_text("not a checkpoint\n")


def _foreign_pickle(path):
    path.write_bytes(pickle.dumps({"date": datetime.date(2024, 1, 1)}, protocol=2))


def _wrong_model_state_dict(path):
    torch.save(torch.nn.Conv2d(3, 4, 1).state_dict(), path)


@pytest.mark.parametrize("write", [_text_file, _foreign_pickle, _wrong_model_state_dict])
def test_weights_file_that_is_not_a_checkpoint_of_the_backbone(write, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "weights.pth"
    write(path)
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone("efficientnet_lite0", weights=str(path))
    message = str(err.value)
    assert message.startswith(f"{path} is not a weights file for backbone 'efficientnet_lite0': expected a "
                               ".safetensors or .pth state dict of timm's 'tf_efficientnet_lite0' (")
    assert "\n" not in message  # only the underlying error's first line


@pytest.mark.parametrize("bad", [torch.rand(1, 1, 64, 64), torch.rand(3, 64, 64), torch.rand(1, 3, 16, 64)])
def test_bad_images_are_refused(lite0, bad):
    with pytest.raises(ImageError, match="efficientnet_lite0"):
        lite0.features(bad)


def test_halved_stride_vit_and_restored():
    vit = backbone_from_model(
        "tiny", timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True,
                                  dynamic_img_pad=True), 16, 192, True)
    x = torch.rand(1, 3, 64, 96)
    before = vit.features(x)
    with vit.halved_stride():
        assert vit.features(x).shape == (1, 192, 8, 12)
        assert vit.stride == 8
    torch.testing.assert_close(vit.features(x), before)
    assert vit.stride == 16


def test_halved_stride_convnet_drops_last_stage_stride(lite0, images):
    with lite0.halved_stride():
        assert lite0.features(images).shape[-2:] == (5, 7)
    assert lite0.features(images).shape[-2:] == (3, 4)
