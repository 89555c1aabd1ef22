"""Time and peak memory of a call, copy bandwidth, and the adaptive-conv kernel profile."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.core.failures import describe_failure
from bench.profiling.memory import peak_memory

KERNEL_IMPLS = ["reference", "torch", "numba", "numba_cuda"]
COLUMNS = ["impl", "pass", "size", "channels", "device", "ms", "peak_mb", "gbps", "gflops", "bw_fraction",
           "peak_fraction", "status", "message"]
MARGIN = 0.8  # use at most this share of the free memory, the rest is for the OS and fragmentation


@dataclass
class Measurement:
    ms: float  # median wall time of one call
    peak_mb: float  # peak memory during a call above what was in use before it (a call of its own)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device | str, repeats: int = 5, warmup: int = 1,
            max_s: float = 30.0) -> Measurement:
    """Median time of ``fn()`` over ``repeats`` calls after ``warmup`` calls, and its peak extra memory.

    The peak comes from one call of its own, after the warm-up: on the CPU measuring it first
    hands freed heap pages back to the OS (bench.profiling.memory), so a timed call measured that
    way would pay page faults that a loop over images does not pay. The timed calls then run in
    the steady state of such a loop. The result of the peak call is alive until its peak is read,
    so it counts (an output is memory the call needs); every result is dropped before the next call.

    Repeats stop early (after at least one) once they have taken ``max_s`` seconds, so a
    naive implementation taking tens of seconds a call does not hold a profile up for minutes.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    with peak_memory(device) as peak:
        result = fn()
        _sync(device)
    del result
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        del result
        if sum(times) > max_s:
            break
    return Measurement(ms=1e3 * statistics.median(times), peak_mb=peak.mb)


