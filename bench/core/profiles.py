"""Run profiles: sizes and step counts only, never different code paths.

smoke   seconds, for tests and CI;
default the embedded benchmark on a 2-core CPU;
paper   the paper's recipe (ViT-S/16, 224 px, full datasets, GPU);
jafar   the protocol papers since FeatUp report (DINOv2 ViT-S/14, 448 px, four segmentation datasets, GPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.registry import Registry

NORMALISATIONS = ("config", "imagenet")
"""Backbone input mean/std: the model's own timm config, or ImageNet's as in FeatUp's code."""


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    image_size: tuple[int, int]
    data: dict[str, str]
    """Data kind -> the dataset the tasks of that kind score on ("seg", "depth", "classify", or a plugin task's
    own kind): a task reads ``data[task.data_kind]``, and ``--data NAME[=PATH]`` replaces its kind's entry
    (for a dataset the profile already names, it only gives the folder)."""
    train_data: str
    """Images the trainable upsamplers are fitted on (multi-view, no labels)."""
    train_steps: int | None
    """Optimiser steps of the trainable upsamplers (None: one shuffled epoch over the training list)."""
    train_batch: int
    train_views: int
    seed: int = 0
    extra_data: tuple[str, ...] = ()
    """Datasets each task of their kind is scored on as well, in table columns of their own."""
    train_downsampler: str = "simple"
    """"attention" is FeatUp's JBU recipe; "simple" acts per channel, so the loss runs on the 30
    projected channels (docs/reference.md §4), about 10x cheaper on a CPU."""
    train_list: str | None = None
    """A folder dataset's named image list to train on (COCO-Stuff: FeatUp's curated
    ``Coco164kFull_Stuff_Coarse.txt`` or STEGO's ``Coco164kFull_Stuff_Coarse_7.txt``)."""
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task name -> overrides of that task's settings (each task declares its own, with defaults)."""
    normalisation: str = "config"
    """Backbone input mean/std: "config" (the model's own timm config) or "imagenet" (FeatUp's code)."""
    methods: str = "default"
    """What ``run`` scores without ``-m``: "default" (the methods in the CPU default run) or "all" (every
    registered method). Not in the recipe: it changes which cells run, never a number."""
    tasks: tuple[str, ...] | None = None
    """What ``run`` scores without ``-t`` (None: every registered task). Not in the recipe, like ``methods``."""
    fit_steps: int | None = None
    """Steps of each per-image fit where not the profile's own (bench.fitting.per_image.FIT_SETTINGS): the
    budget study's fit-step curve."""

    def recipe(self) -> dict[str, Any]:
        """The profile as a plain dict, stored with every result.

        Left out: what only some tasks read, which those tasks' cells record themselves (their
        settings in the task's recipe, their dataset's identity in the cell's), so a change to
        one task's settings does not rehash the cells of every other task. Of the data map, the
        kinds in RECIPE_KINDS appear as ``<kind>_data``, as every stored result has them.
        """
        fields = {k: v for k, v in asdict(self).items() if k not in TASK_OWNED}
        data = fields.pop("data")
        return {**fields, **{f"{kind}_data": data[kind] for kind in RECIPE_KINDS if kind in data}}

    def dataset(self, kind: str) -> str:
        """The dataset of data kind ``kind``; a clear error when the profile has none."""
        if kind not in self.data:
            raise ValueError(f"profile {self.name!r} names no {kind!r} dataset (it has {', '.join(sorted(self.data))}): "
                             f"give one with --data NAME[=PATH]")
        return self.data[kind]

    def with_data(self, **datasets: str) -> "Profile":
        """The profile with the datasets of some kinds replaced (or added): ``with_data(seg="coco_stuff")``."""
        return replace(self, data={**self.data, **datasets})

    def with_overrides(self, **changes: Any) -> "Profile":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


TASK_OWNED = ("task_settings", "methods", "tasks")
RECIPE_KINDS = ("seg", "depth")
"""Data kinds whose dataset is part of every cell's profile recipe (``seg_data``, ``depth_data``), as in every
result stored before the profile held a map; the other kinds are recorded only by the cells of the tasks
that read them (in the cell's dataset identity), so adding a kind rehashes nothing."""

