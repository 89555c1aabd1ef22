"""NYUv2 depth in either form: a depth folder ({train,val}/rgb + depth PNGs) or the labelled set as published.

The published labelled set is ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, which is HDF5: read with
h5py) with the official 795/654 train/test split in ``splits.mat`` (an old MATLAB v5 file: read with
scipy). ``depths`` is the in-painted depth in metres; a pixel that is 0 or not finite is invalid.
The .mat is opened once per process and each item reads only its own image and depth map, so
opening the dataset never loads the 1449 images.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bench.data.common import DatasetError, ItemDataset, image_tensor, resize_image, resize_nearest
from bench.data.folders import DepthFolder, folder_tree

MAT, SPLITS_MAT = "nyu_depth_v2_labeled.mat", "splits.mat"
SPLIT_KEYS = {"train": "trainNdxs", "val": "testNdxs"}
"""Our split -> the key of its (1-based) image numbers in splits.mat; val is the official test set."""
MAT_LAYOUT = ("PATH/   (NYU Depth v2 as published)\n"
              f"    {MAT}   (the labelled set, MATLAB v7.3: images, depths in metres)\n"
              f"    {SPLITS_MAT}   (trainNdxs, testNdxs: the official 795/654 split; val = test)")


def official_split(path: Path, split: str) -> list[int]:
    """The 0-based image indices of ``split`` from splits.mat's 1-based ``trainNdxs`` / ``testNdxs``."""
    from scipy.io import loadmat

    key = SPLIT_KEYS[split]
    try:
        table = loadmat(str(path))
    except (ValueError, NotImplementedError, OSError) as exc:  # not a MAT file, or a v7.3 one scipy cannot read
        raise DatasetError(f"{path}: cannot read it as a MATLAB v5 .mat file ({exc}); expected NYU's splits.mat "
                           f"with trainNdxs and testNdxs") from None
    if key not in table:
        found = ", ".join(k for k in table if not k.startswith("__")) or "none"
        raise DatasetError(f"{path}: no {key!r} (found {found}); expected NYU's splits.mat with trainNdxs and testNdxs")
    numbers = np.asarray(table[key], dtype=np.float64).ravel()
    if numbers.size == 0 or (numbers != np.round(numbers)).any() or numbers.min() < 1:
        raise DatasetError(f"{path}: {key} must hold 1-based image numbers (integers >= 1)")
    return [int(n) - 1 for n in numbers]


class NyuMat(ItemDataset):
    """NYU Depth v2's labelled set read from ``nyu_depth_v2_labeled.mat``, split by ``splits.mat``."""

    kind = "depth"
    layout = MAT_LAYOUT

    def __init__(self, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> None:
        root = Path(path)
        self.file = root / MAT
        indices = official_split(root / SPLITS_MAT, split)
        count = self._check_file()
        outside = [i + 1 for i in indices if i >= count]
        if outside:
            raise DatasetError(f"{root / SPLITS_MAT}: {SPLIT_KEYS[split]} names image {outside[0]} but {self.file} "
                               f"holds {count} images")
        self.indices = indices[:limit]
        super().__init__("nyuv2", split, image_size, len(self.indices), 0)
        self._h5, self._pid = None, None

    def _check_file(self) -> int:
        """The number of images in the .mat, after checking it holds ``images`` and ``depths`` as published."""
        import h5py

        try:
            h5 = h5py.File(self.file, "r")
        except OSError as exc:
            raise DatasetError(f"{self.file}: cannot open it as a MATLAB v7.3 (HDF5) file ({exc}); expected "
                               f"NYU's nyu_depth_v2_labeled.mat") from None
        with h5:
            missing = [k for k in ("images", "depths") if k not in h5]
            if missing:
                raise DatasetError(f"{self.file}: no {', '.join(missing)} (found {', '.join(sorted(h5)) or 'none'}); "
                                   f"expected NYU's nyu_depth_v2_labeled.mat")
            images, depths = h5["images"].shape, h5["depths"].shape
            # h5py shows MATLAB's (480, 640, 3, N) images and (480, 640, N) depths with the axes reversed
            if len(images) != 4 or images[1] != 3 or depths != (images[0], *images[2:]):
                raise DatasetError(f"{self.file}: images {images} and depths {depths} do not have the published "
                                   f"shapes (N, 3, W, H) and (N, W, H), e.g. (1449, 3, 640, 480) and (1449, 640, 480)")
            return images[0]

    def _open(self):
        """The .mat, opened once per process (a forked data-loader worker opens its own)."""
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5, self._pid = h5py.File(self.file, "r"), os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}  # an open HDF5 file does not pickle

    def item(self, index: int) -> dict[str, torch.Tensor]:
        h5, i = self._open(), self.indices[index]
        # MATLAB stores arrays column-major and HDF5 row-major, so h5py reads a MATLAB (H, W, C, N) array as
        # (N, C, W, H): reversing the axes of one image gives back MATLAB's (H, W, C) = (480, 640, 3), rows
        # top to bottom; a plain reshape, or only moving the channel axis, would give a transposed image. The
        # published converters of this file read it the same way (image.T, depth.T on h5py's arrays).
        rgb = h5["images"][i].transpose(2, 1, 0)
        metres = resize_nearest(np.asarray(h5["depths"][i], dtype=np.float32).T, self.image_size)
        valid = np.isfinite(metres) & (metres > 0)
        return {"image": image_tensor(resize_image(rgb, self.image_size)),
                "depth": torch.from_numpy(np.where(valid, metres, 0).astype(np.float32)),
                "valid": torch.from_numpy(valid)}


class Nyuv2:
    """The ``nyuv2`` loader: a depth folder (``DepthFolder``) where the split's folders exist, otherwise
    the published .mat pair (``NyuMat``); a folder with neither is refused showing both layouts.

    The folder form is checked first, so every folder that loaded before loads as before.
    """

    kind = "depth"
    layout = DepthFolder.layout.replace("PATH/", "PATH/   (a depth folder)", 1) + f"\nor {MAT_LAYOUT}"

    def __new__(cls, path: str, split: str, image_size: tuple[int, int], limit: int | None) -> ItemDataset:
        root = Path(path)
        folders = [f for f in (f"{split}/rgb", f"{split}/depth") if not (root / f).is_dir()]
        if not folders:
            return DepthFolder(path, split, image_size, limit)
        files = [f for f in (MAT, SPLITS_MAT) if not (root / f).is_file()]
        if not files:
            return NyuMat(path, split, image_size, limit)
        if not root.is_dir():
            raise DatasetError(f"nyuv2 folder {str(root)!r} does not exist; expected\n{cls.layout}")
        raise DatasetError(f"nyuv2 folder {str(root)!r} lacks {', '.join(folders)} (a depth folder) and "
                           f"{', '.join(files)} (the published .mat); expected\n{cls.layout}\nfound\n{folder_tree(root)}")
