"""A cell is one (method, task, backbone, dataset, profile, seed) score; its hash names its file."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any


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
        payload = json.dumps({"cell": asdict(self), "recipe": recipe}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def filename(self, recipe: dict[str, Any]) -> str:
        return f"{self.method}--{self.task}--{self.backbone}--{self.config_hash(recipe)}.json"
