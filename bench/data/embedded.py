"""``middlebury`` (real depth) and ``photos`` (real photographs): data that ships with scikit-image.

Neither needs a download; both are a handful of real images, so each item is a seeded random
crop (position, scale, horizontal flip) and train and val come from disjoint material.
"""
from __future__ import annotations

import functools

import numpy as np
import skimage.data
import torch

from bench.data.common import ItemDataset, as_rgb, image_tensor, random_box, resize_image, resize_nearest

# Calibration of skimage's 4x down-sampled Middlebury 2014 motorcycle (skimage.data.stereo_motorcycle docstring).
FOCAL_PX, BASELINE_M, DOFFS_PX = 994.978, 0.193001, 31.086
TRAIN_FRACTION = 0.6
"""Train crops come from the left 60% of the image, val crops from the right 40%: both hold near
(≈2.1 m) and far (≈4–5 m) surfaces, and no val pixel is ever seen in training."""
MIDDLEBURY_CROPS = 64
"""Crops per split when no limit is given."""


def disparity_to_depth(disparity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disparity (px) -> depth (m) = f·B/(d + doffs), and the valid mask (finite disparity); invalid depth is 0."""
    valid = np.isfinite(disparity)
    depth = np.zeros(disparity.shape, dtype=np.float32)
    depth[valid] = FOCAL_PX * BASELINE_M / (disparity[valid] + DOFFS_PX)
    return depth, valid


@functools.lru_cache(maxsize=1)
def motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left image (H,W,3) uint8, depth (H,W) metres, valid (H,W) bool."""
    left, _, disparity = skimage.data.stereo_motorcycle()
    return (left, *disparity_to_depth(disparity))


def split_columns(split: str, width: int) -> tuple[int, int]:
    """(first column, number of columns) of the image that ``split`` may crop from."""
    cut = round(width * TRAIN_FRACTION)
    return (0, cut) if split == "train" else (cut, width - cut)


class Middlebury(ItemDataset):
    kind = "depth"
    memoised = True

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int) -> None:
        super().__init__("middlebury", split, image_size, MIDDLEBURY_CROPS if limit is None else limit, seed)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, depth, valid = motorcycle()
        rng = self.rng(index)
        left, width = split_columns(self.split, image.shape[1])
        (h, w) = self.image_size
        top, left, bh, bw = random_box(rng, (0, left, image.shape[0], width), w / h, 0.5)
        step = -1 if rng.random() < 0.5 else 1

        def cut(a: np.ndarray) -> np.ndarray:
            return a[top:top + bh, left:left + bw][:, ::step]

        return {
            "image": image_tensor(resize_image(cut(image), self.image_size)),
            "depth": torch.from_numpy(resize_nearest(cut(depth), self.image_size)),
            "valid": torch.from_numpy(resize_nearest(cut(valid), self.image_size)),
        }


PHOTOS = {
    "astronaut": skimage.data.astronaut, "coffee": skimage.data.coffee, "chelsea": skimage.data.chelsea,
    "rocket": skimage.data.rocket, "hubble_deep_field": skimage.data.hubble_deep_field,
    "immunohistochemistry": skimage.data.immunohistochemistry,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0], "retina": skimage.data.retina,
    "camera": skimage.data.camera, "coins": skimage.data.coins, "moon": skimage.data.moon,
    "brick": skimage.data.brick, "grass": skimage.data.grass, "gravel": skimage.data.gravel,
    "cell": skimage.data.cell, "clock": skimage.data.clock,
}
"""The real photographs in skimage.data that need no download; grayscale ones become 3 channels.
Train takes every other one from the first, val the rest, so the splits share no photograph."""


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    return as_rgb(PHOTOS[name]())


class Photos(ItemDataset):
    """The split's whole photographs first, then seeded random crops (30–100%, flipped) of them."""

    kind = "images"
    memoised = True

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int) -> None:
        self.photos = list(PHOTOS)[split == "val"::2]
        super().__init__("photos", split, image_size, len(self.photos) if limit is None else limit, seed)

    def source(self, index: int) -> str:
        """The name of the photograph item ``index`` shows, whole or cropped (crops of one photograph
        are not independent samples: statistics over items group them by it)."""
        return self.photos[index if index < len(self.photos) else self.rng(index).integers(len(self.photos))]

    def item(self, index: int) -> dict[str, torch.Tensor]:
        if index < len(self.photos):
            return {"image": image_tensor(resize_image(photo(self.photos[index]), self.image_size))}
        rng = self.rng(index)
        image = photo(self.photos[rng.integers(len(self.photos))])  # the draw source() repeats
        top, left, h, w = random_box(rng, (0, 0, *image.shape[:2]), self.image_size[1] / self.image_size[0], 0.3)
        crop = image[top:top + h, left:left + w][:, ::-1 if rng.random() < 0.5 else 1]
        return {"image": image_tensor(resize_image(crop, self.image_size))}


MIN_CONFIDENCE = 0.25
"""A candidate photo or crop joins ``cam_photos`` when the embedded classifier gives its top-1 class
at least this softmax score: CAM faithfulness compares class scores, which are noise for images
the model does not recognise."""


@functools.lru_cache(maxsize=1)
def embedded_classifier():
    """The real ImageNet classifier that labels ``cam_photos``: efficientnet_lite0 with its own head."""
    from bench.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


class CamPhotos(Photos):
    """``photos`` items the embedded classifier recognises, each labelled with its top-1 ImageNet class.

    Candidates are the ``photos`` items in order (whole photographs, then seeded crops); those the
    classifier scores below MIN_CONFIDENCE are skipped, up to 40 candidates per kept item. The
    labels are the embedded classifier's own predictions (there is no ground truth for these
    photographs): the CAM task scores every model against its own top-1 class here, and trains
    linear heads of headless backbones on these labels.
    """

    kind = "classify"
    labels_are_truth = False

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int) -> None:
        super().__init__(split, image_size, None, seed)
        wanted = limit if limit is not None else 2 * len(self.photos)
        self.kept = recognised(split, tuple(image_size), wanted, seed)
        self.name, self.length = "cam_photos", len(self.kept)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        source, label = self.kept[index]
        return {**Photos.item(self, source), "label": torch.tensor(label)}

    def source(self, index: int) -> str:
        return Photos.source(self, self.kept[index][0])


@functools.lru_cache(maxsize=8)
def recognised(split: str, image_size: tuple[int, int], wanted: int, seed: int) -> tuple[tuple[int, int], ...]:
    """(photos item, top-1 class) of the first ``wanted`` candidates the embedded classifier recognises;
    kept per process, since every cell of a run loads the same selection (about 100 forward passes)."""
    candidates, classifier, kept = Photos(split, image_size, None, seed), embedded_classifier(), []
    with torch.no_grad():
        for index in range(40 * wanted):
            if len(kept) == wanted:
                break
            image = candidates.item(index)["image"]
            probs = classifier.image_logits(classifier.features(image[None])).softmax(1)[0]
            if probs.max() >= MIN_CONFIDENCE:
                kept.append((index, int(probs.argmax())))
    return tuple(kept)
