"""Sweeps split over machines: a deterministic share of the cells per shard, and the merge of shard folders.

A Slurm job array runs the same ``run`` command with ``--shard k/N`` in every task; each task
plans the same cells, sorts them by a hash of the cell's identity (method, task, backbone,
dataset label, profile, seed: no paths, times or package versions, so every machine agrees) and
keeps every N-th one from position k-1. Shards differ in size by at most one cell.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.core.cells import Cell
from bench.core.store import ResultStore, atomic_write_json

SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")


class MergeError(ValueError):
    """Shard folders that cannot be joined into one run: different runs, or one cell with two results."""


def parse_shard(text: str) -> tuple[int, int]:
    """"k/N" -> (k, N) with 1 <= k <= N."""
    match = SHARD_PATTERN.match(text.strip())
    k, n = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: expected k/N with 1 <= k <= N, e.g. --shard 1/4 "
                         f"(Slurm: --shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT)")
    return k, n


def cell_key(cell: Cell) -> str:
    """A hash of the cell's identity alone, the same on every machine."""
    return hashlib.sha256(json.dumps(asdict(cell), sort_keys=True).encode()).hexdigest()


def shard_cells(cells: list[tuple[Cell, dict]], k: int, n: int) -> list[tuple[Cell, dict]]:
    """Shard k of n (1-based): every n-th cell in cell-key order, starting at the (k-1)-th."""
    ordered = sorted(cells, key=lambda item: cell_key(item[0]))
    return ordered[k - 1::n]


def _outcome(record: dict[str, Any]) -> tuple:
    """What two copies of one cell must agree on: status and metric values (not times or provenance)."""
    metrics = tuple((m["metric"], m["value"]) for m in record.get("metrics") or [])
    return record["status"], metrics


def _runs_of(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["cell"]["profile"], r["cell"]["backbone"]) for r in records}


def merge_runs(sources: list[Path], out: Path) -> int:
    """Copy every cell file of ``sources`` into ``out``'s cells/, with their data identities; returns the count.

    Refuses (MergeError) when the folders hold different profiles or backbones, when one cell
    file (same cell, same recipe hash) has different results in two folders, or when two folders
    name one dataset label with different identities. Prints a warning when ``run.json`` says the
    shards of an N-way split are not all there.
    """
    stores = [ResultStore(s) for s in sources]
    cell_files: dict[str, tuple[Path, dict[str, Any]]] = {}
    runs: dict[Path, set] = {}
    data: dict[str, dict] = {}
    shards: list[str] = []
    for store in stores:
        if not store.run_dir.is_dir():
            raise MergeError(f"{store.run_dir} is not a run folder (made by `run_bench.py run --shard k/N --out DIR`)")
        files = sorted(store.cells_dir.glob("*.json")) if store.cells_dir.is_dir() else []
        records = [json.loads(f.read_text()) for f in files]
        runs[store.run_dir] = _runs_of(records)
        for path, record in zip(files, records):
            if path.name in cell_files and _outcome(cell_files[path.name][1]) != _outcome(record):
                raise MergeError(f"{path.name} has different results in {cell_files[path.name][0].parent.parent} and "
                                 f"{store.run_dir}: these folders overlap and disagree; merge only shards of one run")
            cell_files.setdefault(path.name, (path, record))
        manifest = store.manifest()
        for label, identity in manifest["data"].items():
            if label in data and data[label] != identity:
                raise MergeError(f"dataset {label!r} has different identities in the folders given "
                                 f"(different data or folders): {data[label]} vs {identity}")
            data[label] = identity
        shards += manifest["shards"]
    kinds = set().union(*runs.values())
    if len(kinds) > 1:
        found = "; ".join(f"{d}: {', '.join(f'{p}/{b}' for p, b in sorted(k))}" for d, k in runs.items() if k)
        raise MergeError(f"the folders disagree on profile/backbone ({found}); merge shards of one run only")
    _warn_missing_shards(shards)
    target = ResultStore(out)
    with target.lock():
        for name, (_, record) in cell_files.items():
            atomic_write_json(target.cells_dir / name, record)
        target.record_data(list(data.values()))
    return len(cell_files)


def _warn_missing_shards(shards: list[str]) -> None:
    by_n: dict[int, set[int]] = {}
    for text in shards:
        k, n = parse_shard(text)
        by_n.setdefault(n, set()).add(k)
    for n, ks in by_n.items():
        missing = sorted(set(range(1, n + 1)) - ks)
        if missing:
            print(f"warning: shards {', '.join(f'{k}/{n}' for k in missing)} are not among the folders merged; "
                  f"their cells are missing from the table", file=sys.stderr)
