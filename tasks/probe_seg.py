"""Semantic segmentation by a linear probe: mIoU and pixel accuracy (torchmetrics)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from bench.registry import TASKS
from tasks.probe import LinearProbe, ProbeTask, resize_target

IGNORE = 255


@TASKS.register
class ProbeSeg(ProbeTask):
    """mIoU averages over classes present in labels or predictions; both reported in percent."""

    name = "probe_seg"
    metrics = {"miou": True, "acc": True}
    paper_columns = {"miou": "seg_printed_acc", "acc": "seg_printed_miou"}  # see PAPER_NOTE: the paper's labels are swapped
    data_kind = "seg"

    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        label = batch["label"]
        return label, label != IGNORE

    def outputs(self, data: Dataset) -> int:
        return data.num_classes

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target)

    @torch.no_grad()
    def evaluate(
        self, probe: LinearProbe, batches: Iterable[tuple[torch.Tensor, dict]]
    ) -> tuple[dict[str, float], dict[str, tuple[list, str]]]:
        classes = probe.linear.out_features
        miou = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
        acc = MulticlassAccuracy(classes, average="micro", ignore_index=IGNORE)
        confusions = []
        for feats, batch in batches:
            label = batch["label"].cpu()
            pred = resize_target(probe.apply_map(feats).argmax(1), label.shape[-2:]).cpu()
            miou.update(pred, label)
            acc.update(pred, label)
            confusions.extend(confusion_matrices(pred, label, classes))
        per_image = {"miou": ([c.tolist() for c in confusions], "miou_confusion"),
                     "acc": ([[int(c.trace()), int(c.sum())] for c in confusions], "percent_sums")}
        return {"miou": 100 * miou.compute().item(), "acc": 100 * acc.compute().item()}, per_image


def confusion_matrices(pred: torch.Tensor, label: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, K, K) per-image confusion counts [true, predicted] over labelled pixels: the bootstrap's statistics."""
    valid = label != IGNORE
    out = torch.zeros(len(label), classes, classes, dtype=torch.int64)
    for i, (p, t, v) in enumerate(zip(pred, label, valid)):
        out[i] = torch.bincount(t[v] * classes + p[v], minlength=classes * classes).view(classes, classes)
    return out
