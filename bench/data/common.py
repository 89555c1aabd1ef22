"""What every dataset shares: RGB conversion, resize + centre crop, per-item seeding, the base class.

One geometry serves images and their targets, so a label or depth map always lands on the pixel
of the image it belongs to: images are resized antialiased, targets with nearest neighbour (a
label is never interpolated, an invalid depth pixel never blends into a valid one).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IGNORE_INDEX = 255
SPLITS = ("train", "val")


class DatasetError(ValueError):
    """A dataset folder that is missing or laid out wrongly, or a dataset used without its folder."""


class FetchError(RuntimeError):
    """A download, checksum or unpacking that failed (bench.data.fetch); the message says what to do."""


def as_rgb(array: np.ndarray) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3) or (H,W,4) uint8, bool or float in [0,1] -> (H,W,3) uint8.

    Grayscale is repeated over the three channels and an alpha channel is dropped.
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"expected an image of shape (H,W), (H,W,3) or (H,W,4), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def read_image_file(path: Path, mode: str | None = None) -> np.ndarray:
    """An image file as an array (converted to ``mode`` if given); a damaged file is named in the error.

    PIL's own messages ("image file is truncated") do not say which of thousands of files it was.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode) if mode else img)
    except OSError as exc:  # truncated, corrupt or not an image at all (UnidentifiedImageError)
        raise DatasetError(f"{path}: cannot read this image file ({exc}); expected a complete PNG or JPEG: "
                           f"replace or remove it") from None


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H,W,3) uint8; grayscale, palette, CMYK and RGBA files are converted to RGB."""
    return read_image_file(path, "RGB")


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> float32 (3,H,W) in [0,1], converted in numpy (no thread pool per item)."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    chw /= 255.0
    return torch.from_numpy(chw)


def _fit(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Size the input is resized to (short side fits, aspect kept) and the top-left of the centre crop."""
    (h, w), (oh, ow) = in_hw, out_hw
    scale = max(oh / h, ow / w)
    rh, rw = max(oh, round(h * scale)), max(ow, round(w * scale))
    return (rh, rw), ((rh - oh) // 2, (rw - ow) // 2)


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w,3) uint8 -> (H,W,3): resize so the short side fits (antialiased bilinear), then centre crop.

    PIL rather than torch: single-threaded and fast per image, so data loading never fights the
    model for cores.
    """
    (rh, rw), (top, left) = _fit(rgb.shape[:2], size)
    resized = Image.fromarray(np.ascontiguousarray(rgb)).resize((rw, rh), Image.BILINEAR)
    return np.asarray(resized)[top:top + size[0], left:left + size[1]]


def resize_nearest(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w) of any dtype -> (H,W) with the geometry of ``resize_image``, nearest neighbour (pixel centres)."""
    h, w = target.shape[:2]
    (rh, rw), (top, left) = _fit((h, w), size)
    rows = np.minimum(((np.arange(top, top + size[0]) + 0.5) * h / rh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(left, left + size[1]) + 0.5) * w / rw).astype(np.int64), w - 1)
    return target[rows[:, None], cols[None, :]]


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one item: reproducible, and different between splits and items."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def random_box(rng: np.random.Generator, region: tuple[int, int, int, int], aspect: float,
               min_scale: float, max_scale: float = 1.0) -> tuple[int, int, int, int]:
    """A random (top, left, height, width) box of the given aspect (w/h) inside region (top, left, h, w).

    Its size is a random fraction in [min_scale, max_scale] of the largest such box that fits
    (min_scale == max_scale fixes it).
    """
    top, left, h, w = region
    max_h = min(h, w / aspect)
    bh = max(1, int(max_h * rng.uniform(min_scale, max_scale)))
    bw = max(1, min(w, round(bh * aspect)))
    return top + int(rng.integers(0, h - bh + 1)), left + int(rng.integers(0, w - bw + 1)), bh, bw


MEMO_BYTES = 256 * 2**20
"""What the memo of drawn items may hold: the default run's embedded items at 224² (~1 MB each) fit."""


class ItemMemo:
    """Drawn items by (class, name, split, size, seed, index), least recently used dropped first past MEMO_BYTES.

    Shared by every instance because each cell loads its own dataset: without it the methods of a run draw the
    same generated scenes again, and e2e_seg draws each of its 48 training scenes ~8 times a cell (drawing
    was 3.5% of a cell's time; a copy costs a fraction of a draw). Callers get copies, so the memo stays as drawn.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.items = limit, 0, OrderedDict()

    def get(self, key: tuple, draw: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if key in self.items:
            self.items.move_to_end(key)
        else:
            item = draw()
            self.items[key] = item
            self.size += sum(t.nbytes for t in item.values())
            while self.size > self.limit and len(self.items) > 1:
                self.size -= sum(t.nbytes for t in self.items.popitem(last=False)[1].values())
        return {k: t.clone() for k, t in self.items[key].items()}


MEMO = ItemMemo(MEMO_BYTES)


class ItemDataset(Dataset, ABC):
    """A dataset of ``length`` items built on demand by ``self.item(index)``, with the common attributes."""

    kind: str
    ignore_index = IGNORE_INDEX
    memoised: bool = False
    """Items are a pure function of (class, name, split, size, seed, index) and cost more to draw than to copy
    (the embedded generated and cropped datasets): kept in ``MEMO``."""

    def __init__(self, name: str, split: str, image_size: tuple[int, int], length: int, seed: int) -> None:
        self.name, self.split, self.image_size, self.length, self.seed = name, split, image_size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"{self.name} {self.split} has {self.length} items, asked for item {index}")
        if self.memoised:
            key = (type(self), self.name, self.split, tuple(self.image_size), self.seed, index)
            return MEMO.get(key, lambda: self.item(index))
        return self.item(index)

    def rng(self, index: int) -> np.random.Generator:
        return item_rng(self.seed, self.split, index)

    @abstractmethod
    def item(self, index: int) -> dict[str, torch.Tensor]:
        """The item at a checked index."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.split!r}, {self.length} items at {self.image_size})"


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` per epoch: the same batches on every run and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
