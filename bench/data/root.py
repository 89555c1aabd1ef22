"""The data root: one folder holding each fetched dataset under its own name, so runs need no --data flag for it.

Where it is: ``--data-root DIR``, else the environment variable FEATUP_BENCH_DATA, else ``data`` in the working
directory (beside ``results/``, which the suite also writes relative to it). ``data fetch NAME`` unpacks into
``<root>/NAME``, and a run gives every folder dataset its profile names the folder ``<root>/NAME`` where that exists
and ``--data`` gave none.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "FEATUP_BENCH_DATA"
DEFAULT = "data"


def data_root(given: str | os.PathLike | None = None) -> Path:
    """The data root: ``given`` (--data-root), else $FEATUP_BENCH_DATA, else ./data."""
    return Path(given or os.environ.get(ENV) or DEFAULT).expanduser()


def found(name: str, root: Path) -> Path | None:
    """``<root>/<name>`` where it is a folder, else None."""
    folder = root / name
    return folder if folder.is_dir() else None


def missing_folder(name: str) -> str:
    """What a run says of a folder dataset it has no folder for: the flag, and the command that fetches it."""
    return (f"dataset {name!r} needs its local folder: pass --data {name}=PATH, or fetch it with "
            f"`python run_bench.py data fetch {name}` (into the data root: --data-root, ${ENV} or ./{DEFAULT}; "
            f"runs find it there)")
