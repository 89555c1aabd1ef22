"""Peak memory of a block of code, on CUDA (allocator stats) or CPU (process high-water mark)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from bench.allocator import return_free_memory

_STATUS = "/proc/self/status"


@dataclass
class Peak:
    mb: float = 0.0


def _rss_kb(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {_STATUS}")


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[Peak]:
    """Yield a Peak whose ``mb`` is set on exit to the growth above the memory in use at entry.

    CPU: Linux lets a process reset its RSS high-water mark (writing 5 to
    /proc/self/clear_refs), so VmHWM after the block minus VmRSS before it is the
    block's peak. Freed heap pages are returned to the OS first (glibc), so that memory
    kept from earlier work does not hide the block's; it is still a lower bound where the
    allocator keeps pages. Elsewhere it reports 0.
    """
    device = torch.device(device)
    peak = Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        try:
            yield peak
        finally:
            torch.cuda.synchronize(device)
            peak.mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    return_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kb("VmRSS:")
    except OSError:
        yield peak
        return
    try:
        yield peak
    finally:
        peak.mb = max(0, _rss_kb("VmHWM:") - before) / 1024
