"""``depth_scenes``: generated depth scenes with exact depth whose edges are the image's edges.

A pinhole camera (focal length = the image's short side, principal point at the image centre,
optical axis level) stands ``camera_height`` metres above a textured ground plane. The ground is
seen below the horizon row, at depth f·h/(y − horizon) metres on row y, up to a textured back wall
at a constant depth (10 m) that fills everything farther. On the ground stand 3–7
fronto-parallel objects (boards, poles a few pixels wide, round signs on poles, hoops, stars,
crescents), each at its own depth in 1–10 m (log-uniform), its size in metres, so nearer objects
look bigger; they are drawn far to near, so nearer ones occlude farther ones. Every surface is a
real photo texture of ``scenes`` (nearer surfaces show coarser texture), neighbouring surfaces
differ in texture where possible, and the depth of a pixel is the depth of the surface whose texture
colours it: every depth edge is an object silhouette, and every pixel is valid. Scenes are drawn at
the requested size directly, seeded by (seed, split, index).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from bench.data.common import ItemDataset, image_tensor
from bench.data.scenes import (CLASS_NAMES, DEFAULT_LENGTH, Canvas, bar_mask, crescent_mask, ring_mask,
                               star_outline, texture, texture_layer)

FOCAL_PER_SIDE = 1.0
"""Focal length in pixels per pixel of the image's short side (a 53° field of view across it)."""
CAMERA_HEIGHT_M = (1.2, 1.8)
HORIZON_ROW = (0.25, 0.5)
"""Horizon row as a fraction of the image height: all above it is wall."""
WALL_DEPTH_M = (10.0, 10.0)
"""The back wall stands at 10 m in every scene (NYUv2's depth range ends at 10 m). Version 1 drew it
at 12–20 m: it covered 41% of the pixels and, unpredictable from local texture, made 57% of the depth
variance, so a probe's RMSE measured the wall's draw rather than the upsampler's edges."""
OBJECT_DEPTH_M = (1.0, 10.0)
"""Object depths are log-uniform in this range."""
OBJECTS = (3, 7)
MIN_VISIBLE = 0.002
"""An object is redrawn (up to ``TRIES`` times) until at least this fraction of the image shows it."""
TRIES = 20
MAX_RADIUS = 0.3
"""Round shapes and half-widths of boards are at most this fraction of the short side."""
GROUND_TEXTURES = ("gravel", "grass", "brick")
WALL_TEXTURES = ("gravel", "grass", "brick", "stars", "tissue")
"""The large textures (512² or more): they stay sharp on the ground under perspective magnification
and on the wall, which shows all of them."""
GROUND_TILE_M = 2.0
"""The ground texture's short side spans this many metres; it repeats mirrored beyond."""
MIP_LEVELS = 5
CROP_AT_1M = 0.3
"""Texture crop of a fronto-parallel surface: this fraction of the largest crop at 1 m, growing
log-linearly to all of it at 20 m, so nearer surfaces show coarser texture."""


@dataclass(frozen=True)
class Layer:
    """One surface of a scene: where it would be seen if nothing nearer covered it, its depth and colours."""

    kind: str
    """"wall", "ground" or the object's shape: "board", "pole", "sign", "hoop", "star", "crescent"."""
    texture: str
    mask: np.ndarray
    """(H,W) bool, the surface's pixels inside the image (objects: only above their ground contact row)."""
    depth: np.ndarray
    """(H,W) float32 metres, meaningful inside ``mask``: a constant for all but the ground."""
    rgb: np.ndarray
    """(H,W,3) uint8 the surface's texture as seen, meaningful inside ``mask``."""


@dataclass(frozen=True)
class DepthScene:
    """A rendered scene and the camera and layers it was drawn from."""

    focal: float
    """Focal length in pixels."""
    horizon: float
    """Row (pixel centres at integer rows) where the ground meets infinity."""
    camera_height: float
    wall_depth: float
    layers: tuple[Layer, ...]
    """Far to near: the wall, the ground, then the objects by decreasing depth."""
    image: np.ndarray
    """(H,W,3) uint8."""
    depth: np.ndarray
    """(H,W) float32 metres."""
    layer: np.ndarray
    """(H,W) uint8 index into ``layers`` of the surface seen at each pixel."""


def ground_row_depth(height: int, focal: float, horizon: float, camera_height: float) -> np.ndarray:
    """(height,) float32 depth of the ground plane on each row: f·h/(y − horizon), inf on and above the horizon."""
    rows = np.arange(height, dtype=np.float64) - horizon
    with np.errstate(divide="ignore"):
        return np.where(rows > 0, focal * camera_height / rows, np.inf).astype(np.float32)


def crop_fraction(depth: float) -> float:
    """Fraction of the largest texture crop shown by a fronto-parallel surface at ``depth`` metres."""
    return float(np.clip(CROP_AT_1M ** (1 - np.log(depth) / np.log(WALL_DEPTH_M[1])), CROP_AT_1M, 1.0))


