"""Depth by a linear probe on metric ground truth: RMSE (m) and δ<1.25 over valid pixels."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.registry import TASKS
from bench.core.profiles import Profile
from tasks.metrics import DepthScores
from tasks.probe import ProbeTask

MIN_DEPTH = 1e-3


@TASKS.register
class ProbeDepth(ProbeTask):
    """The probe regresses metric depth with an L2 loss, so no scale/shift alignment is applied."""

    name = "probe_depth"
    version = "2"
    """v2: settings of its own; steps over batches of images, pixels fixed per image (v1: random pixels of all)."""
    metrics = {"rmse": False, "delta1.25": True}
    paper_columns = {"rmse": "depth_rmse", "delta1.25": "depth_delta"}
    data_kind = "depth"
    regression = True

    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["depth"], batch["valid"]

    def outputs(self, data: Dataset) -> int:
        return 1

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred[:, 0], target)

    def predict(self, outputs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        pred = F.interpolate(outputs, size=size, mode="bilinear", align_corners=False)[:, 0]
        return pred.clamp_min(MIN_DEPTH)

    def scores(self, outputs: int) -> DepthScores:
        return DepthScores()

    def recipe(self, profile: Profile) -> dict[str, Any]:
        return {**super().recipe(profile), "loss": "L2 on metric depth", "alignment": "none",
                "eval_resize": "bilinear to the label grid", "min_depth_pred": MIN_DEPTH}
