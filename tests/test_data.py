"""Datasets: shapes, dtypes and ranges, determinism, exact labels, depth from disparity, folder formats, errors."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from bench.data.coco_stuff_labels import COARSE_CLASSES, fine_to_coarse_table
from bench.data import DatasetError, load_dataset
from bench.data.scenes import Canvas, bar, draw_scene, ring
from bench.registry import DATASETS, RegistryError

FIXTURES = Path(__file__).parent / "fixtures"
PATHS = {"coco_stuff": str(FIXTURES / "coco_stuff"), "nyuv2": str(FIXTURES / "nyuv2")}
SIZES = [(96, 128), (70, 45)]  # non-square; sides not multiples of 32

# STEGO's fine_to_coarse, written out independently of our hierarchy: fine id i -> STEGO[i].
STEGO = [int(v) for v in """
9 11 11 11 11 11 11 11 11 8 8 8 8 8 8 7 7 7 7 7 7 7 7 7 7 6 6 6 6 6 6 6 6 10 10 10 10 10 10 10 10 10 10
5 5 5 5 5 5 5 5 2 2 2 2 2 2 2 2 2 2 3 3 3 3 3 3 3 3 3 3 0 0 0 0 0 0 1 1 1 1 1 1 4 4 4 4 4 4 4 4
17 17 22 20 20 22 15 25 16 13 12 12 17 17 23 15 15 17 15 21 15 25 13 13 13 13 13 22 26 14 14 15 22 21 21 24
20 22 15 17 16 15 22 24 21 17 25 16 21 17 22 16 21 21 25 21 26 21 24 20 17 14 21 26 15 23 20 21 24 15 24 22
25 15 20 17 17 22 14 18 18 18 18 18 18 18 26 26 19 19 24""".split()]


def test_registered_names_and_kinds():
    # materials' colour levels (materials_colourNN) are registered by the colour sweep when first used, and "_"
    # datasets by tests
    kinds = {n: DATASETS.get(n).kind for n in DATASETS.names() if not n.startswith(("materials_colour", "_"))}
    assert kinds == {"scenes": "seg", "materials": "seg", "middlebury": "depth", "depth_scenes": "depth", "photos": "images",
                     "cam_photos": "classify", "coco_stuff": "seg", "nyuv2": "depth", "ade20k": "seg",
                     "imagenet": "classify", "voc": "seg", "cityscapes": "seg"}
    assert [n for n in kinds if DATASETS.get(n).embedded] == ["cam_photos", "depth_scenes", "materials", "middlebury",
                                                              "photos", "scenes"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["scenes", "middlebury", "depth_scenes", "photos", "coco_stuff", "nyuv2"])
def test_items_have_the_contract_shapes_dtypes_and_ranges(name, size):
    data = load_dataset(name, "train", size, limit=2, path=PATHS.get(name))
    assert len(data) == 2 and data.kind == DATASETS.get(name).kind and data.name == name
    for i in range(2):
        item = data[i]
        keys = {"seg": {"image", "label"}, "depth": {"image", "depth", "valid"}, "images": {"image"}}[data.kind]
        assert set(item) == keys
        assert item["image"].shape == (3, *size) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        if data.kind == "seg":
            assert data.ignore_index == 255 and len(data.class_names) == data.num_classes
            label = item["label"]
            assert label.shape == size and label.dtype == torch.int64
            assert ((label >= 0) & (label < data.num_classes) | (label == 255)).all()
        if data.kind == "depth":
            assert item["depth"].shape == item["valid"].shape == size
            assert item["depth"].dtype == torch.float32 and item["valid"].dtype == torch.bool
            assert (item["depth"][item["valid"]] > 0).all() and item["valid"].any()
    with pytest.raises(IndexError):
        data[2]


@pytest.mark.parametrize("name", ["scenes", "middlebury", "photos"])
def test_embedded_data_is_reproducible_and_splits_differ(name):
    def first(split, seed=0):
        return load_dataset(name, split, (64, 80), limit=12, seed=seed)[11]["image"]

    assert torch.equal(first("train"), first("train"))
    assert not torch.equal(first("train"), first("val"))
    assert not torch.equal(first("train"), first("train", seed=1))


def test_a_photo_items_source_is_the_photograph_it_shows():
    """Grey photographs (coins, brick, gravel, clock in val) give crops with three equal channels, colour
    ones (coffee, rocket, immunohistochemistry, retina) do not: each item's named source must agree."""
    from bench.data.embedded import photo

    data = load_dataset("photos", "val", (48, 64), limit=40)
    grey = {name for name in data.photos if np.array_equal(photo(name)[..., 0], photo(name)[..., 1])}
    assert grey == {"coins", "brick", "gravel", "clock"}
    assert [data.source(i) for i in range(8)] == data.photos  # the whole photographs come first
    sources = [data.source(i) for i in range(8, 40)]
    assert len(set(sources)) == 8  # 32 crops draw from every photograph
    for i, name in enumerate(sources, 8):
        image = data[i]["image"]
        assert torch.equal(image[0], image[1]) == (name in grey), (i, name)