def measure_copy_bandwidth(device: torch.device | str, mb: int = 256, repeats: int = 5) -> float:
    """GB/s of a large tensor copy, counting bytes read plus bytes written."""
    src = torch.ones(mb * 2**18, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src), device, repeats=repeats).ms
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def measure_matmul_gflops(device: torch.device | str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large float32 torch matmul: the practical compute peak of this machine, now."""
    a = torch.randn(n, n, device=device)
    ms = measure(lambda: a @ a, device, repeats=repeats).ms
    return 2 * n**3 / (ms * 1e-3) / 1e9


def available_bytes(device: torch.device | str) -> int:
    """Free memory now: CUDA free bytes, or MemAvailable on Linux for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def kernel_cost(impl: str, pass_: str, size: int, channels: int, radius: int, itemsize: int = 4) -> dict:
    """Minimum bytes moved, FLOPs, and predicted extra memory of one kernel pass (one image)."""
    taps, hw = (2 * radius + 1) ** 2, size * size
    v = channels * (size + 2 * radius) ** 2 * itemsize
    k, y = taps * hw * itemsize, channels * hw * itemsize
    cols = channels * taps * hw * itemsize
    workspace = {"reference": 2 * cols, "torch": k + 16 * hw * itemsize}.get(impl, 0)  # torch: K copy, chunk temp
    if pass_ == "forward":
        moved, flops, extra = v + k + y, 2 * channels * taps * hw, y + workspace
    elif pass_ == "forward_out":  # into a buffer allocated once
        moved, flops, extra = v + k + y, 2 * channels * taps * hw, y
    elif pass_ == "x2_out":  # the JBU stage: values resampled x2 from a quarter-size map inside the kernel
        moved, flops, extra = channels * hw // 4 * itemsize + k + y, 2 * channels * taps * hw, y
    else:  # reads dY, V, K; writes dV, dK; the reference also holds the saved unfold
        moved, flops, extra = y + 2 * (v + k), 4 * channels * taps * hw, v + k + workspace + (cols if impl == "reference" else 0)
    return {"bytes": moved, "flops": flops, "extra": extra}


def _skip_reason(impl: str, device: torch.device) -> str:
    if impl == "numba_cuda" and device.type != "cuda":
        return "numba_cuda needs a CUDA device (profile with --device cuda)"
    if impl == "numba" and device.type != "cpu":
        return "numba is the CPU kernel here; on CUDA the Numba kernel is reported as numba_cuda"
    return ""


def _kernel_call(impl: str, pass_: str, V: torch.Tensor, K: torch.Tensor, dY: torch.Tensor) -> Callable[[], object]:
    from kernels.adaptive_conv import adaptive_conv

    name = "numba" if impl == "numba_cuda" else impl
    if pass_ == "forward_out":
        from kernels import numba_cpu

        out = torch.empty_like(dY)
        return lambda: numba_cpu.forward(V, K, out)
    if pass_ == "x2_out":
        from kernels.resampled_conv import forward_resampled
        from methods.featup_jbu import ALL_SIDES, value_windows

        h, w = dY.shape[-2] // 2, dY.shape[-1] // 2
        X, out = V[..., :h, :w].contiguous(), torch.empty_like(dY)
        plan = value_windows((h, w), (K.shape[-1] - 1) // 2, ALL_SIDES, None)
        return lambda: forward_resampled(X, plan, K, out=out)
    if pass_ == "forward":
        def run() -> torch.Tensor:
            with torch.no_grad():
                return adaptive_conv(V, K, name)
        return run
    Vg, Kg = V.requires_grad_(True), K.requires_grad_(True)
    Y = adaptive_conv(Vg, Kg, name)
    return lambda: torch.autograd.grad(Y, (Vg, Kg), dY, retain_graph=True)


def profile_one(impl: str, pass_: str, size: int, channels: int, device: torch.device, radius: int,
                repeats: int, copy_gbps: float, budget: int, matmul_gflops: float = float("nan")) -> dict:
    """One row of the kernel profile; failures are recorded in the row."""
    cost = kernel_cost(impl, pass_, size, channels, radius)
    row = {"impl": impl, "pass": pass_, "size": size, "channels": channels, "device": str(device),
           "ms": float("nan"), "peak_mb": float("nan"), "gbps": float("nan"), "gflops": float("nan"),
           "bw_fraction": float("nan"), "peak_fraction": float("nan"), "status": "ok", "message": ""}
    if reason := _skip_reason(impl, device):
        return {**row, "status": "skipped", "message": reason}
    if cost["extra"] > budget:
        return {**row, "status": "oom", "message": f"predicted {cost['extra'] / 2**20:.0f} MB > budget "
                                                   f"{budget / 2**20:.0f} MB; not run"}
    try:
        gen = torch.Generator().manual_seed(0)
        T = 2 * radius + 1
        V = torch.randn(1, channels, size + 2 * radius, size + 2 * radius, generator=gen).to(device)
        K = torch.rand(1, size, size, T, T, generator=gen).to(device)
        dY = torch.randn(1, channels, size, size, generator=gen).to(device)
        result = measure(_kernel_call(impl, pass_, V, K, dY), device, repeats=repeats)
        gbps, gflops = cost["bytes"] / (result.ms * 1e-3) / 1e9, cost["flops"] / (result.ms * 1e6)
        row.update(ms=result.ms, peak_mb=result.peak_mb, gbps=gbps, gflops=gflops, bw_fraction=gbps / copy_gbps,
                   peak_fraction=gflops / matmul_gflops)
    except Exception as exc:  # one failing row must not lose the others
        status, message = describe_failure(exc)
        row.update(status=status, message=message[:300])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def profile_kernels(sizes: list[int], channels: list[int], device: str = "cpu", impls: list[str] | None = None,
                    repeats: int = 5, radius: int = 3, progress: bool = True,
                    memory_budget: int | None = None) -> pd.DataFrame:
    """Forward and backward (dV and dK for a given dY) of each implementation, one float32 image;
    for the CPU Numba kernel also ``forward_out``, the forward into an output allocated once (the
    computation without the page faults of a fresh output), and ``x2_out``, the JBU stage's form of
    it (kernels.resampled_conv: values resampled x2 from a map of half the size, inside the kernel;
    even sizes), into an output allocated once, its GFLOP/s those of the conv it replaces.

    ``memory_budget`` (bytes) caps what a row may need; by default MARGIN of the free memory.
    Rows predicted not to fit are ``oom`` without running; gbps counts the minimum bytes moved
    (inputs read and outputs written once), bw_fraction divides it by the measured copy bandwidth,
    peak_fraction the GFLOP/s by those of a large torch matmul measured in the same run.
    """
    device = torch.device(device)
    impls = impls or KERNEL_IMPLS
    unknown = sorted(set(impls) - set(KERNEL_IMPLS))
    if unknown:
        raise ValueError(f"unknown kernel impl(s) {unknown}; expected some of {KERNEL_IMPLS}")
    copy_gbps, matmul_gflops = measure_copy_bandwidth(device), measure_matmul_gflops(device)
    jobs = [(i, p, s, c) for s in sizes for c in channels for i in impls
            for p in ("forward", "forward_out", "x2_out", "backward") if p in ("forward", "backward") or i == "numba"]
    rows = []
    for impl, pass_, size, ch in tqdm(jobs, desc="profile kernels", disable=not progress):
        budget = memory_budget if memory_budget is not None else int(MARGIN * available_bytes(device))
        rows.append(profile_one(impl, pass_, size, ch, device, radius, repeats, copy_gbps, budget, matmul_gflops))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(copy_gbps=copy_gbps, matmul_gflops=matmul_gflops)
    return df


def plot_profile(df: pd.DataFrame, path: str | Path) -> None:
    """PNG of ms and peak MB against size (log y), one line per implementation/method and pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("impl", "method", "pass", "channels") if k in df.columns]
    ok = df[df["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, col, label in zip(axes, ("ms", "peak_mb"), ("time per call (ms)", "peak extra memory (MB)")):
        for name, group in ok.groupby(keys):
            group = group.sort_values("size")
            ax.plot(group["size"], group[col].clip(lower=1e-3), marker="o", label=" ".join(map(str, name)))
        ax.set(xlabel="output size (pixels per side)", ylabel=label, yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the curves, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