@functools.lru_cache(maxsize=None)
def mipmap(name: str) -> tuple[np.ndarray, ...]:
    """A texture box-filtered by 1, 2, 4, ...: level k serves pixels that span about 2^k texels."""
    source = Image.fromarray(texture(name))
    return tuple(np.asarray(source.reduce(2 ** k)) for k in range(MIP_LEVELS))


def mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Integer texel coordinates tiled mirrored over a side of n texels (no seams between tiles)."""
    index = np.mod(index, 2 * n)
    return np.where(index < n, index, 2 * n - 1 - index)


def ground_texture(name: str, size: tuple[int, int], row_depth: np.ndarray, rows: np.ndarray, focal: float,
                   camera_height: float, rng: np.random.Generator) -> np.ndarray:
    """(H,W,3) uint8: the ground texture in perspective on ``rows`` (black elsewhere), at a random offset and turn.

    Pixel (y, x) sees the ground point X = (x − cx)·Z/f across and Z = depth of row y ahead; the mip
    level follows the texels a pixel spans (geometric mean of across and ahead), so the far ground
    is smoothed rather than aliased.
    """
    levels = mipmap(name)
    texels_per_m = min(levels[0].shape[:2]) / GROUND_TILE_M
    turn, (x0, z0) = rng.uniform(0, 2 * np.pi), rng.uniform(0, 100, 2)
    z = row_depth[rows].astype(np.float64)[:, None]
    x = (np.arange(size[1]) - (size[1] - 1) / 2)[None, :] * z / focal
    a = (x * np.cos(turn) - z * np.sin(turn) + x0) * texels_per_m
    b = (x * np.sin(turn) + z * np.cos(turn) + z0) * texels_per_m
    span = texels_per_m * z[:, 0] / focal * np.sqrt(z[:, 0] / camera_height)
    level = np.clip(np.floor(np.log2(np.maximum(span, 1))), 0, MIP_LEVELS - 1).astype(int)
    rgb, row_index = np.zeros((*size, 3), dtype=np.uint8), np.flatnonzero(rows)
    for k in np.unique(level):
        at, tex = level == k, levels[k]
        rgb[row_index[at]] = tex[mirror(np.floor(a[at] / 2 ** k).astype(np.int64), tex.shape[0]),
                                 mirror(np.floor(b[at] / 2 ** k).astype(np.int64), tex.shape[1])]
    return rgb


@dataclass(frozen=True)
class Placement:
    """Where an object stands: its column, the row it touches the ground on, and pixels per metre there."""

    cx: float
    contact: float
    px_per_m: float


def upright(c: Canvas, cx: float, bottom: float, height: float, half_width: float, lean: float = 0.0) -> np.ndarray:
    """A bar standing on (bottom, cx), ``height`` px long, leaning ``lean`` radians from vertical."""
    u, v = c.frame_at(bottom - height / 2 * np.cos(lean), cx + height / 2 * np.sin(lean), np.pi / 2 - lean)
    return bar_mask(u, v, height / 2, half_width)


def board(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A rectangle 0.4–2.5 m wide and 0.5–3 m tall."""
    half_width = min(rng.uniform(0.2, 1.25) * at.px_per_m, MAX_RADIUS * c.unit)
    return upright(c, at.cx, at.contact, rng.uniform(0.5, 3.0) * at.px_per_m, half_width)


