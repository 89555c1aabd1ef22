"""Datasets read in the formats they are published in: Pascal VOC 2012, Cityscapes, NYU Depth v2's labelled .mat.

Every fixture is written here, in tmp_path, the way the real download is laid out: VOC's palette PNGs
(the pixel values are class indices, the palette VOC's colours), Cityscapes' per-city folders with
label-id PNGs next to the colour and instance files, and NYU's MATLAB v7.3 (HDF5) file with the real
dataset names, axis order and userblock, plus a MATLAB v5 splits.mat of 1-based column vectors.
"""
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bench.data import DatasetError, load_dataset
from bench.data.identity import dataset_identity
from bench.registry import DATASETS

FIXTURES = Path(__file__).parent / "fixtures"


def rgb_pattern(h: int, w: int, seed: int) -> np.ndarray:
    """An (h, w, 3) uint8 image unlike its transpose or flips: each channel a different function of (row, col)."""
    rows, cols = np.mgrid[:h, :w]
    return np.stack([(rows * 5 + seed * 7) % 256, (cols * 3 + seed * 11) % 256,
                     (rows * cols + seed * 13) % 256], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- VOC

def voc_palette() -> list[int]:
    """VOC's colour map (VOCdevkit's labelcolormap / bitget): index i's colour from the bits of i."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_H, VOC_W = 40, 56


def voc_mask(k: int) -> np.ndarray:
    """Background, a person (15) and a dog (12) box, each with VOC's 255 'void' border; k shifts the boxes."""
    mask = np.zeros((VOC_H, VOC_W), np.uint8)
    mask[8 + k:26 + k, 6:28] = 255
    mask[10 + k:24 + k, 8:26] = 15
    mask[4:14, 34 + k:52] = 255
    mask[6:12, 36 + k:50] = 12
    return mask


def voc_image(k: int) -> np.ndarray:
    """A smooth photo-like image (JPEG keeps it within a few levels), different for each k."""
    rows, cols = np.mgrid[:VOC_H, :VOC_W]
    return np.stack([rows * 5 + k * 20, cols * 4, np.full_like(rows, 60 + k * 30)], axis=-1).astype(np.uint8)


def write_palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


VOC_IDS = {"train": ["2007_000032", "2007_000039", "2008_000123"], "val": ["2007_000033", "2009_000001"]}
VOC_AUG = ["2007_000032", "2007_000039", "2008_000123", "2010_000002"]


def write_voc(root: Path, aug: bool = False) -> Path:
    """A VOCdevkit/VOC2012 folder; with ``aug``, SegmentationClassAug (grey PNGs) and train_aug.txt too."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "Annotations"):
        (voc / folder).mkdir(parents=True)
    every = sorted({*VOC_IDS["train"], *VOC_IDS["val"], *VOC_AUG, "2011_000999"})  # 2011_000999 is in no list
    for k, stem in enumerate(every):
        Image.fromarray(voc_image(k)).save(voc / "JPEGImages" / f"{stem}.jpg", quality=95, subsampling=0)
        if stem in VOC_IDS["train"] + VOC_IDS["val"]:
            write_palette_png(voc_mask(k % 3), voc / "SegmentationClass" / f"{stem}.png")
    for split, ids in VOC_IDS.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    if aug:
        (voc / "SegmentationClassAug").mkdir()
        for k, stem in enumerate(VOC_AUG):
            mask = np.full((VOC_H, VOC_W), 7, np.uint8)  # car everywhere, a cat (8) box: unlike SegmentationClass
            mask[:10, :10 + k] = 8
            Image.fromarray(mask, mode="L").save(voc / "SegmentationClassAug" / f"{stem}.png")
        (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(VOC_AUG) + "\n")
    return voc


def test_voc_reads_palette_indices_not_colours_and_keeps_the_void_border(tmp_path):
    voc = write_voc(tmp_path)
    data = load_dataset("voc", "val", (VOC_H, VOC_W), path=str(voc))  # native size: no resampling
    assert [p[0].stem for p in data.pairs] == VOC_IDS["val"]
    assert data.num_classes == len(data.class_names) == 21 and data.class_names[15] == "person"
    for item, stem in zip(data, VOC_IDS["val"]):
        written = np.asarray(Image.open(voc / "SegmentationClass" / f"{stem}.png"))
        assert Image.open(voc / "SegmentationClass" / f"{stem}.png").mode == "P"
        assert np.array_equal(item["label"].numpy(), written)
        assert sorted(item["label"].unique().tolist()) == [0, 12, 15, 255]
    label = data[0]["label"]  # 2007_000033 is the 2nd of the sorted ids: voc_mask(1)
    assert label[15, 15] == 15 and label[8, 40] == 12 and label[0, 0] == 0 and label[9, 7] == 255
    image = data[0]["image"].numpy().transpose(1, 2, 0) * 255  # the JPEG, read back (lossy)
    assert np.abs(image - voc_image(1)).mean() < 2 < 10 < np.abs(image - voc_image(0)).mean()


def test_voc_split_sizes_are_the_lists_and_resizing_keeps_classes(tmp_path):
    voc = write_voc(tmp_path)
    assert len(list((voc / "JPEGImages").iterdir())) == 7
    train = load_dataset("voc", "train", (24, 30), path=str(voc))
    assert len(train) == 3 and len(load_dataset("voc", "val", (24, 30), path=str(voc))) == 2
    assert len(load_dataset("voc", "train", (24, 30), path=str(voc), limit=2)) == 2
    item = train[0]
    assert item["image"].shape == (3, 24, 30) and item["image"].dtype == torch.float32
    assert item["label"].shape == (24, 30) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= {0, 12, 15, 255} and (item["label"] == 15).any()


def test_voc_augmented_list_reads_segmentation_class_aug(tmp_path):
    voc = write_voc(tmp_path, aug=True)
    data = load_dataset("voc", "train", (VOC_H, VOC_W), path=str(voc), image_list="train_aug.txt")
    assert [p[0].stem for p in data.pairs] == VOC_AUG and all(p[1].parent.name == "SegmentationClassAug"
                                                              for p in data.pairs)
    label = data[3]["label"]
    assert label[0, 0] == 8 and label[0, 12] == 8 and label[0, 13] == 7 and label[20, 20] == 7
    assert len(load_dataset("voc", "train", (VOC_H, VOC_W), path=str(voc))) == 3  # no list named: train.txt
    with pytest.raises(DatasetError, match="'train_aug.txt' is a training list"):
        load_dataset("voc", "val", (VOC_H, VOC_W), path=str(voc), image_list="train_aug.txt")
    with pytest.raises(DatasetError, match="no image list 'trainval.txt'.*train_aug.txt"):
        load_dataset("voc", "train", (VOC_H, VOC_W), path=str(voc), image_list="trainval.txt")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)train_aug\.txt' does not exist.*expected.*found\nSegmentation/"):
        load_dataset("voc", "train", (VOC_H, VOC_W), path=str(voc), image_list="train_aug.txt")


def test_voc_without_the_augmented_masks_refuses_the_augmented_list(tmp_path):
    voc = write_voc(tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)lacks SegmentationClassAug; expected.*found\n.*JPEGImages/"):
        load_dataset("voc", "train", (VOC_H, VOC_W), path=str(voc), image_list="train_aug.txt")


def test_voc_missing_listed_files_are_named(tmp_path):
    voc = write_voc(tmp_path)
    listed = voc / "ImageSets" / "Segmentation" / "val.txt"
    listed.write_text(listed.read_text() + "2012_004242\n")
    with pytest.raises(DatasetError, match=r"voc: 1 missing file.*JPEGImages/2012_004242"):
        load_dataset("voc", "val", (32, 32), path=str(voc))
    Image.fromarray(voc_image(0)).save(voc / "JPEGImages" / "2012_004242.jpg")
    with pytest.raises(DatasetError, match=r"voc: 1 missing file.*SegmentationClass/2012_004242\.png"):
        load_dataset("voc", "val", (32, 32), path=str(voc))


def test_voc_wrong_layout_and_colour_masks_are_refused(tmp_path):
    write_voc(tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)lacks JPEGImages, SegmentationClass, ImageSets/Segmentation; "
                                           r"expected\nPATH/   \(VOCdevkit/VOC2012\).*found\nVOC2012/"):
        load_dataset("voc", "val", (32, 32), path=str(tmp_path / "VOCdevkit"))  # one folder too high
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    mask = voc / "SegmentationClass" / "2007_000033.png"
    Image.open(mask).convert("L").save(mask)  # grey levels of the colours, not class indices
    with pytest.raises(DatasetError, match=r"2007_000033\.png: value \d+ is no VOC class"):
        load_dataset("voc", "val", (32, 32), path=str(voc))[0]


# ---------------------------------------------------------------------------------------- Cityscapes

# cityscapesScripts labels.py, trainId of label ids 0-33 in order (255 = ignoreInEval), written out in full.
CITYSCAPES_TRAIN_IDS = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8,
                        9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]
CS_H, CS_W = 34, 68
CITYSCAPES_FILES = {"train": {"aachen": ["aachen_000000_000019", "aachen_000001_000019"],
                              "bochum": ["bochum_000000_000313"]},
                    "val": {"frankfurt": ["frankfurt_000000_000294"]}}


def cityscapes_ids(k: int) -> np.ndarray:
    """Every label id 0-33 as a 2-px column stripe, rolled by k columns."""
    return np.roll(np.tile(np.repeat(np.arange(34, dtype=np.uint8), 2), (CS_H, 1)), k, axis=1)


def write_cityscapes(root: Path) -> Path:
    k = 0
    for split, cities in CITYSCAPES_FILES.items():
        for city, stems in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for stem in stems:
                Image.fromarray(rgb_pattern(CS_H, CS_W, k)).save(root / "leftImg8bit" / split / city /
                                                                 f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                Image.fromarray(cityscapes_ids(k), mode="L").save(gt / f"{stem}_gtFine_labelIds.png")
                # the other files of the published gtFine, which must not be taken for the label ids
                Image.fromarray(np.full((CS_H, CS_W), 26000 + k, np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
                Image.fromarray(rgb_pattern(CS_H, CS_W, 99)).save(gt / f"{stem}_gtFine_color.png")
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
                k += 1
    return root


def test_cityscapes_maps_label_ids_to_train_ids_and_others_to_ignore(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    data = load_dataset("cityscapes", "train", (CS_H, CS_W), path=str(root))  # native size: no resampling
    stems = [s for city in ("aachen", "bochum") for s in CITYSCAPES_FILES["train"][city]]
    assert [p[0].name for p in data.pairs] == [f"{s}_leftImg8bit.png" for s in stems]
    assert [p[1].name for p in data.pairs] == [f"{s}_gtFine_labelIds.png" for s in stems]
    assert data.num_classes == len(data.class_names) == 19
    for k, item in enumerate(data):
        assert np.array_equal(item["label"].numpy(), np.asarray(CITYSCAPES_TRAIN_IDS)[cityscapes_ids(k)])
        assert np.array_equal(item["image"].numpy().transpose(1, 2, 0),
                              rgb_pattern(CS_H, CS_W, k).astype(np.float32) / 255)
    label = data[0]["label"]
    assert label[0, 26 * 2] == 13 and data.class_names[13] == "car"  # id 26 car -> train id 13
    assert label[0, 7 * 2] == 0 and data.class_names[0] == "road"
    assert label[0, 33 * 2] == 18 and data.class_names[18] == "bicycle"
    assert label[0, 0] == label[0, 9 * 2] == label[0, 30 * 2] == 255  # unlabeled, parking, trailer: ignored
    assert sorted(label.unique().tolist()) == list(range(19)) + [255]


def test_cityscapes_split_sizes_and_resizing(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    assert len(load_dataset("cityscapes", "train", (16, 24), path=str(root))) == 3
    val = load_dataset("cityscapes", "val", (16, 24), path=str(root))
    assert len(val) == 1 and val.pairs[0][0].parent.name == "frankfurt"
    item = val[0]
    assert item["image"].shape == (3, 16, 24) and item["label"].shape == (16, 24)
    assert item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= set(CITYSCAPES_TRAIN_IDS) and (item["label"] < 19).any()


def test_cityscapes_wrong_layout_missing_label_and_flat_folders_are_refused(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    with pytest.raises(DatasetError, match=r"(?s)lacks leftImg8bit/val, gtFine/val; expected\n.*"
                                           r"leftImg8bit/\{train,val\}/<city>/.*found\ntrain/"):
        load_dataset("cityscapes", "val", (32, 32), path=str(root / "leftImg8bit"))
    (root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"cityscapes: 1 missing file.*bochum_000000_000313_gtFine_labelIds\.png"):
        load_dataset("cityscapes", "train", (32, 32), path=str(root))
    city = root / "leftImg8bit" / "val" / "frankfurt"
    for image in city.iterdir():
        image.rename(city.parent / image.name)  # images straight under val/, no city folder
    city.rmdir()
    with pytest.raises(DatasetError, match=r"(?s)no \*_leftImg8bit\.png files in city folders.*expected.*found"):
        load_dataset("cityscapes", "val", (32, 32), path=str(root))


# ------------------------------------------------------------------------------------- NYUv2 (.mat)

NYU_N, NYU_H, NYU_W = 5, 48, 64
NYU_TRAIN, NYU_TEST = [1, 2, 4], [3, 5]  # 1-based, as in splits.mat


def nyu_truth() -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N, H, W) float32 depths in metres, as MATLAB shows them (rows = y)."""
    images = np.stack([rgb_pattern(NYU_H, NYU_W, k) for k in range(NYU_N)])
    rows, cols = np.mgrid[:NYU_H, :NYU_W]
    depths = np.stack([1 + 0.05 * rows + 0.01 * cols + k for k in range(NYU_N)]).astype(np.float32)
    depths[:, :6, :10] = 0  # no measurement
    depths[:, 30, 50] = np.nan
    depths[:, 31, 51] = np.inf
    return images, depths


def matlab_column(numbers: list[int]) -> np.ndarray:
    """An N x 1 column of MATLAB doubles, the shape of splits.mat's index arrays (795 x 1 and 654 x 1)."""
    return np.asarray(numbers, np.float64).reshape(-1, 1)


def write_nyu_mat(root: Path) -> Path:
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 writes it, and splits.mat as a MATLAB v5 file.

    MATLAB arrays are column-major and a v7.3 file stores them as HDF5 with the dimensions reversed: the
    real file's images (480, 640, 3, 1449) and depths (480, 640, 1449) appear in h5py as (1449, 3, 640, 480)
    and (1449, 640, 480). The truth is laid out the MATLAB way first, then its axes are reversed.
    """
    root.mkdir(parents=True, exist_ok=True)
    images, depths = nyu_truth()
    matlab_images, matlab_depths = images.transpose(1, 2, 3, 0), depths.transpose(1, 2, 0)  # (H,W,3,N), (H,W,N)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        for name, array, cls in (("images", matlab_images, "uint8"), ("depths", matlab_depths, "single"),
                                 ("rawDepths", np.zeros_like(matlab_depths), "single"),  # not what we read
                                 ("labels", np.ones(matlab_depths.shape, np.uint16), "uint16")):
            dataset = f.create_dataset(name, data=array.transpose(*reversed(range(array.ndim))))
            dataset.attrs["MATLAB_class"] = np.bytes_(cls)
        assert f["images"].shape == (NYU_N, 3, NYU_W, NYU_H)  # the real file's (1449, 3, 640, 480) pattern
    with open(root / "nyu_depth_v2_labeled.mat", "r+b") as f:  # MATLAB's 128-byte header in the userblock
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2024 HDF5 schema 1.00 .".ljust(116)
                + bytes(8) + b"\x00\x02IM")
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": matlab_column(NYU_TRAIN), "testNdxs": matlab_column(NYU_TEST)})
    return root


def test_nyu_mat_items_are_the_written_images_and_depths_upright(tmp_path):
    root = write_nyu_mat(tmp_path / "nyu")
    assert scipy.io.loadmat(root / "splits.mat")["testNdxs"].shape == (2, 1)
    images, depths = nyu_truth()
    for split, numbers in (("train", NYU_TRAIN), ("val", NYU_TEST)):
        data = load_dataset("nyuv2", split, (NYU_H, NYU_W), path=str(root))  # native size: no resampling
        assert type(data).__name__ == "NyuMat" and len(data) == len(numbers)
        for item, number in zip(data, numbers):
            k = number - 1
            assert np.array_equal(item["image"].numpy().transpose(1, 2, 0), images[k].astype(np.float32) / 255)
            valid = np.isfinite(depths[k]) & (depths[k] > 0)
            assert np.array_equal(item["valid"].numpy(), valid)
            assert np.array_equal(item["depth"].numpy(), np.where(valid, depths[k], 0))
    item = load_dataset("nyuv2", "val", (NYU_H, NYU_W), path=str(root))[1]  # image 5 (k = 4)
    assert item["depth"][10, 20] == pytest.approx(1 + 0.5 + 0.2 + 4)  # row 10, column 20
    assert not item["valid"][0, 0] and not item["valid"][30, 50] and item["depth"][30, 50] == 0
    assert not item["valid"][31, 51] and item["depth"][31, 51] == 0
    assert item["valid"][6, 0] and item["valid"][0, 10]


def test_nyu_mat_resizes_and_opens_the_file_lazily(tmp_path):
    root = write_nyu_mat(tmp_path / "nyu")
    data = load_dataset("nyuv2", "train", (24, 40), path=str(root), limit=2)
    assert len(data) == 2 and data._h5 is None  # nothing read yet
    item = data[1]
    assert item["image"].shape == (3, 24, 40) and item["image"].dtype == torch.float32
    assert item["depth"].shape == item["valid"].shape == (24, 40) and item["valid"].dtype == torch.bool
    _, depths = nyu_truth()
    assert np.isin(item["depth"][item["valid"]].numpy(), depths[1]).all() and (~item["valid"]).any()
    assert data._h5 is not None
    copy = pickle.loads(pickle.dumps(data))  # as a spawned data-loader worker gets it
    assert copy._h5 is None and torch.equal(copy[1]["depth"], item["depth"])


def test_nyu_folder_layout_still_loads_as_before(tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(FIXTURES / "nyuv2", root)
    data = load_dataset("nyuv2", "val", (24, 32), path=str(root))
    assert type(data).__name__ == "DepthFolder" and len(data) == 1
    write_nyu_mat(root)  # both forms present: the folder wins, as before
    assert type(load_dataset("nyuv2", "val", (24, 32), path=str(root))).__name__ == "DepthFolder"


def test_nyu_neither_layout_shows_both_and_what_was_found(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)lacks train/rgb, train/depth \(a depth folder\) and splits\.mat "
                                           r"\(the published \.mat\); expected\n.*\{train,val\}/rgb.*"
                                           r"\nor PATH/.*nyu_depth_v2_labeled\.mat.*splits\.mat.*"
                                           r"found\nnyu_depth_v2_labeled\.mat\nrgb/"):
        load_dataset("nyuv2", "train", (32, 32), path=str(tmp_path))
    with pytest.raises(DatasetError, match=r"(?s)'.*nope' does not exist; expected\n.*splits\.mat"):
        load_dataset("nyuv2", "train", (32, 32), path=str(tmp_path / "nope"))


def test_nyu_mat_bad_files_are_refused(tmp_path):
    root = write_nyu_mat(tmp_path / "nyu")
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0], [6.0]]), "testNdxs": np.array([[3.0]])})
    with pytest.raises(DatasetError, match=r"trainNdxs names image 6 but .* holds 5 images"):
        load_dataset("nyuv2", "train", (32, 32), path=str(root))
    scipy.io.savemat(root / "splits.mat", {"train": np.array([[1.0]])})
    with pytest.raises(DatasetError, match=r"no 'testNdxs' \(found train\)"):
        load_dataset("nyuv2", "val", (32, 32), path=str(root))
    write_nyu_mat(root)
    scipy.io.savemat(root / "nyu_depth_v2_labeled.mat", {"images": np.zeros((4, 4, 3, 5), np.uint8)})  # a v5 file
    with pytest.raises(DatasetError, match=r"cannot open it as a MATLAB v7\.3 \(HDF5\) file"):
        load_dataset("nyuv2", "val", (32, 32), path=str(root))
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.zeros((5, 3, 64, 48), np.uint8)
        f["depths"] = np.zeros((5, 48, 64), np.float32)  # H and W swapped against the images
    with pytest.raises(DatasetError, match=r"do not have the published shapes"):
        load_dataset("nyuv2", "val", (32, 32), path=str(root))


# ------------------------------------------------------------------------------------- registration

def test_field_datasets_are_registered_folder_datasets_with_an_identity(tmp_path):
    for name, kind, classes in (("voc", "seg", 21), ("cityscapes", "seg", 19), ("ade20k", "seg", 150),
                                ("nyuv2", "depth", None)):
        spec = DATASETS.get(name)
        assert (spec.kind, spec.embedded) == (kind, False)
        if classes:
            assert spec.dataset_class().num_classes == classes
    voc = write_voc(tmp_path)
    identity = dataset_identity("voc", str(voc))
    assert identity["label"].startswith("voc@VOC2012-") and identity["files"] == 7 + 5 + 2


def test_the_jafar_plan_lists_the_cells_of_the_folders_given_and_reports_the_others(tmp_path):
    """The jafar profile's dry run on VOC and Cityscapes fixtures: their probe_seg cells are planned (each its
    own column group), COCO-Stuff and ADE20k, not given, are problems that hide no other dataset's cells."""
    from bench.running.dry_run import plan_tasks
    from bench.running.session import build_context

    voc, city = write_voc(tmp_path / "voc"), write_cityscapes(tmp_path / "city")
    context = build_context("jafar", {"voc": str(voc), "cityscapes": str(city)}, "cpu", progress=False)
    planned = plan_tasks(["bilinear", "featup_jbu"], ["probe_seg"], "dinov2", context, None)
    cells = [(c.method, c.dataset.partition("@")[0], r["primary_data"]) for c, r in planned.cells]
    assert sorted(cells) == [(m, d, False) for m in ("bilinear", "featup_jbu") for d in ("cityscapes", "voc")]
    assert sorted(planned.missing) == ["ade20k", "coco_stuff"]
    assert "--data coco_stuff=PATH" in planned.missing["coco_stuff"]
    trained = next(r for c, r in planned.cells if c.method == "featup_jbu")
    assert trained["train_data"] == {"name": "coco_stuff", "label": "missing"}
    assert trained["settings"]["optimizer"] == "adamw" and tuple(trained["profile"]["image_size"]) == (448, 448)


