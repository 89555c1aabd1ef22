"""How a failed cell or profile row is recorded: one rule for the runner and both profilers."""
from __future__ import annotations

import torch

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def describe_failure(exc: Exception) -> tuple[str, str]:
    """(status, message): "oom" for allocation failures on any device, "error" otherwise."""
    return ("oom" if isinstance(exc, OUT_OF_MEMORY) else "error"), f"{type(exc).__name__}: {exc}"
