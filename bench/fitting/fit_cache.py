"""Per-image fits on disk and in memory: one fit per (method, version, fit recipe, backbone, image content).

Entries live in ``<cache_dir>/fits/<method>-v<version>-<backbone>/<recipe hash>/<image hash>.pt``,
each holding its full key and a sha256 of its tensors. An entry that does not load,
names another key or fails its digest is refitted with a warning, never reused.
The folder is bounded: after each write the least recently used entries (by
modification time, refreshed on every hit) are deleted until it fits ``max_mb``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from tqdm.auto import tqdm

from bench.core.cells import slug
from bench.fitting.per_image import fit_images, fit_recipe, fit_settings, image_hash, image_seed
from bench.core.store import atomic_write

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.core.context import RunContext
    from methods.base import PerImageUpsampler

DEFAULT_MAX_MB = 2048


def tensors_digest(obj: Any) -> str:
    """sha256 over every tensor in a nested dict, in key order: what a damaged file fails."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, dict):
            for key in sorted(x):
                h.update(str(key).encode())
                visit(x[key])
        elif isinstance(x, torch.Tensor):
            h.update(repr((tuple(x.shape), str(x.dtype))).encode() + x.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(x).encode())

    visit(obj)
    return h.hexdigest()


class FitCache:
    """The bounded folder of fits for one method, backbone and fit recipe."""

    def __init__(self, root: Path, recipe: dict[str, Any], max_mb: float = DEFAULT_MAX_MB) -> None:
        self.root = Path(root)
        self.recipe = recipe
        self.recipe_hash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = self.root / f"{recipe['method']}-v{recipe['version']}-{slug(recipe['backbone'])}" / self.recipe_hash
        self.max_bytes = max_mb * 2**20

    def path(self, content_hash: str) -> Path:
        return self.folder / f"{content_hash[:32]}.pt"

    def load(self, content_hash: str) -> dict[str, Any] | None:
        """The cached fit of an image, or None when absent; a damaged entry warns and counts as absent."""
        path = self.path(content_hash)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            problem = ("it belongs to another recipe or image" if entry.get("key") != self.key(content_hash)
                       else "its tensors fail their checksum" if tensors_digest(entry["fit"]) != entry.get("digest")
                       else None)
        except Exception as exc:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
            problem = f"it does not load ({type(exc).__name__}: {exc})"
        if problem:
            warnings.warn(f"per-image fit cache entry {path} is damaged: {problem}; refitting it", stacklevel=2)
            return None
        os.utime(path)
        return entry["fit"]

    def save(self, content_hash: str, fit: dict[str, Any]) -> None:
        entry = {"key": self.key(content_hash), "fit": fit, "digest": tensors_digest(fit)}
        atomic_write(self.path(content_hash), lambda tmp: torch.save(entry, tmp))

    def key(self, content_hash: str) -> dict[str, Any]:
        return {"recipe_hash": self.recipe_hash, "image": content_hash}

    def evict(self) -> int:
        """Delete least recently used entries under the cache root until it fits the bound; returns bytes freed."""
        entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.root.rglob("*.pt")]
        total, freed = sum(size for _, size, _ in entries), 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            freed += size
        return freed

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.root.rglob("*.pt")) / 2**20


class ImageFits:
    """The fits a per-image method renders from: memory, then the disk cache, then a new fit.

    The runner's fitting stage calls ``prefit`` with every image a cell will score (a
    progress bar of fits done / to do); ``__call__`` serves the method during scoring
    and fits any image it was not given, so a method also works outside the runner.
    """

    def __init__(self, method: "PerImageUpsampler", backbone: "Backbone", context: "RunContext") -> None:
        self.method, self.backbone, self.context = method, backbone, context
        self.settings = fit_settings(context.profile)
        self.cache = FitCache(Path(context.cache_dir) / "fits", fit_recipe(method, backbone, context.profile),
                              context.fit_cache_mb)
        self.memory: dict[str, dict[str, Any]] = {}
        self.fitted = 0
        """Images fitted (not found in memory or on disk) by this object: tests count cache hits with it."""
        self.fit_seconds = 0.0

    def prefit(self, images: Iterable[torch.Tensor]) -> None:
        """Fit every image not cached yet, ``settings.group`` at a time, with a progress bar."""
        self._fit(self._missing(images)[1], show=True)

    def __call__(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """The fits of a (B,3,H,W) batch, in order."""
        hashes, todo = self._missing(images)
        self._fit(todo, show=False)
        return [self.memory[content] for content in hashes]

    def _missing(self, images: Iterable[torch.Tensor]) -> tuple[list[str], dict[str, torch.Tensor]]:
        """The content hash of each image, and the images found neither in memory nor on disk."""
        hashes, todo = [], {}
        for image in images:
            content = image_hash(image)
            hashes.append(content)
            if content not in self.memory and content not in todo:
                fit = self.cache.load(content)
                if fit is None:
                    todo[content] = image
                else:
                    self.memory[content] = fit
        return hashes, todo

    def _fit(self, todo: dict[str, torch.Tensor], show: bool) -> None:
        if not todo:
            return
        device, items, group = self.context.device, list(todo.items()), self.settings.group
        bar = tqdm(total=len(items), desc=f"fit {self.method.name} per image", unit="img",
                   disable=not (show and self.context.progress))
        for start in range(0, len(items), group):
            chunk = items[start:start + group]
            shapes = {tuple(image.shape) for _, image in chunk}
            batches = [[it for it in chunk if tuple(it[1].shape) == shape] for shape in shapes]
            for batch in batches:  # images of one size per batched network
                t0 = time.perf_counter()
                images = torch.stack([image for _, image in batch]).to(device)
                seeds = [image_seed(content, self.context.profile.seed) for content, _ in batch]
                result = fit_images(self.method, self.backbone, images, self.settings, seeds)
                for (content, _), fit in zip(batch, result.fits):
                    self.cache.save(content, fit)
                    self.memory[content] = fit
                self.fitted += len(batch)
                self.fit_seconds += time.perf_counter() - t0
                bar.update(len(batch))
                bar.set_postfix_str(f"{self.fit_seconds / self.fitted:.2f} s/img")
            self.cache.evict()
        bar.close()
