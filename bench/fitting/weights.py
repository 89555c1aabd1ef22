"""Where a trainable method's weights come from: a file the user names, the weights shipped with the
suite, or the training cache.

Shipped weights live in ``results/weights/`` beside ``manifest.json``, one entry per file in the
style of timm's pretrained configs: method, version, backbone, the full training recipe and its
digest, steps, view-images, seconds, the file's sha256, the loss curve and the git commit. A
run uses a shipped file when the method, its version, the backbone and the training recipe
(every field but the seed: shipped weights serve every probe seed) equal the entry's; a file
whose sha256 differs from its entry is refused, never loaded. ``--retrain`` skips them and trains
into the cache, one set per seed, as before shipping existed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.core.store import atomic_write_json

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "results" / "weights"
MANIFEST = "manifest.json"
SEED_FREE = ("seed",)
"""Recipe fields a shipped file need not match: its training seed is fixed, the runs' seeds vary the probes."""


TRAINING_RECORD = ("profile_recipe", "seconds", "final_loss", "losses", "git_commit", "torch", "device", "date")
"""Fields a training's provenance adds to its recipe (bench.fitting.train.training_provenance)."""


class WeightsError(RuntimeError):
    """A weights file that must not be loaded; the message says which file and what to do."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str
    """"file" (named by the user), "shipped" (results/weights) or "cache" (trained here, or to train)."""
    path: Path | None = None
    entry: dict[str, Any] | None = None
    """The manifest entry of a shipped file."""

    def record(self) -> dict[str, Any] | None:
        """What a cell's recipe stores about the weights that scored it (None for the training cache,
        whose recipe the profile already fixes)."""
        if self.kind == "file":
            return {"source": "file", "file": self.path.name, "sha256": file_sha256(self.path)}
        if self.kind == "shipped":
            return {"source": "shipped", "file": self.entry["file"], "sha256": self.entry["sha256"],
                    "steps": self.entry["steps"], "recipe_digest": self.entry["recipe_digest"]}
        return None

    def describe(self) -> str:
        """One line for the plan and the log: e.g. "shipped weights, 8000 steps, recipe 1a2b3c4d"."""
        if self.kind == "shipped":
            return f"shipped weights, {self.entry['steps']} steps, recipe {self.entry['recipe_digest']}"
        return f"weights from {self.path}" if self.kind == "file" else "trained weights (cache)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_digest(recipe: dict[str, Any]) -> str:
    """The digest that names a training recipe, without its seed (see SEED_FREE)."""
    kept = {k: v for k, v in recipe.items() if k not in SEED_FREE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def shipped_dir(folder: Path | None = None) -> Path:
    """``folder``, or the suite's results/weights (read at call time, so tests can point it elsewhere)."""
    return SHIPPED_DIR if folder is None else folder


def manifest(folder: Path | None = None) -> list[dict[str, Any]]:
    path = shipped_dir(folder) / MANIFEST
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["weights"]
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path} is not a weights manifest ({exc}); restore it from the repository") from exc


def has_shipped(method: str, backbone_key: str, folder: Path | None = None) -> bool:
    """Whether any shipped file is for this method and backbone (a cheap test before matching a recipe)."""
    return any(e["method"] == method and e["backbone"] == backbone_key for e in manifest(folder))


def find_shipped(recipe: dict[str, Any], folder: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry whose method, version, backbone and recipe digest equal ``recipe``'s, if any."""
    digest = recipe_digest(recipe)
    for entry in manifest(folder):
        if (entry["method"], entry["version"], entry["backbone"], entry["recipe_digest"]) == (
                recipe["method"], recipe["version"], recipe["backbone"], digest):
            return entry
    return None


def verified_path(entry: dict[str, Any], folder: Path | None = None) -> Path:
    """The shipped file of ``entry``, after checking its sha256 against the manifest."""
    folder = shipped_dir(folder)
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"shipped weights {path} are missing though {folder / MANIFEST} lists them; "
                           f"restore the file from the repository, or pass --retrain")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"shipped weights {path} have sha256 {actual[:16]}…, the manifest says "
                           f"{entry['sha256'][:16]}…: refusing to load a file that is not the one shipped. "
                           f"Restore it from the repository, or pass --retrain")
    return path


def load_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (tensors only), or an error naming the file."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
        raise WeightsError(f"{path} is not a readable state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def ship(weights: Path, recipe: dict[str, Any], trained: dict[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """Copy trained ``weights`` into ``folder`` and add (or replace) its manifest entry; returns the entry.

    ``recipe`` is the training recipe (bench.fitting.train.checkpoint); ``trained`` what the training
    recorded (bench.fitting.train.training_provenance: seconds, losses, git commit, ...).
    """
    digest = recipe_digest(recipe)
    name = f"{recipe['method']}-v{recipe['version']}-{recipe['backbone']}-{digest}.pt"
    folder = shipped_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / name)
    steps = len(trained["losses"])
    entry = {
        "method": recipe["method"], "version": recipe["version"], "backbone": recipe["backbone"], "file": name,
        "sha256": file_sha256(folder / name), "recipe_digest": digest, "recipe": recipe, "steps": steps,
        "view_images": view_images(steps, recipe), "seconds": trained["seconds"],
        "losses": [round(v, 5) for v in trained["losses"]], "git_commit": trained["git_commit"],
        "torch": trained["torch"], "device": trained["device"], "date": trained["date"],
    }
    key = (entry["method"], entry["version"], entry["backbone"], digest)
    entries = [e for e in manifest(folder) if (e["method"], e["version"], e["backbone"], e["recipe_digest"]) != key]
    atomic_write_json(folder / MANIFEST, {"weights": sorted([*entries, entry], key=lambda e: (e["backbone"], e["method"]))})
    return entry


def view_images(steps: int, recipe: dict) -> int:
    """Images a training of ``steps`` steps showed the upsampler: batch x views a step (a method with its own
    objective trains on whole images, and its recipe has no views)."""
    return steps * recipe.get("batch", 0) * recipe.get("views", 1)


def weights_table(cache: Path, folder: Path | None = None) -> pd.DataFrame:
    """Shipped and cached trained weights: one row each, with what made them."""
    folder = shipped_dir(folder)
    rows = [{"method": e["method"], "backbone": e["backbone"], "source": "shipped", "steps": e["steps"],
             "view_images": e["view_images"], "recipe": e["recipe_digest"], "seconds": e["seconds"],
             "where": str(folder / e["file"])} for e in manifest(folder)]
    for record in sorted(cache.glob("*/provenance.json")) if cache.is_dir() else []:
        try:
            trained = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        recipe = {k: v for k, v in trained.items() if k not in TRAINING_RECORD}
        rows.append({"method": trained.get("method"), "backbone": trained.get("backbone"), "source": "cached",
                     "steps": len(trained.get("losses", [])),
                     "view_images": view_images(len(trained.get("losses", [])), trained),
                     "recipe": recipe_digest(recipe), "seconds": trained.get("seconds"), "where": str(record.parent)})
    return pd.DataFrame(rows, columns=["method", "backbone", "source", "steps", "view_images", "recipe", "seconds", "where"])
