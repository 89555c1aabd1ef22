"""``materials``: generated scenes whose classes are materials, not colours; exact labels.

``scenes`` gives every class one texture in its own colour, so every label boundary is a colour step
and a probe on the image's colour alone out-scores the backbone's features (docs/profiles-and-data.md).
Here a class is a material that an ImageNet backbone tells by its texture: stone, brick, grass, fur,
text, wood, fabric and tissue, from scikit-image's photographs (text from two of them). Colour is taken away as
a cue and added back as a nuisance:

- every instance is recoloured: its texture's luminance deviations from their mean (the texture itself)
  are kept, rescaled to a random contrast, around a mean colour drawn from one palette that all
  classes share (hue, saturation, brightness); the sources' own chroma is dropped, so no class has
  colour variation of its own;
- half the instances take as their mean colour the mean of what they cover, so their boundary has no
  step in mean colour;
- an instance is sometimes painted in two parts of different colours, the scene is lit by a smooth
  gradient, and soft cast shadows cross objects and background alike: colour edges inside a class.

``level`` (0–1) scales all of this, for ``ablate colour``: at 0 every class has its own fixed colour and
nothing else changes colour (colour-coded, as in ``scenes``); at 1 (the registered dataset) the design
above. Shapes are those of ``scenes`` (thin bars, rings, stars, crescents; ellipses, polygons), drawn at
the requested size, seeded by (seed, split, index).
"""
from __future__ import annotations

import colorsys
import functools

import numpy as np
import skimage.data
import torch
from skimage.filters import gaussian

from bench.data.common import ItemDataset, as_rgb, image_tensor
from bench.data.scenes import SHAPES, THIN_SHAPES, Canvas, texture_layer_of

DEFAULT_LENGTH = 256
LEVEL = 1.0
"""The registered dataset's colour level: colour carries no class information."""

# class name -> its sources: (skimage.data function, (row slice, column slice))
SOURCES: dict[str, tuple[tuple[str, tuple[slice, slice]], ...]] = {
    "stone": (("gravel", np.s_[:, :]),),
    "brick": (("brick", np.s_[:, :]),),
    "grass": (("grass", np.s_[:, :]),),
    "fur": (("chelsea", np.s_[100:, :140]),),
    "text": (("page", np.s_[:, :]), ("text", np.s_[:, :])),
    "wood": (("coffee", np.s_[:, 430:]),),
    "fabric": (("astronaut", np.s_[330:, 10:200]),),
    "tissue": (("immunohistochemistry", np.s_[:, :]),),
}
CLASS_NAMES = tuple(SOURCES)
CLASS_HUES = np.arange(len(CLASS_NAMES)) / len(CLASS_NAMES)
"""Level 0: class k's own colour has hue k/8 (saturation 0.6, brightness 0.65), one colour per class."""
CONTRAST = (0.06, 0.16)
"""Standard deviation of an instance's texture around its mean colour (image values in [0, 1])."""
MATCH = 0.5
"""Share of instances whose mean colour is the mean of what they cover (at level 1)."""
PARTS = 0.3
"""Share of instances painted in two parts of different colours (at level 1)."""
SHADOWS = (0, 3)
"""Cast shadows per scene (at level 1): soft-edged polygons that darken by 25–55%."""
LIGHT = 0.3
"""Peak-to-peak brightness change of the scene's lighting gradient (at level 1)."""


@functools.lru_cache(maxsize=None)
def source(name: str, index: int) -> np.ndarray:
    """The (h,w,3) uint8 texture of class ``name``'s source ``index``, loaded once."""
    function, region = SOURCES[name][index]
    return as_rgb(getattr(skimage.data, function)()[region])


def palette_colour(rng: np.random.Generator) -> np.ndarray:
    """A mean colour from the palette every class shares: any hue, saturation 0.1–0.7, brightness 0.25–0.85."""
    return np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.25, 0.85)))


def class_colour(cls: int) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(CLASS_HUES[cls], 0.6, 0.65))


def recoloured(texture: np.ndarray, mean: np.ndarray, contrast: float) -> np.ndarray:
    """(n,3) texture pixels in [0,1] -> their luminance deviations, rescaled to standard deviation ``contrast``,
    around the colour ``mean`` (grey deviations on every channel): the texture's structure kept, its own
    colour and contrast replaced."""
    luminance = texture @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    deviation = luminance - luminance.mean()
    return mean + (deviation * (contrast / max(float(deviation.std()), 1e-6)))[:, None]