def test_scene_labels_are_exact_classes_and_cover_the_pixels_they_textured():
    rng = np.random.default_rng(3)
    image, label = draw_scene((224, 224), rng)
    assert set(label.unique().tolist()) <= set(range(8)) and len(label.unique()) >= 3
    # labels and image agree: across a label edge the colour jumps far more than inside a region
    edges = (label[:, 1:] != label[:, :-1])
    step = (image[:, :, 1:] - image[:, :, :-1]).abs().sum(0)
    assert step[edges].mean() > 2 * step[~edges].mean()


def test_scenes_have_parts_thinner_than_4px_at_224():
    data = load_dataset("scenes", "val", (224, 224), limit=8)
    thin = 0
    for i in range(len(data)):
        label = data[i]["label"].numpy()
        for cls in np.unique(label[label > 0]):
            mask = label == cls
            opened = ndimage.binary_opening(mask, structure=np.ones((4, 4)))
            thin += int((mask & ~opened).sum())
    assert thin > 500


@pytest.mark.parametrize("shape", [bar, ring])
def test_thin_shapes_are_2_to_5_px_wide(shape):
    canvas = Canvas((224, 224))
    for seed in range(5):
        mask = shape(canvas, np.random.default_rng(seed))
        assert mask.sum() > 20
        # half-width = largest distance from inside to outside
        assert 0.5 <= ndimage.distance_transform_edt(mask).max() <= 3.5


def test_middlebury_depth_is_focal_baseline_over_disparity():
    from bench.data.embedded import motorcycle

    _, _, disp = skimage.data.stereo_motorcycle()
    _, depth, valid = motorcycle()
    assert np.array_equal(valid, np.isfinite(disp)) and (~valid).any() and (depth[~valid] == 0).all()
    ys, xs = np.nonzero(valid)
    for k in np.random.default_rng(0).integers(0, len(ys), 20):
        y, x = ys[k], xs[k]
        assert depth[y, x] == pytest.approx(994.978 * 0.193 / (float(disp[y, x]) + 31.086), rel=1e-4)


def test_middlebury_crops_sample_train_depths_with_nearest():
    from bench.data.embedded import motorcycle

    _, depth, valid = motorcycle()
    train_depths = np.unique(depth[:, :445][valid[:, :445]])
    for item in load_dataset("middlebury", "train", (96, 128), limit=3):
        d, v = item["depth"].numpy(), item["valid"].numpy()
        assert np.isin(d[v], train_depths).all() and (d[~v] == 0).all()


def test_middlebury_train_and_val_use_disjoint_columns():
    from bench.data.embedded import split_columns

    (a, na), (b, nb) = split_columns("train", 741), split_columns("val", 741)
    assert a == 0 and a + na == b and b + nb == 741 and na == 445


