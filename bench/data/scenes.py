"""``scenes``: generated segmentation scenes with exact labels, every pixel a real photo texture.

Each class is one texture source from scikit-image's photographs (grayscale ones tinted to a
distinct colour), so a linear probe on backbone features can tell classes apart. Shapes have thin
parts a few pixels wide (bars, rings, star spikes, crescent horns) and hard edges, so boundary
accuracy depends on the feature resolution: at 224² a stride-32 backbone sees 7×7 cells while a
bar is 2–5 px wide. Every instance takes a fresh random crop, scale and flip of its texture, so a
class is a texture rather than a fixed patch. Scenes are drawn at the requested size directly,
seeded by (seed, split, index).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import skimage.data
import skimage.draw
import torch

from bench.data.common import ItemDataset, as_rgb, image_tensor, random_box, resize_image

DEFAULT_LENGTH = 256
THIN_PX = (2.0, 5.0)
"""Width of thin parts in pixels at 224² (scaled with the image's short side, never below 1.5 px)."""

# class name -> (skimage.data function, (row slice, column slice) of the texture, tint for grayscale)
TEXTURES: dict[str, tuple[str, tuple[slice, slice], tuple[float, float, float] | None]] = {
    "gravel": ("gravel", np.s_[:, :], (0.70, 0.78, 0.95)),
    "brick": ("brick", np.s_[:, :], (1.00, 0.55, 0.40)),
    "grass": ("grass", np.s_[:, :], (0.45, 0.95, 0.35)),
    "wood": ("coffee", np.s_[:, 430:], None),
    "fur": ("chelsea", np.s_[100:, :140], None),
    "suit": ("astronaut", np.s_[330:, 10:200], None),
    "stars": ("hubble_deep_field", np.s_[:, :], None),
    "tissue": ("immunohistochemistry", np.s_[:, :], None),
}
CLASS_NAMES = tuple(TEXTURES)
"""Class 0 (gravel) is the background every scene starts from."""


@functools.lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """The (h,w,3) uint8 texture of class ``name``, loaded once."""
    source, region, tint = TEXTURES[name]
    array = getattr(skimage.data, source)()[region]
    if tint is not None:
        array = array[..., None] * np.asarray(tint, dtype=np.float32) / 255.0
    return as_rgb(array)


def texture_layer(name: str, size: tuple[int, int], rng: np.random.Generator,
                  scale: tuple[float, float] = (0.4, 1.0)) -> np.ndarray:
    """A random crop, flipped at random, of a texture at ``size``.

    The crop is a random fraction in ``scale`` (40–100% by default) of the largest that fits: the
    smaller the crop, the coarser the texture looks.
    """
    return texture_layer_of(texture(name), size, rng, scale)


def texture_layer_of(source: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                     scale: tuple[float, float] = (0.4, 1.0)) -> np.ndarray:
    """``texture_layer`` of a (h,w,3) uint8 texture array."""
    top, left, h, w = random_box(rng, (0, 0, *source.shape[:2]), size[1] / size[0], *scale)
    layer = resize_image(source[top:top + h, left:left + w], size)
    flip_rows, flip_cols = rng.random(2) < 0.5
    return layer[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


class Canvas:
    """Pixel-centre coordinates of an image, and the rotated frame each shape is drawn in."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.unit = min(size)
        self.yy, self.xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)

    def frame(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) coordinates around a random centre, rotated by a random angle."""
        cy, cx = rng.uniform(0.1, 0.9) * self.size[0], rng.uniform(0.1, 0.9) * self.size[1]
        return self.frame_at(cy, cx, rng.uniform(0, np.pi))

    def frame_at(self, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) coordinates around (cy, cx), u along the direction ``angle`` (0: along x, π/2: down y)."""
        dy, dx = self.yy - cy, self.xx - cx
        return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)

    def thin(self, rng: np.random.Generator) -> float:
        return max(1.5, rng.uniform(*THIN_PX) * self.unit / 224)

    def polygon(self, radii: np.ndarray, angles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cy, cx = rng.uniform(0.15, 0.85) * self.size[0], rng.uniform(0.15, 0.85) * self.size[1]
        return self.polygon_at(cy, cx, radii, angles + rng.uniform(0, 2 * np.pi))

    def polygon_at(self, cy: float, cx: float, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """The polygon of vertices at ``radii`` and ``angles`` (radians) around (cy, cx)."""
        return skimage.draw.polygon2mask(self.size, np.stack([cy + radii * np.sin(angles),
                                                              cx + radii * np.cos(angles)], 1))


def bar_mask(u: np.ndarray, v: np.ndarray, half_length: float, half_width: float) -> np.ndarray:
    return (np.abs(u) <= half_length) & (np.abs(v) <= half_width)


def ring_mask(u: np.ndarray, v: np.ndarray, outer: float, band: float) -> np.ndarray:
    r = np.hypot(u, v)
    return (r <= outer) & (r >= outer - band)


def crescent_mask(u: np.ndarray, v: np.ndarray, r: float, shift: float) -> np.ndarray:
    """A disk of radius r minus the same disk shifted by ``shift`` along u."""
    return (np.hypot(u, v) <= r) & (np.hypot(u - shift, v) > r)


def star_outline(n: int, outer: float, inner: float) -> tuple[np.ndarray, np.ndarray]:
    """(radii, angles) of a star's 2n vertices: n spikes of radius ``outer``, notches at ``inner``."""
    return np.tile([outer, inner], n), np.arange(2 * n) * np.pi / n


def bar(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A thin straight bar, 2–5 px wide at 224²."""
    u, v = c.frame(rng)
    return bar_mask(u, v, rng.uniform(0.15, 0.45) * c.unit, c.thin(rng) / 2)


def ring(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A circular ring whose band is 2–5 px wide at 224²."""
    u, v = c.frame(rng)
    return ring_mask(u, v, rng.uniform(0.08, 0.3) * c.unit, c.thin(rng))


def ellipse(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A large rotated ellipse: region area the backbone can classify."""
    u, v = c.frame(rng)
    a, b = rng.uniform(0.12, 0.45, 2) * c.unit
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def crescent(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A disk minus a shifted disk of the same radius: two horns that taper to a point."""
    u, v = c.frame(rng)
    r = rng.uniform(0.1, 0.3) * c.unit
    return crescent_mask(u, v, r, rng.uniform(0.2, 0.6) * r)


def star(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A star with 5–8 narrow spikes."""
    n = int(rng.integers(5, 9))
    outer = rng.uniform(0.12, 0.35) * c.unit
    return c.polygon(*star_outline(n, outer, outer * rng.uniform(0.15, 0.35)), rng)


def polygon(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A random polygon of 3–7 vertices: straight edges and sharp corners."""
    n = int(rng.integers(3, 8))
    return c.polygon(rng.uniform(0.5, 1.0, n) * rng.uniform(0.15, 0.45) * c.unit,
                     np.sort(rng.uniform(0, 2 * np.pi, n)), rng)


THIN_SHAPES: tuple[Callable, ...] = (bar, ring, star, crescent)
SHAPES: tuple[Callable, ...] = (*THIN_SHAPES, ellipse, polygon)


def draw_scene(size: tuple[int, int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene at ``size``: (3,H,W) image and its exact (H,W) int64 labels.

    4–7 shapes, the first always one with thin parts; later shapes cover earlier ones.
    """
    canvas = Canvas(size)
    image = texture_layer(CLASS_NAMES[0], size, rng).copy()
    label = np.zeros(size, dtype=np.int64)
    for i in range(int(rng.integers(4, 8))):
        choices = THIN_SHAPES if i == 0 else SHAPES
        mask = choices[rng.integers(len(choices))](canvas, rng)
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        image[mask] = texture_layer(CLASS_NAMES[cls], size, rng)[mask]
        label[mask] = cls
    return image_tensor(image), torch.from_numpy(label)


class Scenes(ItemDataset):
    kind = "seg"
    memoised = True
    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int) -> None:
        super().__init__("scenes", split, image_size, DEFAULT_LENGTH if limit is None else limit, seed)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, label = draw_scene(self.image_size, self.rng(index))
        return {"image": image, "label": label}

