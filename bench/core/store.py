"""Results on disk: one JSON file per finished cell, written atomically, read back as tidy rows."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from bench.core.cells import Cell

ROW_COLUMNS = [
    "method", "task", "backbone", "dataset", "profile", "seed", "metric", "value", "higher_is_better",
    "primary_data", "status", "message", "method_version", "task_version", "config_hash", "wall_s", "peak_mb",
    "git_commit",
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


class RunFolderError(ValueError):
    """A run folder that cannot be used: it names a file, cannot be created, or another run holds it."""


def cell_key(cell: dict[str, Any]) -> tuple:
    """What names a cell apart from its recipe: (method, task, dataset, seed)."""
    return cell["method"], cell["task"], cell["dataset"], cell["seed"]


def is_stale(record: dict[str, Any], planned: dict[tuple, str] | None) -> bool:
    """Whether ``planned`` (cell key -> today's config hash) gives this record's cell another hash."""
    return planned is not None and planned.get(cell_key(record["cell"]), record["config_hash"]) != record["config_hash"]


class ResultStore:
    """The cells/ folder of one run, its lock and its record of the data it was made with."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunFolderError(f"run folder {str(self.run_dir)!r} is a file; expected a folder "
                                 f"(a new one, or one an earlier run wrote)")
        self.cells_dir = self.run_dir / "cells"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for one run: a second run on it stops at once instead of scoring the same cells.

        An advisory ``flock`` on ``.lock``: the kernel releases it when the holder exits, even
        when killed, so a crashed run never leaves the folder locked.
        """
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.run_dir / ".lock", "a+")
        except OSError as exc:
            raise RunFolderError(f"cannot use run folder {str(self.run_dir)!r}: {exc.strerror}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunFolderError(f"run folder {str(self.run_dir)!r} is in use by another run ({holder}); "
                                     f"wait for it to finish, or pass another --out") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def manifest(self) -> dict[str, Any]:
        """``run.json``: the data identities the run used (by label) and the shards ("k/N") it holds."""
        path = self.run_dir / "run.json"
        return {"data": {}, "shards": [], **(json.loads(path.read_text()) if path.is_file() else {})}

    def record_data(self, identities: list[dict[str, Any]], shard: str | None = None,
                    plugins: list[str] = ()) -> None:
        """Add the data identities a run used (its shard, and the plugin files whose methods it scored) to
        ``run.json``: what the folder was made from, and what `table` and `report` load again to read it."""
        manifest = self.manifest()
        for identity in identities:
            manifest["data"][identity["label"]] = identity
        if shard and shard not in manifest["shards"]:
            manifest["shards"].append(shard)
        if plugins:
            manifest["plugins"] = sorted({*manifest.get("plugins", []), *plugins})
        atomic_write_json(self.run_dir / "run.json", manifest)

    def path(self, cell: Cell, recipe: dict[str, Any]) -> Path:
        return self.cells_dir / cell.filename(recipe)

    def status(self, cell: Cell, recipe: dict[str, Any]) -> str | None:
        """The stored status of this exact cell and recipe, or None if it never finished."""
        stored = self.record(cell, recipe)
        return stored.get("status") if stored else None

    def record(self, cell: Cell, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The stored record of this exact cell and recipe, or None if it never finished (or is damaged)."""
        path = self.path(cell, recipe)
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return stored if "status" in stored else None

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

    def current_records(self, planned: dict[tuple, str] | None = None,
                        records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The newest record of each cell (by start time), dropping those an older recipe produced.

        A changed recipe (profile sizes, method version, ...) writes a new file next to the old
        one, so the run folder keeps both; a table must show the number the newest recipe gave,
        never a mix of the two. With ``planned`` (cell key -> the config hash today's code and profile
        give it, see ``cell_key``), a record of a planned cell with another hash is not current, however new.
        ``records``: the folder's, when the caller has read them already.
        """
        records = self.records() if records is None else records
        newest: dict[tuple, dict[str, Any]] = {}
        for rec in records:
            if is_stale(rec, planned):
                continue
            key = tuple(sorted(rec["cell"].items()))
            if key not in newest or rec["provenance"].get("started", "") >= newest[key]["provenance"].get("started", ""):
                newest[key] = rec
        return list(newest.values())

    def rows(self, per_image: bool = False, records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
        """One row per (cell, metric) of the current records (or of ``records``, read once by a caller that
        needs them too); failed cells give one row with no metric.

        ``per_image`` adds the per-image statistics and their statistic's name (for intervals).
        """
        out = []
        for rec in self.current_records() if records is None else records:
            base = {**rec["cell"], "primary_data": rec["recipe"].get("primary_data", True),
                    "status": rec["status"], "message": rec.get("message", ""),
                    "config_hash": rec["config_hash"], **{k: rec["provenance"].get(k) for k in
                    ("method_version", "task_version", "wall_s", "peak_mb", "git_commit")}}
            metrics = rec.get("metrics") or [{"metric": None, "value": None, "higher_is_better": None}]
            out.extend({**base, **m} for m in metrics)
        return pd.DataFrame(out, columns=ROW_COLUMNS + (["per_image", "statistic"] if per_image else []))
