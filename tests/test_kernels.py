"""Adaptive-conv kernels against the unfold oracle, gradcheck on every path, input errors, profile rows."""
from __future__ import annotations

import pytest
import torch

from bench.profiling.profile import profile_kernels
from kernels.adaptive_conv import IMPLS, adaptive_conv
from kernels.reference import unfold_reference

SHAPES = [  # (B, C, H, W, radius): non-square, B > 1, C = 1, radius 0 to 3, several row blocks
    (2, 3, 9, 13, 1),
    (2, 6, 37, 21, 2),  # 37 rows: two full 16-row blocks and a partial one; 6 = 4 + 2 channels
    (1, 1, 11, 6, 3),
    (3, 5, 5, 8, 3),
    (2, 2, 4, 3, 0),
]


def inputs(B: int, C: int, H: int, W: int, r: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = 2 * r + 1
    V = torch.randn(B, C, H + 2 * r, W + 2 * r, generator=g, dtype=dtype)
    K = torch.randn(B, H, W, T, T, generator=g, dtype=dtype)
    dY = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    return V, K, dY


def brute_force(V: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The definition, one tap at a time, in float64: an oracle independent of unfold."""
    H, W, T = K.shape[1:4]
    Y = torch.zeros(V.shape[0], V.shape[1], H, W, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            Y += K[:, None, :, :, i, j].double() * V[:, :, i:i + H, j:j + W].double()
    return Y


def test_kernel_unfold_reference_matches_the_definition():
    V, K, _ = inputs(2, 3, 7, 5, 2)
    torch.testing.assert_close(unfold_reference(V, K).double(), brute_force(V, K), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}H{}W{}r{}".format(*s))
def test_kernel_forward_and_grads_match_unfold(impl, shape):
    V, K, dY = inputs(*shape)
    Vr, Kr = V.clone().requires_grad_(), K.clone().requires_grad_()
    unfold_reference(Vr, Kr).backward(dY)
    Vi, Ki = V.clone().requires_grad_(), K.clone().requires_grad_()
    Y = adaptive_conv(Vi, Ki, impl)
    Y.backward(dY)
    torch.testing.assert_close(Y, unfold_reference(V, K), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Vi.grad, Vr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Ki.grad, Kr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(2, 2, 3, 4, 1), (1, 2, 4, 3, 3)], ids=["r1", "r3"])
def test_kernel_gradcheck_float64(impl, shape):
    V, K, _ = inputs(*shape, dtype=torch.float64)
    V.requires_grad_()
    K.requires_grad_()
    # fast mode checks random projections u^T J v: a tap with a wrong or missing gradient changes them
    assert torch.autograd.gradcheck(lambda v, k: adaptive_conv(v, k, impl), (V, K), fast_mode=True)


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_kernel_every_tap_gets_a_gradient(impl):
    """The public FeatUp CUDA kernel fed only taps 0,1,4,9,...: each tap's grad must match alone."""
    V, K, dY = inputs(1, 2, 5, 6, 3)
    K.requires_grad_()
    adaptive_conv(V, K, impl).backward(dY)
    expected = torch.einsum("bchw,bcijhw->bhwij", dY,
                            V.unfold(2, 5, 1).unfold(3, 6, 1))
    torch.testing.assert_close(K.grad, expected, rtol=1e-5, atol=1e-5)
    assert (K.grad.abs().sum(dim=(0, 1, 2)) > 0).all()


def test_kernel_non_contiguous_inputs_are_accepted():
    V, K, _ = inputs(2, 3, 6, 7, 1)
    Vt = V.transpose(2, 3).contiguous().transpose(2, 3)
    assert not Vt.is_contiguous()
    torch.testing.assert_close(adaptive_conv(Vt, K, "numba"), unfold_reference(V, K), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("V, K, error, match", [
    (torch.zeros(1, 2, 8, 8), torch.zeros(1, 6, 6, 3), ValueError, "K must be 5-D"),
    (torch.zeros(2, 8, 8), torch.zeros(1, 6, 6, 3, 3), ValueError, "V must be 4-D"),
    (torch.zeros(1, 2, 8, 8), torch.zeros(1, 6, 6, 3, 5), ValueError, "equal and odd"),
    (torch.zeros(1, 2, 8, 8), torch.zeros(1, 6, 6, 2, 2), ValueError, "equal and odd"),
    (torch.zeros(1, 2, 9, 8), torch.zeros(1, 6, 6, 3, 3), ValueError, r"V must have shape .*\(1, 2, 8, 8\)"),
    (torch.zeros(2, 2, 8, 8), torch.zeros(1, 6, 6, 3, 3), ValueError, "V must have shape"),
    (torch.zeros(1, 2, 8, 8), torch.zeros(1, 6, 6, 3, 3, dtype=torch.float64), TypeError, "same dtype"),
    (torch.zeros(1, 2, 8, 8, dtype=torch.int32), torch.zeros(1, 6, 6, 3, 3), TypeError, "float32 or float64"),
    (torch.zeros(1, 2, 8, 8).numpy(), torch.zeros(1, 6, 6, 3, 3), TypeError, "must be a torch.Tensor"),
])
def test_kernel_bad_inputs_raise_clear_errors(V, K, error, match):
    with pytest.raises(error, match=match):
        adaptive_conv(V, K)


def test_kernel_unknown_impl_is_named():
    V, K, _ = inputs(1, 1, 4, 4, 1)
    with pytest.raises(ValueError, match="unknown impl 'cuda'.*reference"):
        adaptive_conv(V, K, "cuda")


def test_kernel_device_mismatch_is_an_error():
    V, K, _ = inputs(1, 1, 4, 4, 1)
    with pytest.raises(ValueError, match="same device"):
        adaptive_conv(V, K.to("meta"))


def test_kernel_profile_columns_and_skipped_cuda_row():
    df = profile_kernels([8], [4], "cpu", repeats=1, radius=1, progress=False)
    for col in ["impl", "pass", "size", "channels", "ms", "peak_mb", "gbps", "gflops", "bw_fraction", "peak_fraction",
                "status", "message"]:
        assert col in df.columns
    assert df.attrs["matmul_gflops"] > 0
    assert set(df["pass"]) == {"forward", "forward_out", "x2_out", "backward"}
    assert set(df[df["pass"] == "forward_out"]["impl"]) == set(df[df["pass"] == "x2_out"]["impl"]) == {"numba"}
    ok = df[df["impl"].isin(["reference", "torch", "numba"])]
    assert (ok["status"] == "ok").all(), ok["message"].tolist()
    assert (ok["ms"] > 0).all() and (ok["bw_fraction"] > 0).all() and (ok["peak_fraction"] > 0).all()
    assert (df[df["impl"] == "numba_cuda"]["status"] == "skipped").all()


# One image, C = 4, 8 x 8 output, radius 1 (T = 3, 9 taps): bytes and FLOPs of each pass, by hand.
# V is 4 * 10 * 10 * 4 B = 1600 B, K 9 * 64 * 4 B = 2304 B, Y (and dY) 4 * 64 * 4 B = 1024 B.
HAND = {  # pass: (bytes moved, FLOPs)
    "forward": (1600 + 2304 + 1024, 2 * 4 * 9 * 64),  # read V and K, write Y; a multiply-add per tap
    "forward_out": (1600 + 2304 + 1024, 2 * 4 * 9 * 64),
    "x2_out": (4 * 16 * 4 + 2304 + 1024, 2 * 4 * 9 * 64),  # reads the 4 x 4 map V is resampled from
    "backward": (1024 + 2 * (1600 + 2304), 4 * 4 * 9 * 64),  # read dY, V, K; write dV, dK: twice the taps
}


def test_kernel_profile_rates_and_fractions_against_hand_computed_values(monkeypatch):
    """Every call timed at 2 ms, copies at 100 GB/s and the matmul at 50 GFLOP/s: each rate and fraction
    is then a number worked out by hand from the sizes, not the profile's own formula run twice."""
    import bench.profiling.profile as profile

    monkeypatch.setattr(profile, "measure", lambda fn, device, repeats=5: profile.Measurement(ms=2.0, peak_mb=0.5))
    monkeypatch.setattr(profile, "measure_copy_bandwidth", lambda device: 100.0)
    monkeypatch.setattr(profile, "measure_matmul_gflops", lambda device: 50.0)
    df = profile_kernels([8], [4], "cpu", impls=["torch", "numba"], repeats=1, radius=1, progress=False)
    assert df.attrs == {"copy_gbps": 100.0, "matmul_gflops": 50.0}
    assert len(df) == 6 and (df["status"] == "ok").all(), df["message"].tolist()
    for row in df.itertuples():
        moved, flops = HAND[row._2]  # row._2 is the "pass" column
        assert row.ms == 2.0 and row.peak_mb == 0.5
        assert row.gbps == pytest.approx(moved / 2e-3 / 1e9, rel=1e-12)  # bytes per 2 ms, in GB/s
        assert row.gflops == pytest.approx(flops / 2e-3 / 1e9, rel=1e-12)
        assert row.bw_fraction == pytest.approx(moved / 2e-3 / 1e9 / 100.0, rel=1e-12)
        assert row.peak_fraction == pytest.approx(flops / 2e-3 / 1e9 / 50.0, rel=1e-12)
    forward = df[(df["impl"] == "numba") & (df["pass"] == "forward")].iloc[0]
    assert forward["gflops"] == pytest.approx(0.002304) and forward["peak_fraction"] == pytest.approx(4.608e-5)


def test_kernel_profile_reports_oom_without_running_when_memory_is_tiny():
    df = profile_kernels([16], [8], "cpu", impls=["reference", "numba"], repeats=1, progress=False,
                         memory_budget=1024)
    assert (df["status"] == "oom").all()
    assert df["message"].str.contains("predicted").all()
    assert df["ms"].isna().all()


def test_kernel_profile_records_a_failure_and_keeps_other_rows(monkeypatch):
    import kernels.reference as reference

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(reference, "unfold_reference", broken)
    df = profile_kernels([8], [2], "cpu", impls=["reference", "numba"], repeats=1, radius=1, progress=False)
    ref = df[df["impl"] == "reference"]
    assert (ref["status"] == "error").all() and ref["message"].str.contains("boom").all()
    assert (df[df["impl"] == "numba"]["status"] == "ok").all()


def test_numba_forward_into_a_given_output_equals_the_forward():
    from kernels import numba_cpu

    V, K = torch.randn(2, 5, 15, 17), torch.rand(2, 9, 11, 7, 7)
    out = torch.full((2, 5, 9, 11), float("nan"))
    assert numba_cpu.forward(V, K, out) is out
    torch.testing.assert_close(out, unfold_reference(V, K), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        numba_cpu.forward(V, K, torch.empty(2, 5, 11, 9))


@pytest.mark.parametrize("sides", [(True, True, True, True), (False, True, True, False), (False, False, False, False)])
@pytest.mark.parametrize("B, C, h, w", [(2, 5, 9, 13), (1, 6, 19, 4), (1, 4, 23, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_resampled_values_and_fused_forward_match_torch(B, C, h, w, sides, dtype):
    """pad(bicubic x2) in one pass, and the forward on it without storing it, against torch's ops:
    at image borders (reflect), crop edges (no padding) and both parities of the column pairs."""
    from kernels import resampled_conv
    from kernels.resample import resample
    from methods.featup_jbu import pad, value_taps

    g = torch.Generator().manual_seed(B * C + h)
    x = torch.randn(B, C, h, w, generator=g, dtype=dtype)
    values = pad(torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False), 3, sides)
    taps = value_taps(x, 3, sides)
    torch.testing.assert_close(resample(x, *taps), values, atol=1e-5, rtol=1e-5)
    K = torch.randn(B, values.shape[-2] - 6, values.shape[-1] - 6, 7, 7, generator=g, dtype=dtype)
    expected, plan = brute_force(values, K).to(dtype), resampled_conv.windows(*taps, 7)
    torch.testing.assert_close(resampled_conv.forward_resampled(x, plan, K), expected, atol=1e-4, rtol=1e-4)
    bias = torch.randn(B, C, generator=g, dtype=dtype)
    torch.testing.assert_close(resampled_conv.forward_resampled(x, plan, K, bias), expected + bias[:, :, None, None],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window", [((0, 18), (0, 26)), ((3, 10), (5, 6)), ((1, 17), (2, 25)), ((17, 18), (0, 1))])
def test_kernel_resampled_forward_writes_a_window_into_a_view(window):
    """A tile's pixels only, into a view of a larger output (strided rows), bias included; nothing else written."""
    from kernels import resampled_conv
    from methods.featup_jbu import value_taps

    g = torch.Generator().manual_seed(7)
    x, K, bias = torch.randn(2, 6, 9, 13, generator=g), torch.randn(2, 18, 26, 7, 7, generator=g), torch.randn(2, 6)
    plan = resampled_conv.windows(*value_taps(x, 3), 7)
    whole = resampled_conv.forward_resampled(x, plan, K, bias)
    (y0, y1), (x0, x1) = window
    big = torch.full((2, 6, 40, 50), float("nan"))
    view = big[:, :, 2:2 + y1 - y0, 3:3 + x1 - x0]
    assert resampled_conv.forward_resampled(x, plan, K, bias, view, window) is view
    torch.testing.assert_close(view, whole[:, :, y0:y1, x0:x1], atol=1e-5, rtol=1e-5)
    assert big.isnan().sum() == big.numel() - view.numel()
    with pytest.raises(ValueError, match="out must be"):
        resampled_conv.forward_resampled(x, plan, K, bias, torch.empty(2, 6, 3, 3), window)


@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (3, 1)])
def test_kernel_resampled_forward_on_maps_too_small_to_reflect(h, w):
    """A backbone grid of a pixel or two: the values are replicate-padded and the windows shrink."""
    from kernels import resampled_conv
    from methods.featup_jbu import pad, value_taps

    x = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(h * w))
    values = pad(torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False), 3)
    K = torch.randn(2, 2 * h, 2 * w, 7, 7)
    plan = resampled_conv.windows(*value_taps(x, 3), 7)
    torch.testing.assert_close(resampled_conv.forward_resampled(x, plan, K),
                               brute_force(values, K).float(), atol=1e-4, rtol=1e-4)


def test_kernel_resampled_forward_reads_one_bicubic_window_per_output_pair():
    """The composition's premise: a pair of x2 outputs reads one 7 x 7 source window (7 = radius + 4)."""
    from kernels.resampled_conv import pair_windows
    from methods.featup_jbu import value_taps

    x = torch.zeros(1, 1, 20, 30)
    for sides in [(True, True, True, True), (False, False, False, False)]:
        rows, cols = value_taps(x, 3, sides)
        assert pair_windows(*rows, 7).size == pair_windows(*cols, 7).size == 7


def test_kernel_resample_refuses_tables_that_read_outside_the_input():
    from kernels.resample import resample

    table = (torch.tensor([[0, 5]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="the input has 4 x 4"):
        resample(torch.zeros(1, 1, 4, 4), table, table)


@pytest.mark.parametrize("rows, images, threads", [(56, 1, 2), (112, 1, 2), (7, 1, 16), (263, 3, 2), (1, 1, 2)])
def test_kernel_row_blocks_cover_the_rows_and_balance_the_threads(rows, images, threads):
    from kernels.resampled_conv import _balanced_blocks

    blocks, step = _balanced_blocks(rows, images, 8, threads)
    assert 1 <= step <= 8 and (blocks - 1) * step < rows <= blocks * step  # every row in exactly one block
    tasks = images * blocks
    assert tasks % threads == 0 or tasks >= 8 * threads or tasks == rows * images, (blocks, step)
    if (rows, threads) == (56, 2):
        assert (blocks, step) == (8, 7)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_cuda_matches_the_unfold_reference_on_a_gpu(dtype):
    """``pytest -m gpu``: the numba.cuda kernels on real CUDA tensors, forward and both gradients, against the
    unfold oracle, on torch's default stream and on a side stream (the kernels launch on torch's current one)."""
    assert torch.cuda.is_available(), "pytest -m gpu needs a CUDA device"
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    side = torch.cuda.Stream()
    for stream in (torch.cuda.current_stream(), side):
        for B, C, H, W, r in SHAPES:
            V, K, dY = (t.cuda() for t in inputs(B, C, H, W, r, dtype=dtype))
            stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on the default stream
            with torch.cuda.stream(stream):
                Vg, Kg = V.clone().requires_grad_(), K.clone().requires_grad_()
                Y = adaptive_conv(Vg, Kg, "numba")
                Y.backward(dY)
            torch.cuda.synchronize()
            Vr, Kr = V.clone().requires_grad_(), K.clone().requires_grad_()
            Yr = unfold_reference(Vr, Kr)
            Yr.backward(dY)
            assert Y.device.type == "cuda"
            torch.testing.assert_close(Y, Yr, rtol=tol, atol=tol)
            torch.testing.assert_close(Vg.grad, Vr.grad, rtol=tol, atol=tol)
            torch.testing.assert_close(Kg.grad, Kr.grad, rtol=tol, atol=tol)
