"""Datasets read from the user's folders: ``coco_stuff`` and ``nyuv2`` (any depth folder in its format).

Plain torch Datasets over sorted file lists rather than Hugging Face ``datasets``: pairing each
image with its annotation by file stem stays explicit, nothing is cached or written next to the
user's data, and nothing touches the hub. Images that are not 3-channel (grayscale, palette,
CMYK, RGBA) are converted to RGB on reading.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.coco_stuff_labels import COARSE_CLASSES, fine_to_coarse_table
from bench.data.common import (IGNORE_INDEX, DatasetError, ItemDataset, image_tensor, read_image_file, read_rgb,
                               resize_image, resize_nearest)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def folder_tree(root: Path, depth: int = 2, limit: int = 8) -> str:
    """What is actually under ``root``: folders to ``depth`` levels, a few files each, for error messages."""
    lines: list[str] = []

    def walk(folder: Path, level: int) -> None:
        entries = sorted(folder.iterdir())
        for entry in entries[:limit]:
            lines.append(f"{'    ' * level}{entry.name}{'/' if entry.is_dir() else ''}")
            if entry.is_dir() and level + 1 < depth:
                walk(entry, level + 1)
        if len(entries) > limit:
            lines.append(f"{'    ' * level}... ({len(entries) - limit} more)")

    walk(root, 0)
    return "\n".join(lines) or "(empty)"


def check_layout(root: Path, folders: list[str], name: str, layout: str) -> None:
    """Raise a DatasetError that shows the expected and the found tree unless every folder exists."""
    if not root.is_dir():
        raise DatasetError(f"{name} folder {str(root)!r} does not exist; expected\n{layout}")
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise DatasetError(f"{name} folder {str(root)!r} lacks {', '.join(missing)}; expected\n{layout}\n"
                           f"found\n{folder_tree(root)}")


def paired_files(images: Path, targets: Path, target_suffix: str, name: str,
                 stems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, target) pairs matched by stem, sorted; every image (or listed stem) must have both."""
    found = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    stems = sorted(found) if stems is None else stems
    pairs = [(found.get(s), targets / f"{s}{target_suffix}") for s in stems]
    lacking = [str(images / s) if img is None else str(t) for s, (img, t) in zip(stems, pairs)
               if img is None or not t.is_file()]
    if lacking:
        raise DatasetError(f"{name}: {len(lacking)} missing file(s), e.g. {', '.join(lacking[:3])}")
    if not pairs:
        raise DatasetError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    return pairs


def read_target(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A single-channel annotation PNG as an array; it must be the size of its image."""
    array = read_image_file(path)
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel PNG, got an array of shape {array.shape}")
    if array.shape != shape:
        raise DatasetError(f"{path}: annotation is {array.shape[1]}x{array.shape[0]} (WxH) but its image "
                           f"is {shape[1]}x{shape[0]}")
    return array


class FolderDataset(ItemDataset):
    """Items from sorted (image, target) file pairs; ``limit`` keeps the first ones."""

    def __init__(self, name: str, split: str, image_size: tuple[int, int], limit: int | None,
                 pairs: list[tuple[Path, Path]]) -> None:
        self.pairs = pairs[:limit]
        super().__init__(name, split, image_size, len(self.pairs), 0)

    def read(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        image_path, target_path = self.pairs[index]
        rgb = read_rgb(image_path)
        return image_tensor(resize_image(rgb, self.image_size)), read_target(target_path, rgb.shape[:2])


class CocoStuff(FolderDataset):
    """COCO-Stuff 164k with its 182 fine labels mapped to the 27 coarse classes (255 stays ignore)."""

    kind = "seg"
    class_names = COARSE_CLASSES
    num_classes = len(COARSE_CLASSES)
    layout = ("PATH/\n    images/{train2017,val2017}/*.jpg\n"
              "    annotations/{train2017,val2017}/*.png   (stuffthingmaps: fine ids 0-181, 255 unlabeled)\n"
              "    curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt   (optional: image ids to use)\n"
              "    curated/train2017/Coco164kFull_Stuff_Coarse.txt   (FeatUp's training list; the paper profile needs it)")
    CURATED = "Coco164kFull_Stuff_Coarse_7.txt"
    """STEGO's list, used where present when no list is named (the probes' split)."""
    image_lists = ("Coco164kFull_Stuff_Coarse.txt", CURATED)
    """FeatUp's curated training list (97,702 train ids) and STEGO's smaller one."""

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None,
                 image_list: str | None = None) -> None:
        root, folder = Path(path), f"{split}2017"
        check_layout(root, [f"images/{folder}", f"annotations/{folder}"], "coco_stuff", self.layout)
        curated = root / "curated" / folder / (image_list or self.CURATED)
        if image_list and not curated.is_file():
            raise DatasetError(f"coco_stuff: the image list {image_list!r} is not at {curated}; FeatUp's lists come "
                               f"with its COCO-Stuff download (curated/{folder}/), or name another with a profile's "
                               f"train_list; expected a folder laid out as\n{self.layout}")
        stems = curated.read_text().split() if curated.is_file() else None
        pairs = paired_files(root / "images" / folder, root / "annotations" / folder, ".png", "coco_stuff", stems)
        super().__init__("coco_stuff", split, image_size, limit, pairs)
        self.table = fine_to_coarse_table()

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, fine = self.read(index)
        coarse = self.table[resize_nearest(fine, self.image_size)]
        return {"image": image, "label": torch.from_numpy(coarse.astype(np.int64))}


class DepthFolder(FolderDataset):
    """RGB images with 16-bit PNG depth in millimetres (0 = no measurement), NYUv2-style."""

    kind = "depth"
    layout = ("PATH/\n    {train,val}/rgb/*.png|jpg\n"
              "    {train,val}/depth/*.png   (same stems; 16-bit, millimetres, 0 = invalid)")

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root = Path(path)
        check_layout(root, [f"{split}/rgb", f"{split}/depth"], "nyuv2", self.layout)
        pairs = paired_files(root / split / "rgb", root / split / "depth", ".png", "nyuv2")
        super().__init__("nyuv2", split, image_size, limit, pairs)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, millimetres = self.read(index)
        if millimetres.dtype not in (np.uint16, np.int32):
            raise DatasetError(f"{self.pairs[index][1]}: expected a 16-bit depth PNG in millimetres, "
                               f"got {millimetres.dtype}")
        mm = resize_nearest(millimetres, self.image_size).astype(np.float32)
        return {"image": image, "depth": torch.from_numpy(mm / 1000.0), "valid": torch.from_numpy(mm > 0)}


class Ade20k(FolderDataset):
    """ADE20k scene parsing (ADEChallengeData2016): 150 classes; annotation 0 ("other") becomes 255 = ignore."""

    kind = "seg"
    num_classes = 150
    layout = ("PATH/   (ADEChallengeData2016)\n    images/{training,validation}/*.jpg\n"
              "    annotations/{training,validation}/*.png   (0 = other, 1-150 the classes)")
    SPLITS = {"train": "training", "val": "validation"}

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root, folder = Path(path), self.SPLITS[split]
        check_layout(root, [f"images/{folder}", f"annotations/{folder}"], "ade20k", self.layout)
        super().__init__("ade20k", split, image_size, limit,
                         paired_files(root / "images" / folder, root / "annotations" / folder, ".png", "ade20k"))

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, raw = self.read(index)
        label = resize_nearest(raw, self.image_size).astype(np.int64) - 1
        label[label < 0] = IGNORE_INDEX
        return {"image": image, "label": torch.from_numpy(label)}


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in the class-index order of every ImageNet classifier (timm's list)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(info.num_classes())]


def devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID (1-1000, the ground-truth file's numbers) -> WordNet id, from the devkit's meta.mat."""
    from scipy.io import loadmat

    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}


