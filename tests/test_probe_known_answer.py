"""Probe tasks on data whose answer is known: features that encode the target exactly."""
import pytest
import torch
from torch.utils.data import Dataset

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.base import Upsampler
from tasks.probe_depth import ProbeDepth
from tasks.probe_seg import IGNORE, ProbeSeg


class ColourScenes(Dataset):
    """Images split in two colours; the label is the colour, the depth a function of red."""

    num_classes = 2
    kind = "seg"

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.cuts = torch.randint(10, 54, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.cuts)

    def __getitem__(self, i: int) -> dict:
        image = torch.zeros(3, 48, 64)
        image[0, :, : self.cuts[i]] = 1.0
        image[2, :, self.cuts[i] :] = 1.0
        label = (image[2] > 0.5).long()
        label[0] = IGNORE
        depth = 1.0 + 2.0 * image[0]
        return {"image": image, "label": label, "depth": depth, "valid": label != IGNORE}


class ImageAsFeatures(Upsampler):
    """An oracle: the image itself is the feature map, so a linear probe can be exact."""

    name = "image_as_features"

    def features(self, backbone, image):
        return image

    def forward(self, lr_feats, image, output_size):
        return torch.nn.functional.interpolate(lr_feats, size=output_size, mode="nearest")


SPLITS = {"train": (4, 0), "val": (3, 1)}
"""(images, seed) per split: fixed seeds (``hash(split)`` is salted per process, so it gave other data each run)."""


def run(task):
    task.load_split = lambda split, context: ColourScenes(*SPLITS[split])
    settings = {"epochs": 100, "batch_size": 2, "pixels": 256, "feature_cache": "memory"}
    profile = PROFILES.get("smoke").with_overrides(task_settings={"probe_seg": settings, "probe_depth": settings})
    context = RunContext(profile=profile, progress=False)
    return {r.metric: r.value for r in task.run(ImageAsFeatures(), None, context)}


def test_seg_probe_is_perfect_on_separable_features():
    got = run(ProbeSeg())
    assert got == {"miou": 100.0, "acc": 100.0}


def test_depth_probe_recovers_a_linear_target():
    got = run(ProbeDepth())
    assert got["rmse"] < 0.05
    assert got["delta1.25"] == 1.0


def test_jafars_probe_config_trains_with_adamw_on_a_cosine_schedule_and_is_recorded(monkeypatch):
    """The jafar profile's probe: AdamW (weight decay 1e-5) whose rate follows cos annealing over the epochs,
    read at every step, still perfect on separable features; the recipe names it, while profiles on the
    original settings keep their recipe (so their hashes) as before the options existed."""
    import math

    import tasks.probe as probe_module

    rates = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            group = self.param_groups[0]
            rates.append(group["lr"])
            assert group["weight_decay"] == 1e-5
            return super().step(closure)

    monkeypatch.setitem(probe_module.OPTIMIZERS, "adamw", RecordingAdamW)
    settings = {"epochs": 4, "batch_size": 2, "lr": 0.5, "optimizer": "adamw", "weight_decay": 1e-5,
                "lr_schedule": "cosine", "pixels": 256, "feature_cache": "memory"}
    task = ProbeSeg()
    task.load_split = lambda split, context: ColourScenes(*SPLITS[split])
    profile = PROFILES.get("smoke").with_overrides(task_settings={"probe_seg": settings})
    got = {r.metric: r.value for r in task.run(ImageAsFeatures(), None, RunContext(profile=profile, progress=False))}
    assert got == {"miou": 100.0, "acc": 100.0}
    per_epoch = [0.5 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]  # 2 steps an epoch (4 images)
    assert rates == pytest.approx([r for r in per_epoch for _ in range(2)])
    monkeypatch.undo()
    recipe = task.recipe(profile)
    assert recipe["optimizer"] == "AdamW" and recipe["settings"]["lr_schedule"] == "cosine"
    smoke = task.recipe(PROFILES.get("smoke"))
    assert smoke["optimizer"] == "Adam" and not {"optimizer", "weight_decay", "lr_schedule"} & set(smoke["settings"])
    assert PROFILES.get("jafar").task_settings["probe_seg"]["optimizer"] == "adamw"
