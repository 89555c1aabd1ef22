"""Datasets by name: what is registered, and ``load_dataset`` to open one split.

Importing this module only registers the specs (cheap, for ``list``); a dataset's own module
(scikit-image, PIL) is imported when it is loaded. Items are dicts of tensors:
seg ``{"image", "label"}`` (int64, 255 = ignore), depth ``{"image", "depth", "valid"}`` (metres,
bool), classify ``{"image", "label"}`` (ImageNet class index), images ``{"image"}``; every image is
float32 (3,H,W) in [0,1].
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from bench.data.common import SPLITS, DatasetError
from bench.data.root import missing_folder
from bench.registry import DATASETS

__all__ = ["DatasetError", "DatasetSpec", "dataset_layout", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    """"seg", "depth", "classify" or "images"."""
    summary: str
    embedded: bool
    """True: generated or shipped with the installed packages, so it needs no path."""
    loader: str | Callable[..., Dataset] = ""
    """The Dataset class: "module:Class" (imported when the dataset is loaded, so listing stays cheap) or the
    class itself (a plugin's). Embedded: ``loader(split, image_size, limit, seed)``; folder datasets:
    ``loader(path, split, image_size, limit)``, with a ``layout`` string shown when the folder is wrong."""
    version: str = "1"
    """Embedded datasets only: bump when the items would change; it is part of every cell's hash."""

    def dataset_class(self) -> Callable[..., Dataset]:
        if not isinstance(self.loader, str):
            return self.loader
        module, _, cls = self.loader.partition(":")
        if not module or not cls:
            raise DatasetError(f"dataset {self.name!r}: loader {self.loader!r} is not 'module:Class' or a class")
        return getattr(importlib.import_module(module), cls)


BUILT_IN = (
    DatasetSpec("scenes", "seg", "generated scenes of real photo textures in thin, sharp shapes; "
                 "exact labels, 8 classes", True, loader="bench.data.scenes:Scenes"),
    DatasetSpec("materials", "seg", "generated scenes of 8 materials (scikit-image textures) in thin, sharp shapes, "
                 "each instance recoloured from one palette all classes share, with matched-colour boundaries, "
                 "two-colour parts, lighting and cast shadows; exact labels", True,
                loader="bench.data.materials:Materials"),
    DatasetSpec("middlebury", "depth", "Middlebury 2014 motorcycle (skimage) with ground-truth depth; "
                 "train crops from the left 60%, val from the right 40%", True,
                loader="bench.data.embedded:Middlebury"),
    DatasetSpec("depth_scenes", "depth", "generated scenes of real photo textures on a ground plane, objects "
                 "(thin poles, hoops, stars, boards) at 1–10 m before a wall at 10 m; exact depth, its edges the "
                 "objects' edges", True, version="2", loader="bench.data.depth_scenes:DepthScenes"),
    DatasetSpec("photos", "images", "scikit-image's photographs and random crops of them, "
                 "for training upsamplers", True, loader="bench.data.embedded:Photos"),
    DatasetSpec("cam_photos", "classify", "scikit-image's photographs and crops of them that the embedded "
                 "ImageNet classifier (efficientnet_lite0) recognises, labelled with its top-1 class", True,
                loader="bench.data.embedded:CamPhotos"),
    DatasetSpec("imagenet", "classify", "ImageNet validation (or train) folder: class sub-folders, or flat files "
                 "with LOC_val_solution.csv or the devkit labels", False, loader="bench.data.folders:ImageNetFolder"),
    DatasetSpec("ade20k", "seg", "ADE20k scene parsing (ADEChallengeData2016), 150 classes, 0 = ignore", False,
                loader="bench.data.folders:Ade20k"),
    DatasetSpec("coco_stuff", "seg", "COCO-Stuff 164k stuffthingmaps, 27 coarse classes; "
                 "FeatUp's curated lists used where present", False, loader="bench.data.folders:CocoStuff"),
    DatasetSpec("nyuv2", "depth", "NYUv2 depth: the published nyu_depth_v2_labeled.mat + splits.mat (official "
                 "795/654 split, val = test), or depth folders {train,val}/rgb + {train,val}/depth (16-bit PNG, mm, "
                 "0 = invalid; any folder in this format works)", False, loader="bench.data.nyuv2_mat:Nyuv2"),
    DatasetSpec("voc", "seg", "Pascal VOC 2012 segmentation (VOCdevkit/VOC2012), 21 classes, 255 = ignore; "
                 "the SBD-augmented list train_aug.txt where present", False, loader="bench.data.voc:Voc"),
    DatasetSpec("cityscapes", "seg", "Cityscapes fine annotations (leftImg8bit + gtFine), label ids mapped to "
                 "the 19 train ids, others 255 = ignore", False, loader="bench.data.cityscapes:Cityscapes"),
)
for _spec in BUILT_IN:
    DATASETS.register(_spec)


def dataset_layout(name: str) -> str:
    """The folder layout a folder dataset expects, for error messages."""
    return DATASETS.get(name).dataset_class().layout


def load_dataset(name: str, split: str, image_size: tuple[int, int], limit: int | None = None,
                 path: str | None = None, seed: int = 0, image_list: str | None = None) -> Dataset:
    """Open one split of a registered dataset, items resized and centre-cropped to ``image_size`` (H, W).

    ``limit`` caps the number of items (the first ones, always the same); ``seed`` fixes every
    random choice of the generated datasets. Folder datasets need ``path``; embedded ones refuse it.
    ``image_list`` names a list of image ids shipped with a folder dataset (COCO-Stuff's curated lists).
    """
    spec: DatasetSpec = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    loader = spec.dataset_class()
    lists = getattr(loader, "image_lists", ())
    if image_list is not None and image_list not in lists:
        raise DatasetError(f"dataset {name!r} has no image list {image_list!r}; "
                           f"its lists: {', '.join(lists) or 'none'}")
    if spec.embedded:
        if path is not None:
            raise DatasetError(f"dataset {name!r} is embedded and takes no path (got {path!r}); "
                               f"use --data {name}")
        return loader(split, size, limit, seed)
    if path is None:
        raise DatasetError(f"{missing_folder(name)}; PATH laid out as\n{loader.layout}")
    return loader(path, split, size, limit, **({"image_list": image_list} if image_list else {}))