def test_coarse_mapping_matches_stego_and_known_ids():
    table = fine_to_coarse_table()
    assert table[:182].tolist() == STEGO
    assert table[0] == 9 and table[105] == table[156] == 23 and COARSE_CLASSES[23] == "sky-stuff"
    assert (table[182:] == 255).all() and len(COARSE_CLASSES) == 27


def test_coco_stuff_fixture_labels_are_mapped_and_curated_list_restricts():
    root = FIXTURES / "coco_stuff"
    data = load_dataset("coco_stuff", "train", (24, 32), path=str(root))  # native size: no resampling
    curated = (root / "curated/train2017/Coco164kFull_Stuff_Coarse_7.txt").read_text().split()
    assert len(data) == len(curated) == 2 < len(list((root / "images/train2017").iterdir()))
    for item, stem in zip(data, curated):
        fine = np.asarray(Image.open(root / "annotations/train2017" / f"{stem}.png"))
        expected = np.where(fine == 255, 255, np.asarray(STEGO + [0] * 74)[fine])
        assert np.array_equal(item["label"].numpy(), expected) and (expected == 255).any()
    assert len(load_dataset("coco_stuff", "val", (16, 16), path=str(root))) == 1  # no curated list: all


def test_coco_stuff_named_training_list_is_used_and_a_missing_or_unknown_one_is_refused(tmp_path):
    root = FIXTURES / "coco_stuff"
    featup = load_dataset("coco_stuff", "train", (24, 32), path=str(root), image_list="Coco164kFull_Stuff_Coarse.txt")
    listed = (root / "curated/train2017/Coco164kFull_Stuff_Coarse.txt").read_text().split()
    assert [p[0].stem for p in featup.pairs] == listed == ["000000000025", "000000000030"]
    with pytest.raises(DatasetError, match="no image list 'mine.txt'.*Coco164kFull_Stuff_Coarse.txt"):
        load_dataset("coco_stuff", "train", (24, 32), path=str(root), image_list="mine.txt")
    copy = tmp_path / "coco"
    shutil.copytree(root, copy)
    (copy / "curated/train2017/Coco164kFull_Stuff_Coarse.txt").unlink()
    with pytest.raises(DatasetError, match="Coco164kFull_Stuff_Coarse.txt' is not at"):
        load_dataset("coco_stuff", "train", (24, 32), path=str(copy), image_list="Coco164kFull_Stuff_Coarse.txt")


def test_grayscale_image_becomes_three_equal_channels():
    item = load_dataset("coco_stuff", "train", (24, 32), path=PATHS["coco_stuff"])[1]  # 000000000030 is gray
    assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][1], item["image"][2])


def test_nyuv2_millimetres_to_metres_and_zero_is_invalid():
    root = FIXTURES / "nyuv2"
    item = load_dataset("nyuv2", "val", (24, 32), path=str(root))[0]
    mm = np.asarray(Image.open(root / "val/depth/0003.png")).astype(np.float64)
    assert np.array_equal(item["valid"].numpy(), mm > 0) and (mm == 0).any()
    np.testing.assert_allclose(item["depth"].numpy(), mm / 1000, rtol=1e-6)


@pytest.mark.parametrize("size", [(50, 41), (13, 7), (48, 64)])
def test_labels_are_resized_with_nearest_pixel_centres_and_cropped_as_the_image(size):
    """Against torch's nearest-exact (pixel centres) resize to the short-side fit, then the image's centre crop."""
    root = FIXTURES / "coco_stuff"
    item = load_dataset("coco_stuff", "train", size, path=str(root))[0]
    stem = (root / "curated/train2017/Coco164kFull_Stuff_Coarse_7.txt").read_text().split()[0]
    fine = np.asarray(Image.open(root / "annotations/train2017" / f"{stem}.png"))
    coarse = torch.from_numpy(np.where(fine == 255, 255, np.asarray(STEGO + [0] * 74)[fine]).astype(np.float64))
    h, w = coarse.shape
    scale = max(size[0] / h, size[1] / w)
    rh, rw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    full = F.interpolate(coarse[None, None], size=(rh, rw), mode="nearest-exact")[0, 0]
    top, left = (rh - size[0]) // 2, (rw - size[1]) // 2
    assert torch.equal(item["label"], full[top:top + size[0], left:left + size[1]].long())


