"""Results on disk: one JSON file per finished cell, written atomically, read back as tidy rows."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.cells import Cell

ROW_COLUMNS = [
    "method", "task", "backbone", "dataset", "profile", "seed", "metric", "value", "higher_is_better",
    "status", "message", "method_version", "task_version", "config_hash", "wall_s", "peak_mb", "git_commit",
]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Let ``write`` fill a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1, sort_keys=True, default=str)))


class ResultStore:
    """The cells/ folder of one run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"

    def path(self, cell: Cell, recipe: dict[str, Any]) -> Path:
        return self.cells_dir / cell.filename(recipe)

    def status(self, cell: Cell, recipe: dict[str, Any]) -> str | None:
        """The stored status of this exact cell and recipe, or None if it never finished."""
        path = self.path(cell, recipe)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["status"]
        except (json.JSONDecodeError, KeyError):
            return None

    def write(self, cell: Cell, recipe: dict[str, Any], record: dict[str, Any]) -> Path:
        path = self.path(cell, recipe)
        atomic_write_json(path, record)
        return path

    def records(self) -> list[dict[str, Any]]:
        if not self.cells_dir.is_dir():
            raise FileNotFoundError(
                f"no results under {self.run_dir}: expected {self.cells_dir}/ (made by `run_bench.py run --out DIR`)"
            )
        return [json.loads(p.read_text()) for p in sorted(self.cells_dir.glob("*.json"))]

    def current_records(self) -> list[dict[str, Any]]:
        """The newest record of each cell (by start time), dropping those an older recipe produced.

        A changed recipe (profile sizes, method version, ...) writes a new file next to the old
        one, so the run folder keeps both; a table must show the number the newest recipe gave,
        never a mix of the two.
        """
        newest: dict[tuple, dict[str, Any]] = {}
        for rec in self.records():
            key = tuple(sorted(rec["cell"].items()))
            if key not in newest or rec["provenance"].get("started", "") >= newest[key]["provenance"].get("started", ""):
                newest[key] = rec
        return list(newest.values())

    def rows(self) -> pd.DataFrame:
        """One row per (cell, metric) of the current records; failed cells give one row with no metric."""
        out = []
        for rec in self.current_records():
            base = {**rec["cell"], "status": rec["status"], "message": rec.get("message", ""),
                    "config_hash": rec["config_hash"], **{k: rec["provenance"].get(k) for k in
                    ("method_version", "task_version", "wall_s", "peak_mb", "git_commit")}}
            metrics = rec.get("metrics") or [{"metric": None, "value": None, "higher_is_better": None}]
            out.extend({**base, **m} for m in metrics)
        return pd.DataFrame(out, columns=ROW_COLUMNS)