class ImageNetFolder(ItemDataset):
    """ImageNet-1k images with their class index, in either published layout of a split folder."""

    kind = "classify"
    labels_are_truth = True
    layout = ("PATH/{val,train}/<wnid>/*.JPEG                  (class sub-folders, e.g. val/n01440764/...)\n"
              "or PATH/{val,train}/*.JPEG with the labels as either\n"
              "    PATH/LOC_{val,train}_solution.csv           (ImageId,PredictionString: wnid first)\n"
              "    PATH/ILSVRC2012_validation_ground_truth.txt + PATH/meta.mat   (devkit: one ILSVRC2012_ID per line)")

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root = Path(path)
        check_layout(root, [split], "imagenet", self.layout)
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        items = self._labelled_files(root, split, index)
        if not items:
            raise DatasetError(f"imagenet: no images ({', '.join(IMAGE_SUFFIXES)}) under {root / split}; "
                               f"expected\n{self.layout}\nfound\n{folder_tree(root)}")
        self.items = items[:limit]
        super().__init__("imagenet", split, image_size, len(self.items), 0)

    def _labelled_files(self, root: Path, split: str, index: dict[str, int]) -> list[tuple[Path, int]]:
        folder = root / split
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
        if subfolders:
            unknown = [p.name for p in subfolders if p.name not in index]
            if unknown:
                raise DatasetError(f"imagenet: {folder} has sub-folders that are not ImageNet-1k WordNet ids, "
                                   f"e.g. {', '.join(unknown[:3])}; expected\n{self.layout}")
            return [(f, index[d.name]) for d in subfolders for f in sorted(d.iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES]
        files = [f for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            return []
        labels = self._flat_labels(root, split, index)
        unlabelled = [f.name for f in files if f.stem not in labels]
        if unlabelled:
            raise DatasetError(f"imagenet: {len(unlabelled)} image(s) in {folder} have no label, e.g. "
                               f"{', '.join(unlabelled[:3])}")
        return [(f, labels[f.stem]) for f in files]

    def _flat_labels(self, root: Path, split: str, index: dict[str, int]) -> dict[str, int]:
        """Image stem -> class index for a flat split folder, from the Kaggle CSV or the devkit files."""
        kaggle, truth, meta = (root / f"LOC_{split}_solution.csv", root / "ILSVRC2012_validation_ground_truth.txt",
                               root / "meta.mat")
        if kaggle.is_file():
            import pandas as pd

            table = pd.read_csv(kaggle)
            return {row.ImageId: index[row.PredictionString.split()[0]] for row in table.itertuples()}
        if split == "val" and truth.is_file() and meta.is_file():
            wnids = devkit_wnids(meta)
            ids = [int(t) for t in truth.read_text().split()]
            return {f"ILSVRC2012_val_{n:08d}": index[wnids[i]] for n, i in enumerate(ids, start=1)}
        raise DatasetError(f"imagenet: {root / split} holds image files but no labels; expected\n{self.layout}\n"
                           f"found\n{folder_tree(root)}")

    def item(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.items[index]
        return {"image": image_tensor(resize_image(read_rgb(path), self.image_size)), "label": torch.tensor(label)}
