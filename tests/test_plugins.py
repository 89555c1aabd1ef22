from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.plugins import PluginError, load_plugin_file
from bench.registry import METHODS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_upsampler.py"


def test_example_plugin_registers_a_working_method(lite0, images):
    assert load_plugin_file(str(EXAMPLE)) in (["my_upsampler"], [])  # [] when already loaded
    method = METHODS.get("my_upsampler").create(lite0)
    out = method.upsample(lite0, images, (50, 60))
    assert out.shape == (2, lite0.dim, 50, 60)
    # a flat image makes the bilateral weights uniform: the method is a box blur of bilinear
    flat = torch.full_like(images, 0.5)
    lr = torch.randn(2, 4, 5, 6)
    bilinear = F.interpolate(lr, size=(50, 60), mode="bilinear", align_corners=False)
    box = F.avg_pool2d(F.pad(bilinear, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    torch.testing.assert_close(method(lr, flat, (50, 60)), box, rtol=1e-5, atol=1e-5)


def test_missing_plugin_file():
    with pytest.raises(PluginError, match="no such file"):
        load_plugin_file("nope/missing.py")


def test_plugin_that_registers_nothing(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PluginError, match="registered nothing"):
        load_plugin_file(str(empty))


def test_plugin_that_fails_to_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        load_plugin_file(str(bad))


def test_per_image_example_plugin_is_fitted_by_the_runner(lite0, tmp_path):
    from bench.fitting import fit_method
    from bench.core.context import RunContext
    from bench.core.profiles import PROFILES

    example = EXAMPLE.parent / "my_per_image_upsampler.py"
    assert load_plugin_file(str(example)) in (["my_explicit"], [])
    backbone = lite0
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    method = METHODS.get("my_explicit").create(backbone)
    fit_method(method, backbone, RunContext(PROFILES.get("smoke"), cache_dir=tmp_path, progress=False), images)
    assert method.fits.fitted == 2
    with torch.no_grad():
        out = method.eval().upsample(backbone, images, (50, 70))
    assert out.shape == (2, backbone.dim, 50, 70) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # one fit per image
