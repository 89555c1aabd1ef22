"""A dataset in one file: segmentation masks in a folder layout many labelling tools export,
    python run_bench.py --plugin examples/my_dataset.py run --profile smoke -m bilinear,featup_jbu \
        -t probe_seg --data my_masks=/data/my_masks

The folder (``classes.txt`` gives the class names; a mask pixel is a class index, 255 unlabelled):

    /data/my_masks/
        classes.txt
        train/images/*.jpg|png     train/masks/<same stem>.png
        val/images/*.jpg|png       val/masks/<same stem>.png

``--data my_masks=PATH`` puts it in the profile's place for its kind ("seg": every segmentation probe
then scores on it); a cell records the folder's path and a fingerprint of its files, so results on
another folder are never mistaken for these. The suite's own helpers pair images with masks by stem,
check the layout (a wrong folder shows what was expected and what was found), and resize like every
other dataset. A new kind of data (not "seg", "depth" or "classify") works the same way, for a task of
that kind (``data_kind``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data import DatasetSpec
from bench.data.common import DatasetError, resize_nearest
from bench.data.folders import FolderDataset, check_layout, paired_files
from bench.registry import DATASETS

LAYOUT = ("PATH/\n    classes.txt   (one class name per line)\n"
          "    {train,val}/images/*.jpg|png\n    {train,val}/masks/<stem>.png   (class index per pixel, 255 unlabelled)")


class MaskFolder(FolderDataset):
    kind = "seg"
    layout = LAYOUT

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root = Path(path)
        check_layout(root, [f"{split}/images", f"{split}/masks"], "my_masks", LAYOUT)
        if not (root / "classes.txt").is_file():
            raise DatasetError(f"my_masks folder {path!r} lacks classes.txt; expected\n{LAYOUT}")
        self.class_names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
        self.num_classes = len(self.class_names)
        super().__init__("my_masks", split, image_size, limit,
                         paired_files(root / split / "images", root / split / "masks", ".png", "my_masks"))

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.read(index)
        label = resize_nearest(mask, self.image_size).astype(np.int64)
        if (bad := label[(label != self.ignore_index) & (label >= self.num_classes)]).size:
            raise DatasetError(f"{self.pairs[index][1]}: class index {int(bad.max())} but classes.txt names "
                               f"{self.num_classes} classes")
        return {"image": image, "label": torch.from_numpy(label)}


DATASETS.register(DatasetSpec("my_masks", "seg", "segmentation masks in a folder (examples/my_dataset.py)",
                              embedded=False, loader=MaskFolder))
