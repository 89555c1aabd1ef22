"""Probe tasks on data whose answer is known: features that encode the target exactly."""
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
