"""Depth by a linear probe on metric ground truth: RMSE (m) and δ<1.25 over valid pixels."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchmetrics import MeanSquaredError

from bench.running.profiles import Profile
from bench.registry import TASKS
from tasks.metrics import DeltaAccuracy
from tasks.probe import LinearProbe, ProbeTask

MIN_DEPTH = 1e-3


@TASKS.register
class ProbeDepth(ProbeTask):
    """The probe regresses metric depth with an L2 loss, so no scale/shift alignment is applied."""

    name = "probe_depth"
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

    def recipe(self, profile: Profile) -> dict[str, Any]:
        return {**super().recipe(profile), "loss": "L2 on metric depth", "alignment": "none",
                "eval_resize": "bilinear to the label grid", "min_depth_pred": MIN_DEPTH}

    @torch.no_grad()
    def evaluate(
        self, probe: LinearProbe, batches: Iterable[tuple[torch.Tensor, dict]]
    ) -> tuple[dict[str, float], dict[str, tuple[list, str]]]:
        rmse = MeanSquaredError(squared=False)
        delta = DeltaAccuracy(1.25)
        squared = []
        for feats, batch in batches:
            gt, valid = batch["depth"].cpu(), batch["valid"].cpu()
            pred = probe.apply_map(feats)
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()
            pred = pred.clamp_min(MIN_DEPTH)
            rmse.update(pred[valid], gt[valid])
            delta.update(pred, gt, valid)
            squared += [[float(((p[v] - g[v]) ** 2).double().sum()), int(v.sum())] for p, g, v in zip(pred, gt, valid)]
        per_image = {"rmse": (squared, "rmse_sums"), "delta1.25": (delta.per_image(), "ratio_sums")}
        return {"rmse": rmse.compute().item(), "delta1.25": delta.compute().item()}, per_image
