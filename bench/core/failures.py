"""How a failed cell or profile row is recorded: one rule for the runner and both profilers."""
from __future__ import annotations

import traceback

import torch

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)
SETTLED = ("ok", "n/a")
"""Statuses that are not failures: scored, or a (method, task) pair that does not apply."""


class NotApplicable(Exception):
    """A task that cannot score this method by design (e.g. end-to-end training of a per-image method)."""


def describe_failure(exc: Exception) -> tuple[str, str]:
    """(status, message): "n/a" for pairs that do not apply, "oom" for allocation failures on any device,
    "error" otherwise."""
    if isinstance(exc, NotApplicable):
        return "n/a", str(exc)
    return ("oom" if isinstance(exc, OUT_OF_MEMORY) else "error"), f"{type(exc).__name__}: {exc}"


def failure(exc: Exception) -> tuple[str, str]:
    """(status, message) of a failed cell or fit: describe_failure, plus the traceback's tail for errors."""
    status, message = describe_failure(exc)
    if status == "error":
        message += f"\n{traceback.format_exc(limit=-3)}"
    return status, message
