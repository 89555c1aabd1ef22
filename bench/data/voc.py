"""Pascal VOC 2012 segmentation as published (``VOCdevkit/VOC2012``), with the SBD-augmented training list.

The masks in ``SegmentationClass`` are palette ("P" mode) PNGs: the pixel values are the class
indices 0-20 and 255 (the "void" border around objects, ignored); the palette only colours them.
They are read as indices, never converted to RGB. ``SegmentationClassAug`` (the "SBD augmented"
set most papers train on) holds grey PNGs of the same indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.common import IGNORE_INDEX, DatasetError, resize_nearest
from bench.data.folders import FolderDataset, check_layout, folder_tree, paired_files

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


class Voc(FolderDataset):
    """Pascal VOC 2012: 21 classes (background + 20), 255 = ignore; the split's list names the images."""

    kind = "seg"
    class_names = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    layout = ("PATH/   (VOCdevkit/VOC2012)\n    JPEGImages/*.jpg\n"
              "    SegmentationClass/*.png   (palette PNGs: values 0-20 the classes, 255 = ignore)\n"
              "    ImageSets/Segmentation/{train,val}.txt   (image ids, one per line)\n"
              "    SegmentationClassAug/*.png + ImageSets/Segmentation/train_aug.txt   "
              "(optional: the SBD-augmented training set)")
    AUG = "train_aug.txt"
    image_lists = (AUG,)
    """The SBD-augmented training list (10,582 ids); its masks are in SegmentationClassAug."""

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None,
                 image_list: str | None = None) -> None:
        root = Path(path)
        if image_list == self.AUG and split != "train":
            raise DatasetError(f"voc: the image list {self.AUG!r} is a training list; split {split!r} reads "
                               f"ImageSets/Segmentation/{split}.txt")
        masks = "SegmentationClassAug" if image_list == self.AUG else "SegmentationClass"
        check_layout(root, ["JPEGImages", masks, "ImageSets/Segmentation"], "voc", self.layout)
        listed = root / "ImageSets" / "Segmentation" / (image_list or f"{split}.txt")
        if not listed.is_file():
            raise DatasetError(f"voc: the image list {str(listed)!r} does not exist; expected\n{self.layout}\n"
                               f"found\n{folder_tree(root / 'ImageSets')}")
        stems = listed.read_text().split()
        pairs = paired_files(root / "JPEGImages", root / masks, ".png", "voc", stems)
        super().__init__("voc", split, image_size, limit, pairs)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, raw = self.read(index)  # raw: the PNG's palette indices, not its colours
        bad = (raw >= self.num_classes) & (raw != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(f"{self.pairs[index][1]}: value {int(raw[bad].max())} is no VOC class (0-20, 255 = "
                               f"ignore); expected the published palette PNGs, whose values are the class indices")
        label = resize_nearest(raw, self.image_size).astype(np.int64)
        return {"image": image, "label": torch.from_numpy(label)}