def test_needs_path_names_the_flag():
    with pytest.raises(DatasetError, match=r"--data coco_stuff=PATH"):
        load_dataset("coco_stuff", "train", (32, 32))
    with pytest.raises(DatasetError, match=r"embedded"):
        load_dataset("scenes", "train", (32, 32), path="/tmp")


def test_missing_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)nope. does not exist.*images/\{train2017,val2017\}"):
        load_dataset("coco_stuff", "train", (32, 32), path=str(tmp_path / "nope"))


def test_wrong_layout_shows_expected_and_found(tmp_path):
    (tmp_path / "rgb").mkdir()
    with pytest.raises(DatasetError, match=r"(?s)lacks train/rgb, train/depth.*expected.*\{train,val\}/rgb.*found\nrgb/"):
        load_dataset("nyuv2", "train", (32, 32), path=str(tmp_path))


def test_missing_annotation_and_size_mismatch_name_the_file(tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(FIXTURES / "coco_stuff", root)
    (root / "annotations/val2017/000000000139.png").unlink()
    with pytest.raises(DatasetError, match=r"missing file.*000000000139\.png"):
        load_dataset("coco_stuff", "val", (32, 32), path=str(root))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "annotations/val2017/000000000139.png")
    data = load_dataset("coco_stuff", "val", (32, 32), path=str(root))
    with pytest.raises(DatasetError, match=r"000000000139\.png: annotation is 10x10 \(WxH\) but its image is 32x24"):
        data[0]


def test_eight_bit_depth_is_refused(tmp_path):
    root = tmp_path / "d"
    shutil.copytree(FIXTURES / "nyuv2", root)
    Image.fromarray(np.ones((24, 32), np.uint8)).save(root / "val/depth/0003.png")
    with pytest.raises(DatasetError, match=r"0003\.png: expected a 16-bit depth PNG"):
        load_dataset("nyuv2", "val", (32, 32), path=str(root))[0]


def test_unknown_name_suggests_and_bad_split_is_refused():
    with pytest.raises(RegistryError, match="Did you mean 'scenes'"):
        load_dataset("scene", "train", (32, 32))
    with pytest.raises(ValueError, match="split"):
        load_dataset("scenes", "test", (32, 32))


def test_generated_items_are_drawn_once_and_handed_out_as_copies(monkeypatch):
    """A memoised dataset draws an item once for every instance (each cell loads its own), gives the drawn
    values, and hands out copies: a caller that writes into its item does not change the next one's."""
    from bench.data import common
    from bench.data.scenes import Scenes

    monkeypatch.setattr(common, "MEMO", common.ItemMemo(common.MEMO_BYTES))
    draws = []
    original = Scenes.item
    monkeypatch.setattr(Scenes, "item", lambda self, i: draws.append(i) or original(self, i))
    first = Scenes("val", (40, 56), 3, seed=5)[2]
    truth = original(Scenes("val", (40, 56), 3, seed=5), 2)
    first["image"].zero_()
    again = Scenes("val", (40, 56), 3, seed=5)[2]
    assert draws == [2]
    for key in truth:
        assert torch.equal(again[key], truth[key]), key
    Scenes("val", (40, 56), 3, seed=6)[2]  # another seed is another item
    assert draws == [2, 2]


def test_the_item_memo_drops_the_least_recently_used_past_its_bytes():
    from bench.data.common import ItemMemo

    memo, drawn = ItemMemo(limit=3 * 400), []

    def item(k):
        return lambda: drawn.append(k) or {"x": torch.full((100,), float(k))}  # 400 bytes each

    for k in (0, 1, 2, 0, 3):  # 0 is used again before 3 arrives, so 1 is the one dropped
        memo.get((k,), item(k))
    memo.get((0,), item(0))
    memo.get((1,), item(1))
    assert drawn == [0, 1, 2, 3, 1] and memo.size <= 3 * 400
