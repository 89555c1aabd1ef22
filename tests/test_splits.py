"""Every task fits on the train split and scores on the val split, shown on data whose two splits disagree.

On the known-answer data of the other tests both splits follow one rule, so a probe fitted on val scores
100 as well and nobody notices. Here the rule flips between the splits (train: red is class 1 and deep;
val: blue is), so a task that fits on train and scores on val is wrong on almost every val pixel, and one
that fitted on val would be right on almost all of them. colour_only reads the colour, so the probes and
the end-to-end decoder learn each split's rule perfectly; CAM's classifier learns it from the backbone.
"""
import dataclasses

import pytest
import torch

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.data import DatasetSpec
from bench.data.common import ItemDataset
from bench.registry import DATASETS
from methods.colour_only import ColourOnly
from tasks.cam import Cam
from tasks.e2e_seg import E2ESeg
from tasks.probe_depth import ProbeDepth
from tasks.probe_seg import ProbeSeg

SIZE = (32, 48)


def red_mask(rng: torch.Generator) -> torch.Tensor:
    """A random vertical split of the image: True (red) left of it."""
    cut = int(torch.randint(8, SIZE[1] - 8, (1,), generator=rng))
    return (torch.arange(SIZE[1]) < cut).expand(*SIZE)


def picture(red: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Red where ``red``, blue elsewhere, with a little noise."""
    image = torch.stack([red.float(), torch.zeros(SIZE), (~red).float()])
    return (0.8 * image + 0.1 + 0.05 * torch.randn(3, *SIZE, generator=rng)).clamp(0, 1)


class Flipped(ItemDataset):
    """The rule flips between splits: on train red is the class 1 / deep / ImageNet-class-5 one, on val blue is."""

    num_classes = 2
    labels_are_truth = True

    def __init__(self, split, image_size, limit, seed):
        super().__init__(f"_flipped_{self.kind}", split, SIZE, 8 if limit is None else limit, seed)

    def item(self, index):
        rng = torch.Generator().manual_seed(1000 * (self.split == "val") + index)
        red = red_mask(rng) if self.kind != "classify" else torch.full(SIZE, bool(index % 2))
        rule = red if self.split == "train" else ~red
        if self.kind == "seg":
            return {"image": picture(red, rng), "label": rule.long()}
        if self.kind == "depth":
            return {"image": picture(red, rng), "depth": 1 + 4 * rule.float(), "valid": torch.ones(SIZE, dtype=bool)}
        return {"image": picture(red, rng), "label": torch.tensor(5 if bool(rule[0, 0]) else 7)}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    for kind in ("seg", "depth", "classify"):
        if f"_flipped_{kind}" not in DATASETS:
            cls = type(f"Flipped{kind}", (Flipped,), {"kind": kind})
            DATASETS.register(DatasetSpec(f"_flipped_{kind}", kind, "splits with opposite rules (tests)", True,
                                          loader=cls))
    probe = {"n_train": 8, "n_val": 4, "epochs": 40, "batch_size": 4, "pixels": 512, "feature_cache": "memory"}
    profile = PROFILES.get("smoke").with_data(seg="_flipped_seg", depth="_flipped_depth",
                                              classify="_flipped_classify")
    profile = dataclasses.replace(profile, image_size=SIZE, extra_data=(), task_settings={
        "probe_seg": probe, "probe_depth": probe, "e2e_seg": {"n_train": 8, "n_val": 4, "steps": 60, "batch_size": 4,
                                                               "lr": 1e-2},
        "cam": {"n_train": 8, "n_val": 8, "batch_size": 4, "head_steps": 200}})
    return RunContext(profile, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def scores(task, context, backbone):
    return {r.metric: r.value for r in task.run(ColourOnly(), backbone, context)}


def test_the_segmentation_probe_fits_on_train_and_scores_on_val(context, lite0):
    acc = scores(ProbeSeg(), context, lite0)["acc"]
    print("probe_seg accuracy on val under train's rule:", acc)
    assert acc < 10  # fitted on val it would be ~100


def test_the_depth_probe_fits_on_train_and_scores_on_val(context, lite0):
    values = scores(ProbeDepth(), context, lite0)
    print("probe_depth on val under train's rule:", values)
    assert values["rmse"] > 3 and values["delta1.25"] < 0.1  # fitted on val: rmse ~0, δ ~1


def test_the_end_to_end_decoder_fits_on_train_and_scores_on_val(context, lite0):
    aacc = scores(E2ESeg(), context, lite0)["aacc"]
    print("e2e_seg accuracy on val under train's rule:", aacc)
    assert aacc < 10


def test_the_cam_classifier_fits_on_train_and_scores_on_val(context, lite0):
    """Val's true labels are the opposite of train's, so a classifier fitted on train gets none of them right and
    the task says so; one fitted on val would get them all right and score."""
    from methods.bilinear import Bilinear

    with pytest.raises(ValueError, match="no validation image"):
        Cam().run(Bilinear(), lite0, context)
