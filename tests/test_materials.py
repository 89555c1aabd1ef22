"""``materials``: colour tells nothing of the class at level 1 and everything at level 0; exact, seeded items."""
import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.data.common import item_rng
from bench.data.materials import CLASS_NAMES, Materials, dataset_at, draw_materials, recoloured
from bench.registry import DATASETS

SIZE = (96, 128)


def class_colours(level: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Each (scene, class present) pair's mean pixel colour, and the class: what a colour probe could read."""
    colours, classes = [], []
    for index in range(n):
        image, label = draw_materials(SIZE, item_rng(0, "train", index), level)
        for cls in label.unique().tolist():
            colours.append(image[:, label == cls].mean(1).numpy())
            classes.append(cls)
    return np.array(colours), np.array(classes)


def explained_by_class(colours: np.ndarray, classes: np.ndarray) -> float:
    """Share of the colour variance that the class means explain (between-class / total, summed over RGB)."""
    total = ((colours - colours.mean(0)) ** 2).sum()
    between = sum((classes == c).sum() * ((colours[classes == c].mean(0) - colours.mean(0)) ** 2).sum()
                  for c in np.unique(classes))
    return between / total


def test_the_class_explains_the_colour_at_level_0_and_almost_none_of_it_at_level_1():
    coded, blind = explained_by_class(*class_colours(0.0)), explained_by_class(*class_colours(1.0))
    print(f"colour variance explained by the class: level 0 {coded:.3f}, level 1 {blind:.3f}")
    assert coded > 0.8 and blind < 0.25


def test_recolouring_keeps_the_texture_and_sets_its_mean_and_contrast():
    rng = np.random.default_rng(0)
    texture = rng.uniform(size=(500, 3)).astype(np.float32)
    out = recoloured(texture, np.array([0.2, 0.4, 0.6]), 0.1)
    np.testing.assert_allclose(out.mean(0), [0.2, 0.4, 0.6], atol=1e-5)
    np.testing.assert_allclose(out.std(0), [0.1, 0.1, 0.1], rtol=1e-4)
    luminance = texture @ np.array([0.299, 0.587, 0.114])
    assert np.corrcoef(out[:, 0], luminance)[0, 1] > 0.999  # the texture's structure, in a new colour


def test_items_are_exact_seeded_and_differ_by_split_and_seed():
    data = load_dataset("materials", "train", SIZE, limit=3, seed=0)
    item = data[1]
    assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
    assert item["label"].shape == SIZE and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= set(range(len(CLASS_NAMES)))
    assert data.num_classes == len(CLASS_NAMES) == 8
    again = load_dataset("materials", "train", SIZE, limit=3, seed=0)[1]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])
    for other in (load_dataset("materials", "val", SIZE, limit=3, seed=0)[1],
                  load_dataset("materials", "train", SIZE, limit=3, seed=1)[1]):
        assert not torch.equal(item["image"], other["image"])


def test_levels_are_datasets_of_their_own_and_level_1_is_materials():
    assert dataset_at(1.0) == "materials"
    name = dataset_at(0.5)
    assert name == "materials_colour50" and name in DATASETS and dataset_at(0.5) == name
    half = load_dataset(name, "train", SIZE, limit=1)[0]
    full = load_dataset("materials", "train", SIZE, limit=1)[0]
    assert not torch.equal(half["image"], full["image"])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dataset_at(1.5)
    with pytest.raises(ValueError, match="share the dataset 'materials_colour50' with level 0.5"):
        dataset_at(0.501)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Materials("train", SIZE, 1, 0, level=-0.1)