PROFILES: Registry = Registry("profile")
SMOKE_PROBE = {"n_train": 4, "n_val": 2, "epochs": 10, "batch_size": 2, "pixels": 256, "feature_cache": "memory"}
PROFILES.register(Profile(
    name="smoke", backbone="efficientnet_lite0", image_size=(96, 128),
    data={"seg": "scenes", "depth": "middlebury", "classify": "cam_photos"}, train_data="photos",
    train_steps=3, train_batch=2, train_views=2,
    task_settings={"probe_seg": SMOKE_PROBE, "probe_depth": SMOKE_PROBE,
                   "cam": {"n_train": 8, "n_val": 4, "batch_size": 4, "head_steps": 100},
                   "e2e_seg": {"n_train": 4, "n_val": 2, "steps": 4, "batch_size": 2}},
))
DEFAULT_PROBE = {"batch_size": 4, "pixels": 2048, "feature_cache": "memory"}
PROFILES.register(Profile(
    # The paper's geometry: ViT-S/16 gives 14x14 tokens at 224 px and FeatUp upsamples x16; the
    # stride-16 stage of efficientnet_lite0 gives the same grid (the stride-32 output gave 7x7, so
    # methods that show the backbone more pixels dominated).
    name="default", backbone="efficientnet_lite0_s16", image_size=(224, 224),
    # Depth edges at object silhouettes as in NYUv2 (generated scenes, exact depth) first; the one
    # real Middlebury scene, whose smooth depth rewards smooth predictions, beside it.
    data={"seg": "materials", "depth": "depth_scenes", "classify": "cam_photos"}, train_data="photos",
    extra_data=("middlebury",),
    # The shipped weights' budget (results/weights): the training-budget study's last checkpoint (results/budget/;
    # from 1000 to 2000 steps no probe metric moved by more than about its seed sd, docs/methods.md).
    train_steps=2000, train_batch=2, train_views=3,
    # Probes: 4 images x 2048 sampled pixels per step, ~300 steps; the sampled pixels stay in memory.
    # Segmentation: materials (colour tells nothing of the class; docs/profiles-and-data.md), 96 val scenes: at 24 the
    # seed (which draws the scenes) moved bilinear's mIoU by 4.4 points (sd, seeds 0-2), at 96 by 0.6.
    # Crops of one Middlebury scene are strongly correlated: at 48/24 the featup_jbu - bilinear RMSE
    # difference varied by 0.034 m (sd) over seeds, more than the difference itself; 96/96 steadies it.
    # CAM: 48 recognised photographs and crops to train the linear classifier, 48 others to score.
    # e2e_seg: the probe's scenes, 100 steps of batch 4 (docs/results.md: what that costs), scored on the same 96.
    task_settings={"probe_seg": {**DEFAULT_PROBE, "n_train": 48, "n_val": 96, "epochs": 25},
                   "probe_depth": {**DEFAULT_PROBE, "n_train": 96, "n_val": 96, "epochs": 13},
                   "cam": {"n_train": 48, "n_val": 48, "batch_size": 8},
                   "e2e_seg": {"n_train": 48, "n_val": 96, "steps": 100, "batch_size": 4}},
))
PROFILES.register(Profile(
    # Probes: the public probe config (every pixel, batch 2, 200 epochs), streamed (the tasks' defaults).
    name="paper", backbone="vit", image_size=(224, 224),
    data={"seg": "coco_stuff", "depth": "nyuv2", "classify": "imagenet"}, train_data="coco_stuff",
    # FeatUp's JBU config: one shuffled epoch over its curated list (97,702 ids, ~24.4k steps at batch 4)
    train_steps=None, train_batch=4, train_views=5, train_downsampler="attention",
    train_list="Coco164kFull_Stuff_Coarse.txt",
    task_settings={"cam": {"n_val": 2000}}, normalisation="imagenet",
))
JAFAR_PROBE = {"epochs": 20, "batch_size": 2, "lr": 5e-4, "optimizer": "adamw", "weight_decay": 1e-5,
               "lr_schedule": "cosine"}
"""JAFAR's probe config (config/eval.yaml, optimizer/adamw.yaml, evaluation/train_probes.py): AdamW 5e-4, weight
decay 1e-5, cosine annealing over 20 epochs, batch 2, every pixel (docs/protocols.md lists what still differs)."""
PROFILES.register(Profile(
    # The protocol the upsampling papers since FeatUp report (JAFAR's; AnyUp and NAF reuse it): DINOv2 ViT-S/14
    # through timm at 448 px, linear probes on COCO-Stuff with VOC, ADE20k and Cityscapes as column groups of their
    # own, depth on NYUv2 (JAFAR probes depth on COCO with Depth-Anything pseudo-labels), CAM on ImageNet, every
    # registered upsampler. Trained upsamplers: the paper profile's recipe.
    name="jafar", backbone="dinov2", image_size=(448, 448),
    data={"seg": "coco_stuff", "depth": "nyuv2", "classify": "imagenet"}, extra_data=("voc", "ade20k", "cityscapes"),
    train_data="coco_stuff", train_steps=None, train_batch=4, train_views=5, train_downsampler="attention",
    train_list="Coco164kFull_Stuff_Coarse.txt", methods="all",
    tasks=("probe_seg", "probe_depth", "cam"),  # JAFAR's table has no end-to-end column
    task_settings={"probe_seg": JAFAR_PROBE, "probe_depth": JAFAR_PROBE, "cam": {"n_val": 2000}},
))
