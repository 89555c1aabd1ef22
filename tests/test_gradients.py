"""Every trainable method's gradient against central finite differences, in float64.

A training learns from ``backward``, which no forward test checks: a column written twice (NAF's repeated
cell columns, before the fix) leaves the output bit-identical and the gradient wrong. For a scalar
L = <w, f(x, θ)> with a fixed random w, the directional derivative of L along a random direction, taken by
autograd, must equal (L(+εv) - L(-εv)) / 2ε, along the features and along all parameters at once. The
geometry is the one that exposed NAF: a non-square grid and image, the output no whole multiple of the grid.
"""
import pytest
import torch

from bench.registry import METHODS

LR, OUT = (7, 8), (30, 34)  # 30/7 and 34/8 are not whole
EPS = 1e-8
"""Small, because LoftUp's and LiFT's ReLUs put some units within 1e-6 of their kink: at ε = 1e-6 their central
differences were 0.2–5% off autograd, at 1e-7 LiFT's still 2e-4, at 1e-8 both within 1e-6 (they converge to
autograd as ε shrinks: kinks, not a wrong gradient). Float64 round-off at 1e-8 is ~1e-13 / 2e-8 = 5e-6 absolute."""
REL = 1e-4
"""Kinks still reach 1.2e-5 relative along some directions (LoftUp's and UPLiFT's parameter derivatives, seen when
the directions were drawn in test order); the bugs this catches are far larger (NAF's double write: 36-58%)."""
NUMBA_KERNEL_METHODS = {"featup_jbu", "carafe", "sapa"}
"""Their adaptive convolutions run the Numba kernels, whose float64 compilation costs 15-35 s a method on 2 cores
before anything is checked. Their kernels' backward passes are gradchecked in float64 on every path in
test_kernels.py, so in the default run their method-level check waits for ``pytest -m slow``."""
TRAINABLE = [pytest.param(n, marks=pytest.mark.slow) if n in NUMBA_KERNEL_METHODS else n
             for n in METHODS.names() if not n.startswith("_") and METHODS.get(n).fit == "dataset"]


class FakeBackbone:
    """What ``create`` reads of a backbone: its channels and stride."""
    dim, stride = 16, 8


def directional(fn, point: torch.Tensor, direction: torch.Tensor) -> float:
    """(fn(point + εv) - fn(point - εv)) / 2ε."""
    with torch.no_grad():
        return ((fn(point + EPS * direction) - fn(point - EPS * direction)) / (2 * EPS)).item()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"lr": torch.randn(1, FakeBackbone.dim, *LR, generator=g, dtype=torch.float64),
            "image": torch.rand(1, 3, *OUT, generator=g, dtype=torch.float64),
            "weight": torch.randn(1, FakeBackbone.dim, *OUT, generator=g, dtype=torch.float64)}


def random_direction(shape: torch.Size) -> torch.Tensor:
    """The direction of the derivative: drawn afresh for each test, so it never depends on which tests ran before."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def method_for(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    method = METHODS.get(name).create(FakeBackbone()).double().eval()
    with torch.no_grad():  # initial weights can leave branches at exactly zero (zero-initialised layers)
        for p in method.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    return method


@pytest.mark.parametrize("name", TRAINABLE)
def test_feature_gradient_equals_finite_differences(name, inputs):
    method = method_for(name)
    lr, image, w = inputs["lr"], inputs["image"], inputs["weight"]
    direction = random_direction(lr.shape)
    x = lr.clone().requires_grad_(True)
    (method(x, image, OUT) * w).sum().backward()
    analytic = (x.grad * direction).sum().item()
    numeric = directional(lambda f: (method(f, image, OUT) * w).sum(), lr, direction)
    print(f"{name}: features: autograd {analytic:.10g}, finite differences {numeric:.10g}")
    assert analytic == pytest.approx(numeric, rel=REL, abs=1e-6)


@pytest.mark.parametrize("name", TRAINABLE)
def test_parameter_gradient_equals_finite_differences(name, inputs):
    method = method_for(name)
    lr, image, w = inputs["lr"], inputs["image"], inputs["weight"]
    params = [p for p in method.parameters() if p.requires_grad]
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    direction = random_direction(flat.shape)
    (method(lr, image, OUT) * w).sum().backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, split_like(direction, params))).item()

    def loss_at(vector: torch.Tensor) -> torch.Tensor:
        torch.nn.utils.vector_to_parameters(vector, params)
        return (method(lr, image, OUT) * w).sum()

    numeric = directional(loss_at, flat, direction)
    print(f"{name}: parameters: autograd {analytic:.10g}, finite differences {numeric:.10g}")
    assert analytic == pytest.approx(numeric, rel=REL, abs=1e-6)


def split_like(vector: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [part.view_as(p) for part, p in zip(vector.split([p.numel() for p in params]), params)]
