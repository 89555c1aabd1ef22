"""What the fitting stage and the tasks get to know about the run a cell is part of."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.profiles import Profile


@dataclass
class RunContext:
    profile: Profile
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: Path = Path("results/cache")
    """Trained weights and per-image fits live here, keyed by what produced them."""
    data_paths: dict[str, str] = field(default_factory=dict)
    """Dataset name -> local folder, for the datasets that are not embedded."""
    progress: bool = True
    fit_cache_mb: float = 2048
    """Bound on the per-image fit cache (``<cache_dir>/fits``); least recently used fits go first."""
    tile: int | None = None
    """Tasks' upsampled maps are computed in tiles of this size (``Upsampler.upsample``'s ``tile``); None: whole maps.
    Tiled results equal whole ones to float tolerance, so the tile is not part of a cell's hash."""
    weights: dict[str, str] = field(default_factory=dict)
    """Method name -> a state-dict file its trainable weights are loaded from instead of shipped or trained ones."""
    retrain: bool = False
    """Train trainable methods into the cache even where shipped weights match (bench.fitting.weights)."""
