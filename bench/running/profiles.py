"""Run profiles: sizes and step counts only, never different code paths.

smoke   seconds, for tests and CI;
default the embedded benchmark on a 2-core CPU;
paper   the paper's recipe (ViT-S/16, 224 px, full datasets, GPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.registry import Registry


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    image_size: tuple[int, int]
    n_train: int | None
    """Images per task's training split (None: the whole split)."""
    n_val: int | None
    seg_data: str
    depth_data: str
    train_data: str
    """Images the trainable upsamplers are fitted on (multi-view, no labels)."""
    probe_steps: int
    probe_lr: float
    probe_pixels: int | None
    """Training pixels sampled per image for the probe (None: all of them)."""
    batch_size: int
    train_steps: int
    train_batch: int
    train_views: int
    seed: int = 0
    depth_n_train: int | None = None
    depth_n_val: int | None = None
    """Depth split sizes where they differ from n_train / n_val (None: the same)."""
    extra_data: tuple[str, ...] = ()
    """Datasets each task of their kind is scored on as well, in table columns of their own."""
    classify_data: str = "cam_photos"
    """Images with ImageNet class labels, for the CAM task."""
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task name -> overrides of that task's settings (each task declares its own, with defaults)."""
    normalisation: str = "config"
    """Backbone input mean/std: "config" (the model's own timm config) or "imagenet" (FeatUp's code)."""

    def recipe(self) -> dict[str, Any]:
        """The profile as a plain dict, stored with every result.

        Left out: what only some tasks read, which those tasks' cells record themselves (their
        settings in the task's recipe, their dataset's identity in the cell's), so a change to
        one task's settings does not rehash the cells of every other task.
        """
        return {k: v for k, v in asdict(self).items() if k not in TASK_OWNED}

    def split_size(self, kind: str, split: str) -> int | None:
        """Images a task on ``kind`` data ("seg", "depth") takes from ``split`` ("train", "val")."""
        override = {"train": self.depth_n_train, "val": self.depth_n_val}[split] if kind == "depth" else None
        default = self.n_train if split == "train" else self.n_val
        return default if override is None else override

    def with_overrides(self, **changes: Any) -> "Profile":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


TASK_OWNED = ("classify_data", "task_settings")

PROFILES: Registry = Registry("profile")
PROFILES.register(Profile(
    name="smoke", backbone="efficientnet_lite0", image_size=(96, 128), n_train=4, n_val=2,
    seg_data="scenes", depth_data="middlebury", train_data="photos",
    probe_steps=20, probe_lr=5e-3, probe_pixels=256, batch_size=2,
    train_steps=3, train_batch=2, train_views=2,
    task_settings={"cam": {"n_train": 8, "n_val": 4, "batch_size": 4, "head_steps": 100},
                   "e2e_seg": {"n_train": 4, "n_val": 2, "steps": 4, "batch_size": 2}},
))
PROFILES.register(Profile(
    # The paper's geometry: ViT-S/16 gives 14x14 tokens at 224 px and FeatUp upsamples x16; the
    # stride-16 stage of efficientnet_lite0 gives the same grid (the stride-32 output gave 7x7, so
    # methods that show the backbone more pixels dominated).
    name="default", backbone="efficientnet_lite0_s16", image_size=(224, 224), n_train=48, n_val=24,
    # Depth edges at object silhouettes as in NYUv2 (generated scenes, exact depth) first; the one
    # real Middlebury scene, whose smooth depth rewards smooth predictions, beside it.
    seg_data="scenes", depth_data="depth_scenes", train_data="photos", extra_data=("middlebury",),
    probe_steps=300, probe_lr=5e-3, probe_pixels=2048, batch_size=4,
    train_steps=250, train_batch=2, train_views=3,
    # Crops of one Middlebury scene are strongly correlated: at 48/24 the featup_jbu - bilinear RMSE
    # difference varied by 0.034 m (sd) over seeds, more than the difference itself; 96/96 steadies it.
    depth_n_train=96, depth_n_val=96,
    # CAM: 48 recognised photographs and crops to train the linear classifier, 48 others to score.
    # e2e_seg: the probe's scenes, 100 steps of batch 4 (see README for what that costs).
    task_settings={"cam": {"n_train": 48, "n_val": 48, "batch_size": 8},
                   "e2e_seg": {"n_train": 48, "n_val": 24, "steps": 100, "batch_size": 4}},
))
PROFILES.register(Profile(
    name="paper", backbone="vit", image_size=(224, 224), n_train=None, n_val=None,
    seg_data="coco_stuff", depth_data="nyuv2", train_data="coco_stuff",
    probe_steps=2000, probe_lr=5e-3, probe_pixels=None, batch_size=16,
    train_steps=2000, train_batch=4, train_views=5,
    classify_data="imagenet", task_settings={"cam": {"n_val": 2000}}, normalisation="imagenet",
))
