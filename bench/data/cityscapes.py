"""Cityscapes fine annotations as published (``leftImg8bit`` + ``gtFine``), label ids mapped to the 19 train ids.

The ``*_gtFine_labelIds.png`` files hold Cityscapes' 34 label ids; the benchmark classes are the 19
with a train id in cityscapesScripts' ``labels.py``. Every other id (unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge,
tunnel, polegroup, caravan, trailer, license plate) becomes 255 = ignore, as in that table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.common import IGNORE_INDEX, DatasetError, resize_nearest
from bench.data.folders import FolderDataset, check_layout, folder_tree

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""cityscapesScripts' labels.py, id -> trainId, for the ids whose trainId is not 255 (ignoreInEval)."""
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def train_id_table() -> np.ndarray:
    """A lookup table over all 256 byte values: label id -> train id, 255 for every other value."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


class Cityscapes(FolderDataset):
    """Cityscapes (fine annotations): 19 classes, 255 = ignore; images paired with labels per city by stem."""

    kind = "seg"
    class_names = CITYSCAPES_CLASSES
    num_classes = len(CITYSCAPES_CLASSES)
    layout = ("PATH/\n    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
              "    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   "
              "(label ids 0-33; mapped to the 19 train ids)")

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root = Path(path)
        check_layout(root, [f"leftImg8bit/{split}", f"gtFine/{split}"], "cityscapes", self.layout)
        images, labels = root / "leftImg8bit" / split, root / "gtFine" / split
        pairs = [(image, labels / city.name / (image.name[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX))
                 for city in sorted(p for p in images.iterdir() if p.is_dir())
                 for image in sorted(city.iterdir()) if image.name.endswith(IMAGE_SUFFIX)]
        if not pairs:
            raise DatasetError(f"cityscapes: no *{IMAGE_SUFFIX} files in city folders under {images}; expected\n"
                               f"{self.layout}\nfound\n{folder_tree(root, depth=3)}")
        lacking = [str(label) for _, label in pairs if not label.is_file()]
        if lacking:
            raise DatasetError(f"cityscapes: {len(lacking)} missing file(s), e.g. {', '.join(lacking[:3])}")
        super().__init__("cityscapes", split, image_size, limit, pairs)
        self.table = train_id_table()

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, label_ids = self.read(index)
        if label_ids.dtype != np.uint8:
            raise DatasetError(f"{self.pairs[index][1]}: expected an 8-bit PNG of label ids, got {label_ids.dtype}")
        train_ids = self.table[resize_nearest(label_ids, self.image_size)]
        return {"image": image, "label": torch.from_numpy(train_ids.astype(np.int64))}
