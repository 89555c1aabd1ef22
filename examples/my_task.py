"""A task in one file: segmentation by the nearest class mean, with nothing trained.

    python run_bench.py --plugin examples/my_task.py run --profile smoke -m bilinear,featup_jbu -t prototype_seg

Each class's prototype is the mean of its training pixels' upsampled features; a validation pixel takes
the class of the nearest prototype (Euclidean). No probe is trained, so the score says how well the
features themselves separate the classes, with no optimiser settings in between.

It reads the profile's "seg" data like probe_seg (a task reading a kind of data of its own sets
``data_kind`` to that kind, which a profile or ``--data`` then names) and reports mIoU and pixel
accuracy with per-image confusion matrices, so its rows get bootstrap intervals in every table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from bench.backbones import Backbone
from bench.core.context import RunContext
from bench.data.common import IGNORE_INDEX
from bench.registry import TASKS
from methods.base import Upsampler
from tasks.base import MetricRow, Task, TaskSettings
from tasks.metrics import SegmentationScores
from tasks.probe import resize_target, upsampled


@dataclass(frozen=True)
class PrototypeSettings(TaskSettings):
    n_train: int | None = 8
    """Training images whose pixels make the prototypes (None: the whole split)."""
    n_val: int | None = 8


@TASKS.register
class PrototypeSeg(Task):
    name = "prototype_seg"
    metrics = {"miou": True, "acc": True}
    data_kind = "seg"
    Settings = PrototypeSettings

    def images(self, context: RunContext) -> Iterator[torch.Tensor]:
        """Every image ``run`` shows an upsampler, so per-image methods are fitted before the cell."""
        for split in ("train", "val"):
            yield from (item["image"] for item in self.load_split(split, context))

    def run(self, upsampler: Upsampler, backbone: Backbone, context: RunContext) -> list[MetricRow]:
        train = self.load_split("train", context)
        sums = counts = None
        for item in train:
            feats, label = self.features_and_label(upsampler, backbone, item, context)
            valid = label != IGNORE_INDEX
            if sums is None:
                sums, counts = torch.zeros(train.num_classes, feats.shape[0]), torch.zeros(train.num_classes)
            sums.index_add_(0, label[valid], feats[:, valid].T)
            counts += torch.bincount(label[valid], minlength=train.num_classes)
        prototypes = sums / counts.clamp(min=1)[:, None]
        unseen = counts == 0  # a class no training pixel shows is never predicted

        scores = SegmentationScores(train.num_classes, {"miou": "miou", "acc": "aacc"})
        for item in self.load_split("val", context):
            feats, _ = self.features_and_label(upsampler, backbone, item, context)
            # argmin over k of |f - p_k|² is argmax of 2 f·p_k - |p_k|² (|f|² is the same for every k)
            closeness = 2 * torch.einsum("kc,chw->khw", prototypes, feats) - (prototypes**2).sum(1)[:, None, None]
            nearest = closeness.masked_fill(unseen[:, None, None], -torch.inf).argmax(0)
            pred = resize_target(nearest[None], tuple(item["label"].shape))
            scores.update(pred, item["label"][None], (item["label"] != IGNORE_INDEX)[None])
        return self.rows(*scores.result())

    @staticmethod
    def features_and_label(upsampler: Upsampler, backbone: Backbone, item: dict,
                           context: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,h,w) features on the upsampler's output grid and the label resized to it."""
        feats = upsampled(upsampler, backbone, item["image"][None].to(context.device), context.tile)[0].cpu()
        return feats, resize_target(item["label"][None], tuple(feats.shape[-2:]))[0]
