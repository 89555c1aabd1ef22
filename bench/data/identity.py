"""Which data a number came from: the identity of a dataset, stored in every cell's recipe and hash.

A name alone is not an identity: two COCO-Stuff folders share the name ``coco_stuff``, and a
folder whose files change is no longer the data an old result was scored on. Embedded datasets
are identified by name and version; folder datasets by their resolved path and a fingerprint of
their file list (relative path, size, modification time), cheap enough to take on every run
(no file is read) yet changed by any edit, addition or removal.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from bench.data import DatasetSpec, dataset_layout
from bench.data.common import DatasetError
from bench.data.root import missing_folder
from bench.registry import DATASETS


def folder_fingerprint(root: str) -> tuple[str, int]:
    """(sha256 of the sorted (relative path, size, mtime_ns) list, file count) of every file under ``root``."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            entries.append(f"{os.path.relpath(path, root)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest(), len(entries)


def dataset_identity(name: str, path: str | None) -> dict[str, Any]:
    """The identity of dataset ``name`` (read from ``path`` where it is a folder dataset).

    ``label`` is short and readable (the table shows it where a run mixes data): the name for
    an embedded dataset, name@folder-<path hash> for a folder, so two folders never share one.
    A changed folder keeps its label but changes its fingerprint, so its cells are scored
    afresh and replace the stale ones in tables.
    """
    spec: DatasetSpec = DATASETS.get(name)
    if spec.embedded:
        return {"name": name, "version": spec.version, "label": name}
    if path is None:
        raise DatasetError(missing_folder(name))
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        kind = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"--data {name}={path}: {str(root)!r} {kind}; expected a folder laid out as\n"
                           f"{dataset_layout(name)}")
    fingerprint, files = folder_fingerprint(str(root))
    place = hashlib.sha256(str(root).encode()).hexdigest()[:6]
    return {"name": name, "path": str(root), "fingerprint": fingerprint, "files": files,
            "label": f"{name}@{root.name}-{place}"}