def test_data_of_one_kind_twice_or_of_a_kind_no_task_reads_is_refused():
    from bench.running.session import build_context

    with pytest.raises(ValueError, match="--data voc and --data cityscapes both take the place of .* seg data"):
        build_context("default", {"voc": "/a", "cityscapes": "/b"}, "cpu")
    with pytest.raises(ValueError, match="--data photos: no task reads images data"):
        build_context("paper", {"photos": None}, "cpu")  # the default profile trains on photos; paper does not
    assert build_context("default", {"voc": "/a"}, "cpu").profile.data["seg"] == "voc"
    trained_on = build_context("default", {"photos": "/p"}, "cpu")
    assert trained_on.profile.train_data == "photos" and trained_on.data_paths == {"photos": "/p"}


def test_a_dry_run_without_the_training_folder_plans_a_method_that_has_shipped_weights(tmp_path):
    """Shipped weights (the default backbone's) are matched on the training data's identity: without the training
    folder the dry run plans the cell with no weights recorded and reports the folder, instead of raising."""
    from bench.running.dry_run import plan_tasks
    from bench.running.session import build_context

    context = build_context("jafar", {"voc": str(write_voc(tmp_path / "voc"))}, "cpu", progress=False)
    planned = plan_tasks(["featup_jbu"], ["probe_seg"], "efficientnet_lite0_s16", context, None)
    (cell, recipe), = planned.cells
    assert recipe["train_data"] == {"name": "coco_stuff", "label": "missing"} and "weights" not in recipe
    assert "coco_stuff" in planned.missing


