"""The SBD-augmented Pascal VOC training set, built from SBD's release into the VOC folder (``data fetch sbd``).

SBD (Hariharan et al., ICCV 2011) labels 11,355 VOC 2011 images in MATLAB files: ``cls/<id>.mat``, whose
``GTcls.Segmentation`` holds class indices 0-20. The augmented set papers train on is SBD's train and val plus
VOC 2012's train, less VOC 2012's val, so validation stays unseen (10,582 ids with the published files): written as
``ImageSets/Segmentation/train_aug.txt``. Its masks go to ``SegmentationClassAug`` as grey PNGs of class indices,
VOC's own mask (with its 255 borders) where VOC has one, SBD's otherwise. Every image is in VOC 2012's JPEGImages.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bench.data.common import DatasetError

LIST = "ImageSets/Segmentation/train_aug.txt"


def augment_voc(build: Path, voc: Path, progress: bool) -> None:
    """Turn SBD's release in ``build/sbd`` into ``build/SegmentationClassAug`` and ``build/<LIST>`` for ``voc``."""
    from scipy.io import loadmat

    sbd, sets = build / "sbd", voc / "ImageSets" / "Segmentation"
    train, val = (set((sets / f"{split}.txt").read_text().split()) for split in ("train", "val"))
    ids = sorted((set((sbd / "train.txt").read_text().split()) | set((sbd / "val.txt").read_text().split()) | train)
                 - val)
    lacking = [i for i in ids if not (voc / "JPEGImages" / f"{i}.jpg").is_file()]
    if lacking:
        raise DatasetError(f"sbd: {len(lacking)} image(s) of the augmented set are not in {voc / 'JPEGImages'}, e.g. "
                           f"{', '.join(lacking[:3])}; expected VOC 2012 trainval there")
    masks = build / "SegmentationClassAug"
    masks.mkdir()
    for i in tqdm(ids, desc="SBD masks", disable=not progress):
        own = voc / "SegmentationClass" / f"{i}.png"
        if own.is_file():
            label = np.asarray(Image.open(own))  # the palette PNG's indices
        else:
            mat = loadmat(str(sbd / "cls" / f"{i}.mat"), squeeze_me=True, struct_as_record=False)
            label = mat["GTcls"].Segmentation
        Image.fromarray(np.asarray(label, dtype=np.uint8)).save(masks / f"{i}.png")
    (build / LIST).parent.mkdir(parents=True)
    (build / LIST).write_text("\n".join(ids) + "\n")
    shutil.rmtree(sbd)