def pole(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A pole 1.5–5 m long and 2–5 px wide at 224², leaning up to 15°."""
    return upright(c, at.cx, at.contact, rng.uniform(1.5, 5.0) * at.px_per_m, c.thin(rng) / 2,
                   rng.uniform(-0.26, 0.26))


def sign(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A disc of radius 0.2–0.7 m on top of a thin pole 1–3 m tall."""
    height = rng.uniform(1.0, 3.0) * at.px_per_m
    radius = min(rng.uniform(0.2, 0.7) * at.px_per_m, MAX_RADIUS * c.unit)
    disc = np.hypot(c.xx - at.cx, c.yy - (at.contact - height)) <= radius
    return disc | upright(c, at.cx, at.contact, height, c.thin(rng) / 2)


def hoop(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A ring of radius 0.4–1.5 m standing on the ground, its band 2–5 px wide at 224²."""
    outer = min(rng.uniform(0.4, 1.5) * at.px_per_m, MAX_RADIUS * c.unit)
    return ring_mask(*c.frame_at(at.contact - outer, at.cx, 0.0), outer, c.thin(rng))


def star(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A star of 5–8 narrow spikes, 0.4–1.2 m in radius, resting on the ground."""
    n = int(rng.integers(5, 9))
    outer = min(rng.uniform(0.4, 1.2) * at.px_per_m, MAX_RADIUS * c.unit)
    radii, angles = star_outline(n, outer, outer * rng.uniform(0.15, 0.35))
    return c.polygon_at(at.contact - outer, at.cx, radii, angles + rng.uniform(0, 2 * np.pi))


def crescent(c: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A crescent 0.4–1.2 m in radius with horns that taper to a point, turned at random."""
    r = min(rng.uniform(0.4, 1.2) * at.px_per_m, MAX_RADIUS * c.unit)
    u, v = c.frame_at(at.contact - r, at.cx, rng.uniform(0, 2 * np.pi))
    return crescent_mask(u, v, r, rng.uniform(0.2, 0.6) * r)


THIN_OBJECTS: tuple[Callable, ...] = (pole, sign, hoop)
OBJECT_SHAPES: tuple[Callable, ...] = (*THIN_OBJECTS, board, star, crescent)


def place_object(c: Canvas, rng: np.random.Generator, shapes: tuple[Callable, ...], focal: float,
                 horizon: float, camera_height: float, row_depth: np.ndarray) -> tuple[str, np.float32, np.ndarray]:
    """(shape name, depth, mask) of one object standing on the ground, redrawn until enough of it shows.

    The mask keeps only the rows where the ground is farther than the object (above the row it stands
    on), so no part of it sinks into the ground in front of it.
    """
    lo, hi = np.log(OBJECT_DEPTH_M)
    for _ in range(TRIES):
        shape = shapes[rng.integers(len(shapes))]
        depth = np.float32(np.exp(rng.uniform(lo, hi)))
        at = Placement(rng.uniform(0.05, 0.95) * c.size[1], horizon + focal * camera_height / depth, focal / depth)
        mask = shape(c, rng, at) & (row_depth > depth)[:, None]
        if mask.mean() >= MIN_VISIBLE:
            break
    return shape.__name__, depth, mask


def touching(mask: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` that share an edge with it."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def draw_depth_scene(size: tuple[int, int], rng: np.random.Generator) -> DepthScene:
    """One scene at ``size`` (H, W): camera, ground, wall and 3–7 objects, painted far to near."""
    c = Canvas(size)
    focal = FOCAL_PER_SIDE * c.unit
    camera_height, horizon = rng.uniform(*CAMERA_HEIGHT_M), rng.uniform(*HORIZON_ROW) * size[0]
    wall_depth = np.float32(rng.uniform(*WALL_DEPTH_M))
    row_depth = ground_row_depth(size[0], focal, horizon, camera_height)
    ground_rows = row_depth < wall_depth

    ground_name = GROUND_TEXTURES[rng.integers(len(GROUND_TEXTURES))]
    walls = [name for name in WALL_TEXTURES if name != ground_name]
    wall_name = walls[rng.integers(len(walls))]
    fraction = crop_fraction(float(wall_depth))
    layers = [
        Layer("wall", wall_name, np.ones(size, dtype=bool), np.broadcast_to(wall_depth, size),
              texture_layer(wall_name, size, rng, (fraction, fraction))),
        Layer("ground", ground_name, np.broadcast_to(ground_rows[:, None], size),
              np.broadcast_to(row_depth[:, None], size),
              ground_texture(ground_name, size, row_depth, ground_rows, focal, camera_height, rng)),
    ]
    objects = [place_object(c, rng, THIN_OBJECTS if i == 0 else OBJECT_SHAPES, focal, horizon, camera_height,
                            row_depth) for i in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1)))]

    image = np.where(ground_rows[:, None, None], layers[1].rgb, layers[0].rgb)
    depth = np.where(layers[1].mask, layers[1].depth, wall_depth).astype(np.float32)
    layer = np.broadcast_to(ground_rows[:, None], size).astype(np.uint8)
    for kind, distance, mask in sorted(objects, key=lambda o: -o[1]):
        beside = {layers[i].texture for i in np.unique(layer[touching(mask)])}
        allowed = [name for name in CLASS_NAMES if name not in beside] or list(CLASS_NAMES)
        unused = [name for name in allowed if name not in {lay.texture for lay in layers}]
        name = (unused or allowed)[rng.integers(len(unused or allowed))]
        fraction = crop_fraction(float(distance))
        layers.append(Layer(kind, name, mask, np.broadcast_to(distance, size),
                            texture_layer(name, size, rng, (fraction, fraction))))
        image[mask] = layers[-1].rgb[mask]
        depth[mask] = distance
        layer[mask] = len(layers) - 1
    return DepthScene(focal, horizon, camera_height, float(wall_depth), tuple(layers), image, depth, layer)


class DepthScenes(ItemDataset):
    """``draw_depth_scene`` items as the depth contract has them: image, depth in metres, all valid."""

    kind = "depth"
    memoised = True

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int) -> None:
        super().__init__("depth_scenes", split, image_size, DEFAULT_LENGTH if limit is None else limit, seed)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        scene = draw_depth_scene(self.image_size, self.rng(index))
        return {"image": image_tensor(scene.image), "depth": torch.from_numpy(scene.depth),
                "valid": torch.ones(self.image_size, dtype=torch.bool)}
