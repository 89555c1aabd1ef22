"""Semantic segmentation by a linear probe: mIoU and pixel accuracy (torchmetrics)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bench.data.common import IGNORE_INDEX as IGNORE
from bench.registry import TASKS
from tasks.metrics import SegmentationScores
from tasks.probe import ProbeTask, resize_target


@TASKS.register
class ProbeSeg(ProbeTask):
    """mIoU averages over classes present in labels or predictions; both reported in percent.

    Predictions are argmaxed on the feature grid, then nearest-resized to the label grid (public code).
    """

    name = "probe_seg"
    version = "2"
    """v2: settings of its own; steps over batches of images, pixels fixed per image (v1: random pixels of all)."""
    metrics = {"miou": True, "acc": True}
    paper_columns = {"miou": "seg_printed_acc", "acc": "seg_printed_miou"}  # see bench.reporting.references.FEATUP_NOTE: the paper's labels are swapped
    data_kind = "seg"

    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        label = batch["label"]
        return label, label != IGNORE

    def outputs(self, data: Dataset) -> int:
        return data.num_classes

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target)

    def predict(self, outputs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_target(outputs.argmax(1), size)

    def scores(self, outputs: int) -> SegmentationScores:
        return SegmentationScores(outputs, {"miou": "miou", "acc": "aacc"})
