"""A cell is one (method, task, backbone, dataset, profile, seed) score; its hash names its file."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any


def slug(label: str) -> str:
    """A label (backbone, dataset) made safe for a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label)


HASH_NEUTRAL = {"normalisation": "config", "fit_steps": None}
"""Profile fields added after results were stored, at the value every earlier result was made with:
left out of the hash at that value, so those results stay valid, yet stored in the recipe like any field."""

WEIGHTS_IDENTITY = ("sha256",)
"""What of a recipe's weights record enters the hash: their bytes. Shipped weights, the budget study's checkpoint
they were copied from and a user's copy of either score the same numbers, so they are one cell; where the file
came from (source, name, steps, training recipe digest) stays in the recipe as provenance."""


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    backbone: str
    dataset: str
    profile: str
    seed: int

    def config_hash(self, recipe: dict[str, Any]) -> str:
        """Hash of the cell and everything that changes its numbers (versions, recipe)."""
        if "profile" in recipe:
            profile = {k: v for k, v in recipe["profile"].items() if k not in HASH_NEUTRAL or HASH_NEUTRAL[k] != v}
            recipe = {**recipe, "profile": profile}
        if isinstance(recipe.get("weights"), dict):
            recipe = {**recipe, "weights": {k: recipe["weights"][k] for k in WEIGHTS_IDENTITY}}
        payload = json.dumps({"cell": asdict(self), "recipe": recipe}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def filename(self, recipe: dict[str, Any]) -> str:
        return f"{self.method}--{self.task}--{slug(self.backbone)}--{self.config_hash(recipe)}.json"