def instance_layer(cls: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop, scale and flip of one of class ``cls``'s sources, (H,W,3) float in [0,1]."""
    name = CLASS_NAMES[cls]
    texture = source(name, int(rng.integers(len(SOURCES[name]))))
    return texture_layer_of(texture, size, rng).astype(np.float32) / 255.0


def mean_colour(covered: np.ndarray | None, cls: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """An instance's mean colour: its class's own with probability 1 - level, else the mean of the (n,3) pixels
    it covers (``MATCH`` of those; None: it covers nothing drawn, the background) or a palette colour."""
    if rng.uniform() >= level:
        return class_colour(cls)
    if rng.uniform() < MATCH and covered is not None:
        return covered.mean(0)
    return palette_colour(rng)


def half_plane(canvas: Canvas, rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` on one side of a random line through its centroid."""
    rows, cols = np.nonzero(mask)
    u, _ = canvas.frame_at(rows.mean(), cols.mean(), rng.uniform(0, 2 * np.pi))
    return mask & (u > 0)


def shadow(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """(H,W) factor <= 1 of one soft cast shadow: a large random polygon, darkening by 25–55%."""
    n = int(rng.integers(3, 7))
    region = canvas.polygon(rng.uniform(0.5, 1.0, n) * rng.uniform(0.3, 0.7) * canvas.unit,
                            np.sort(rng.uniform(0, 2 * np.pi, n)), rng).astype(np.float32)
    soft = gaussian(region, sigma=max(1.0, 0.01 * canvas.unit))
    return 1 - rng.uniform(0.25, 0.55) * soft


def lighting(canvas: Canvas, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """(H,W) factor of a linear lighting gradient in a random direction, ``amplitude`` peak to peak around 1."""
    u, _ = canvas.frame_at(canvas.size[0] / 2, canvas.size[1] / 2, rng.uniform(0, 2 * np.pi))
    return 1 + amplitude * u / (2 * np.abs(u).max())


def draw_materials(size: tuple[int, int], rng: np.random.Generator,
                   level: float = LEVEL) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene at ``size``: (3,H,W) image and its exact (H,W) int64 labels.

    A background class fills the scene, then 4–7 shapes (the first with thin parts) cover what was drawn
    before; each instance recoloured as the module says, then lighting and shadows over everything.
    """
    canvas = Canvas(size)
    label = np.full(size, int(rng.integers(len(CLASS_NAMES))), dtype=np.int64)
    image = np.zeros((*size, 3), dtype=np.float32)
    everything = np.ones(size, dtype=bool)
    paint(image, everything, int(label[0, 0]), canvas, rng, level, background=True)
    for i in range(int(rng.integers(4, 8))):
        choices = THIN_SHAPES if i == 0 else SHAPES
        mask = choices[rng.integers(len(choices))](canvas, rng)
        if not mask.any():
            continue
        cls = int(rng.integers(len(CLASS_NAMES)))
        paint(image, mask, cls, canvas, rng, level)
        label[mask] = cls
    light = lighting(canvas, rng, LIGHT * level)
    for _ in range(int(rng.integers(SHADOWS[0], SHADOWS[1] + 1))):
        if rng.uniform() < level:
            light = light * shadow(canvas, rng)
    image = np.clip(image * light[..., None], 0, 1)
    return image_tensor(np.round(image * 255).astype(np.uint8)), torch.from_numpy(label)


def paint(image: np.ndarray, mask: np.ndarray, cls: int, canvas: Canvas, rng: np.random.Generator,
          level: float, background: bool = False) -> None:
    """Paint an instance of class ``cls`` over ``mask`` in ``image`` (the first, ``background``, over nothing
    drawn), in two coloured parts with probability PARTS·level."""
    layer = instance_layer(cls, canvas.size, rng)
    parts = [mask]
    if rng.uniform() < PARTS * level:
        first = half_plane(canvas, rng, mask)
        parts = [p for p in (first, mask & ~first) if p.any()]
    for part in parts:
        colour = mean_colour(None if background else image[part], cls, level, rng)
        image[part] = recoloured(layer[part], colour, rng.uniform(*CONTRAST))


class Materials(ItemDataset):
    kind = "seg"
    memoised = True
    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)

    def __init__(self, split: str, image_size: tuple[int, int], limit: int | None, seed: int,
                 level: float = LEVEL, name: str = "materials") -> None:
        if not 0 <= level <= 1:
            raise ValueError(f"materials: level must be in [0, 1] (0 colour-coded, 1 colour-blind), got {level}")
        super().__init__(name, split, image_size, DEFAULT_LENGTH if limit is None else limit, seed)
        self.level = level

    def item(self, index: int) -> dict[str, torch.Tensor]:
        image, label = draw_materials(self.image_size, self.rng(index), self.level)
        return {"image": image, "label": label}


def dataset_at(level: float) -> str:
    """The registered name of ``materials`` at colour ``level`` (``ablate colour``): ``materials`` itself at 1,
    ``materials_colour<percent>`` otherwise, registered on first use so its cells carry the level in their
    data identity."""
    from bench.data import DatasetSpec
    from bench.registry import DATASETS

    if not 0 <= level <= 1:
        raise ValueError(f"colour level must be in [0, 1] (0 colour-coded, 1 colour-blind), got {level}")
    if level == LEVEL:
        return "materials"
    name = f"materials_colour{round(100 * level)}"
    if name in DATASETS:
        registered = DATASETS.get(name).loader.keywords["level"]
        if registered != level:  # one name, one level: never another level's scenes under it
            raise ValueError(f"colour level {level} would share the dataset {name!r} with level {registered}; "
                             f"use levels that differ by at least a whole percent")
    else:
        DATASETS.register(DatasetSpec(
            name, "seg", f"materials at colour level {level:g} (0: each class its own colour; 1: materials)", True,
            loader=functools.partial(Materials, level=level, name=name)))
    return name
