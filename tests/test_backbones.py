import time

import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F

from bench.backbones import BackboneWeightsError, ImageError, backbone_from_model, load_backbone


def test_default_backbone_is_a_real_imagenet_classifier(lite0):
    cat = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True)
    logits = lite0.classify(lite0.features(cat)).mean((2, 3))
    assert 281 <= logits.argmax().item() <= 285  # ImageNet's domestic cat classes
    torch.testing.assert_close(logits, lite0.model((cat - 0.5) / 0.5), rtol=1e-4, atol=1e-4)


def test_feature_grid_is_ceil_of_size_over_stride(lite0, images):
    assert lite0.features(images).shape == (2, 320, 3, 4)
    assert lite0.grid_size((70, 100)) == (3, 4)


def test_missing_weights_fail_fast_and_say_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match="--weights PATH"):
        load_backbone("vit")
    assert time.perf_counter() - start < 10


def test_weights_path_that_is_not_a_file():
    with pytest.raises(BackboneWeightsError, match="is not a file"):
        load_backbone("dinov2", weights="/nonexistent/dinov2.safetensors")


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
