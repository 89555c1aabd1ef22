"""Every registered method honours the Upsampler contract."""
import pytest
import torch
import torch.nn.functional as F

from bench.fitting import fit_method
from bench.registry import METHODS
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.base import ContractError, Upsampler

OUT = (75, 101)  # not a multiple of the stride, not square
REAL = [n for n in METHODS.names() if not n.startswith("_")]  # other test modules register "_" doubles that fail


@pytest.mark.parametrize("name", REAL)
def test_method_contract(name, lite0, images, tmp_path):
    method = METHODS.get(name).create(lite0)
    if method.fit == "image":  # dataset-fitted methods keep their initial weights here; per-image ones need fits
        fit_method(method, lite0, RunContext(PROFILES.get("smoke"), cache_dir=tmp_path, progress=False), images)
    method.eval()
    out = method.upsample(lite0, images, OUT)
    lr = lite0.features(images)
    assert out.shape[:2] == (2, method.output_dim(lite0.dim))
    expected = lr.shape[-2:] if method.keeps_grid else OUT
    assert tuple(out.shape[-2:]) == tuple(expected)
    assert torch.isfinite(out).all()
    # batch items are independent: the first image alone gives the same features
    single = method.upsample(lite0, images[:1], OUT)
    torch.testing.assert_close(single, out[:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in REAL if METHODS.get(n).fit == "dataset"])
def test_gradients_reach_every_parameter(name, lite0, images):
    method = METHODS.get(name).create(lite0).train()
    lr = lite0.features(images)
    method(lr, images, OUT).square().mean().backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"{name}: no gradient reaches {missing}"


def test_wrong_shape_is_reported_with_the_method_name(lite0, images):
    class Broken(Upsampler):
        name = "broken"

        def forward(self, lr_feats, image, output_size):
            return lr_feats[:, :3]

    with pytest.raises(ContractError, match="'broken' returned shape"):
        Broken().upsample(lite0, images, OUT)


def test_wrong_size_is_reported(lite0, images):
    class Small(Upsampler):
        name = "small"

        def forward(self, lr_feats, image, output_size):
            return lr_feats

    with pytest.raises(ContractError, match="spatial size"):
        Small().upsample(lite0, images, OUT)


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [float("inf"), -float("inf")], []],
                         ids=["nan", "inf", "inf and -inf", "large but finite"])
def test_non_finite_values_anywhere_are_reported(bad, lite0, images):
    """One NaN or inf pixel breaks the contract (an inf and a -inf too, which a plain sum would cancel into NaN,
    still non-finite); values near float32's largest are finite and pass."""
    class Spiky(Upsampler):
        name = "spiky"

        def forward(self, lr_feats, image, output_size):
            out = F.interpolate(lr_feats, size=output_size, mode="bilinear").mul(0).add(3e38)
            for k, value in enumerate(bad):
                out[-1, -1 - k, 40, 7] = value
            return out

    if bad:
        with pytest.raises(ContractError, match="'spiky' returned non-finite values"):
            Spiky().upsample(lite0, images, OUT)
    else:
        assert Spiky().upsample(lite0, images, OUT).max() == torch.tensor(3e38)
