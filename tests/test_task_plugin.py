"""A task from a plugin file (examples/my_task.py): scored through the CLI, and right on features whose answer
is known (one-hot labels give a perfect score; constant features predict one class everywhere)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.cli import main
from bench.data.common import IGNORE_INDEX
from bench.plugins import load_plugin_file
from bench.registry import TASKS
from bench.running import session
from methods.bilinear import Bilinear

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "my_task.py")


class LabelFeatures(Bilinear):
    """Features made from each image's true labels (looked up by the image), or constant ones: known answers."""

    def __init__(self, labels: dict[bytes, torch.Tensor] | None, classes: int) -> None:
        super().__init__()
        self.labels, self.classes = labels, classes

    def upsample(self, backbone, image, output_size, tile=None, pixelwise=None, dtype=None):
        if self.labels is None:
            return torch.ones(len(image), self.classes, *output_size)
        label = torch.stack([self.labels[i.numpy().tobytes()] for i in image])
        return F.one_hot(label.clamp(max=self.classes - 1), self.classes).permute(0, 3, 1, 2).float()


def smoke_context(tmp_path):
    context = session.build_context("smoke", device="cpu", progress=False)
    return replace(context, cache_dir=tmp_path)


def test_the_example_task_lists_and_scores_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "CACHE_DIR", tmp_path / "cache")
    assert main(["--plugin", EXAMPLE, "list"]) == 0
    assert "prototype_seg" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["--plugin", EXAMPLE, "--no-progress", "run", "--profile", "smoke", "-m", "bilinear",
                 "-t", "prototype_seg", "--out", str(out)]) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "ok", records[0]["message"]
    values = {row["metric"]: row["value"] for row in records[0]["metrics"]}
    assert set(values) == {"miou", "acc"} and 0 < values["miou"] < 100, values


def test_prototypes_of_one_hot_label_features_score_every_pixel_and_constant_features_one_class(tmp_path, lite0):
    load_plugin_file(EXAMPLE)
    task = TASKS.get("prototype_seg")()
    context = smoke_context(tmp_path)
    train, val = task.load_split("train", context), task.load_split("val", context)
    labels = {item["image"].numpy().tobytes(): item["label"] for data in (train, val) for item in data}
    seen = torch.zeros(train.num_classes, dtype=torch.bool)
    for item in train:
        seen[item["label"][item["label"] != IGNORE_INDEX]] = True
    val_labels = torch.cat([item["label"][item["label"] != IGNORE_INDEX] for item in val])
    assert seen[val_labels].all(), "every validation class is in training, so one-hot features score 100"

    perfect = {r.metric: r.value for r in task.run(LabelFeatures(labels, train.num_classes), lite0, context)}
    assert perfect == {"miou": 100.0, "acc": 100.0}

    constant = {r.metric: r.value for r in task.run(LabelFeatures(None, train.num_classes), lite0, context)}
    first_seen = int(seen.nonzero()[0])  # equally near everywhere: argmax takes the first seen class
    share = (val_labels == first_seen).double().mean().item()
    present = len(set(val_labels.unique().tolist()) | {first_seen})  # mIoU averages over the classes present
    assert abs(constant["acc"] - 100 * share) < 1e-4
    assert abs(constant["miou"] - 100 * share / present) < 1e-4, (constant, share, present)