def test_the_jafar_dry_run_on_fixtures_of_every_dataset_has_no_problem_but_the_weights(tmp_path):
    """Folders for all five of the profile's probe datasets: every probe cell is planned, and the only problem
    is the DINOv2 weights, which are not here (the plan is timed with an untrained stand-in). In a process of its
    own: timing a ViT at 448² here would leave heap state that the in-process memory tests then measure."""
    import subprocess
    import sys

    fixtures = Path(__file__).parent / "fixtures"
    ade = tmp_path / "ade"
    for split in ("training", "validation"):
        for k in range(2):
            for folder, array in (("images", voc_image(k)), ("annotations", voc_mask(k) % 151)):
                (ade / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(ade / folder / split / f"ADE_{split}_{k:08d}.{'jpg' if folder == 'images' else 'png'}")
    data = {"coco_stuff": fixtures / "coco_stuff", "voc": write_voc(tmp_path / "voc"),
            "cityscapes": write_cityscapes(tmp_path / "city"), "ade20k": ade, "nyuv2": fixtures / "nyuv2"}
    args = ["--no-progress", "run", "--profile", "jafar", "--dry-run", "-m", "bilinear", "-t", "probe_seg,probe_depth",
            "--out", str(tmp_path / "plan"), *[a for name, path in data.items() for a in ("--data", f"{name}={path}")]]
    proc = subprocess.run([sys.executable, "run_bench.py", *args], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})  # no cached DINOv2
    assert proc.returncode == 1, proc.stderr  # the missing weights make the plan's status non-zero
    text = proc.stdout
    problems = [line for line in text.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and "backbone weights missing" in problems[0], problems
    cells = [line for line in text.splitlines() if line.startswith("| bilinear")]
    assert len(cells) == 5 and all("to run" in line for line in cells)  # 4 segmentation datasets and NYUv2
    assert all(name in text for name in data) and "optimizer': 'adamw'" in text


def test_the_jafar_profile_runs_the_tasks_of_jafars_table_and_the_others_every_task():
    from bench.core.profiles import PROFILES
    from bench.registry import TASKS
    from bench.running.session import default_tasks

    assert default_tasks(PROFILES.get("jafar")) == ["probe_seg", "probe_depth", "cam"]
    assert default_tasks(PROFILES.get("default")) == TASKS.names() and "e2e_seg" in TASKS.names()
    assert PROFILES.get("jafar").recipe() == replace(PROFILES.get("jafar"), tasks=None).recipe()  # not in the recipe
