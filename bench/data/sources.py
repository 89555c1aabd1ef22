"""Where each folder dataset comes from: its official page, the files to download, their sizes and checksums.

``data list`` and ``data fetch`` (bench.data.fetch) read this table and nothing else. A checksum is stored only
where the source named beside it (``Download.checksum_from``) publishes it; where none is published it is None,
and ``data fetch`` refuses the file unless the user gives a sum (--md5) or accepts it unchecked (--unverified).
Sizes are the byte counts the servers report where known, else the size the official page states (None: not
stated anywhere we could check).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.profiles import PROFILES
from bench.data.root import found
from bench.registry import DATASETS


@dataclass(frozen=True)
class Download:
    file: str
    """The published file name; its suffix says how it is unpacked (.tar, .tar.gz or .tgz, .zip; else a plain file)."""
    url: str
    size: int | None
    """Bytes (None: no size is published)."""
    checksum: str | None = None
    """"md5:<hex>", "sha1:<hex>" or "sha256:<hex>"; None where no source publishes one."""
    checksum_from: str = ""
    place: tuple[tuple[str, str], ...] = ()
    """(path in the archive, path in the dataset folder) pairs: what is kept of the archive and where it goes (""
    is the archive's whole content, "." the dataset folder itself). Empty for a plain file, which keeps its name."""
    ranged: bool = False
    """Read only the ``place`` members of this zip with HTTP range requests, instead of downloading all of it."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset, read with ``datasets.load_dataset(path, data_files=..., split=..., streaming=True)``."""

    path: str
    split: str
    page: str
    data_files: dict[str, str] | None = None


@dataclass(frozen=True)
class Source:
    name: str
    """What ``data fetch`` is given."""
    dataset: str
    """The registered dataset its files make up (or, with ``adds``, add to)."""
    page: str
    downloads: tuple[Download, ...]
    login: str = ""
    """Where to register and what to download, for a dataset behind a login; ``data fetch`` without --url stops
    with these steps."""
    adds: tuple[str, ...] = ()
    """An add-on to the dataset's existing folder: the paths it creates there, put in place in this order."""
    finish: str = ""
    """"module:function" run as ``function(build, folder, progress)`` on the unpacked files before they are put in
    place (``folder``: the dataset's folder, which an add-on reads)."""
    splits: tuple[str, ...] = ("train", "val")
    """The splits the loader must open before the unpacked folder is put in place."""
    hub: HubSource | None = None
    """The dataset on the Hugging Face hub (``data fetch NAME --source hf``)."""
    note: str = ""

    @property
    def size(self) -> int | None:
        """Bytes to download (a ranged archive's few list files not counted); None when a size is unknown."""
        sizes = [d.size for d in self.downloads if not d.ranged]
        return None if None in sizes else sum(sizes)


COCO_FROM = "COCO download scripts, e.g. Intel Neural Compressor's maskrcnn download_dataset.sh; COCO itself " \
            "publishes none"
COCO_LISTS = ("curated/train2017/Coco164kFull_Stuff_Coarse.txt", "curated/train2017/Coco164kFull_Stuff_Coarse_7.txt",
              "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt")
FEATUP_COCOSTUFF = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/cocostuff.zip"
"""The authors' prepared COCO-Stuff folder (STEGO's src/download_datasets.py; FeatUp's COCO loader reads the same
``cocostuff/{images,annotations,curated}`` tree). FeatUp's README links no dataset archive; its curated lists ship
only in this zip."""
IMAGENET_FROM = "torchvision.datasets.ImageNet (ARCHIVE_META)"

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("voc", "voc", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/", (
        Download("VOCtrainval_11-May-2012.tar",
                 "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", 1_999_639_040,
                 "md5:6cd6e144f989b92b3379bac3b3de84fd", "torchvision.datasets.VOCSegmentation (2012)",
                 place=(("VOCdevkit/VOC2012", "."),)),),
        note="the SBD-augmented training list: data fetch sbd"),
    Source("sbd", "voc", "http://www.cs.berkeley.edu/~bharath2/codes/SBD/download.html", (
        Download("benchmark.tgz",
                 "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                 None, "md5:82b4d87ceb2ed10f6038a1cba92111cb", "torchvision.datasets.SBDataset",
                 place=(("benchmark_RELEASE/dataset", "sbd"),)),),
        adds=("SegmentationClassAug", "ImageSets/Segmentation/train_aug.txt"), finish="bench.data.sbd:augment_voc",
        splits=(), note="adds the SBD-augmented training set (train_aug.txt, 10,582 images) to voc"),
    Source("ade20k", "ade20k", "http://sceneparsing.csail.mit.edu/", (
        Download("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                 967_382_037, "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", "GluonCV's scripts/datasets/ade20k.py",
                 place=(("ADEChallengeData2016", "."),)),)),
    Source("coco_stuff", "coco_stuff", "https://github.com/nightrome/cocostuff", (
        Download("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", 19_336_861_798,
                 "md5:cced6f7f71b7629ddf16f17bbcfab6b2", COCO_FROM, place=(("train2017", "images/train2017"),)),
        Download("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", 815_585_330,
                 "md5:442b8da7639aecaf257c1dceb8ba8c80", COCO_FROM, place=(("val2017", "images/val2017"),)),
        Download("stuffthingmaps_trainval2017.zip",
                 "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                 659_000_000, place=(("train2017", "annotations/train2017"), ("val2017", "annotations/val2017"))),
        Download("cocostuff.zip", FEATUP_COCOSTUFF, None, place=tuple((p, p) for p in COCO_LISTS), ranged=True)),
        note="FeatUp's curated lists are read from the authors' cocostuff.zip (STEGO's download_datasets.py), "
             "only the list files, by HTTP range requests"),
    Source("nyuv2", "nyuv2", "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html", (
        Download("nyu_depth_v2_labeled.mat",
                 "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat", 2_972_037_809),
        Download("splits.mat", "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat", 2_626))),
    Source("cityscapes", "cityscapes", "https://www.cityscapes-dataset.com/downloads/", (
        Download("gtFine_trainvaltest.zip", "https://www.cityscapes-dataset.com/file-handling/?packageID=1",
                 241_000_000, place=(("gtFine", "gtFine"),)),
        Download("leftImg8bit_trainvaltest.zip", "https://www.cityscapes-dataset.com/file-handling/?packageID=3",
                 11_000_000_000, place=(("leftImg8bit", "leftImg8bit"),))),
        login="Cityscapes is behind a login. Register at https://www.cityscapes-dataset.com/register/ (an account "
              "for research use, approved by hand), then download gtFine_trainvaltest.zip (241 MB, packageID=1) and "
              "leftImg8bit_trainvaltest.zip (11 GB, packageID=3) from https://www.cityscapes-dataset.com/downloads/ "
              "in a browser, or with cityscapesScripts' `csDownload gtFine_trainvaltest.zip "
              "leftImg8bit_trainvaltest.zip` (pip install cityscapesscripts)."),
    Source("imagenet", "imagenet", "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php", (
        Download("ILSVRC2012_img_val.tar", "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
                 6_300_000_000, "md5:29b22e2961454d5413ddabcf34fc5622", IMAGENET_FROM, place=(("", "val"),)),
        Download("ILSVRC2012_devkit_t12.tar.gz", "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_devkit_t12.tar.gz",
                 2_500_000, "md5:fa75699e90414af021442c21a62c3abf", IMAGENET_FROM,
                 place=(("ILSVRC2012_devkit_t12/data/meta.mat", "meta.mat"),
                        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                         "ILSVRC2012_validation_ground_truth.txt")))),
        login="ImageNet is behind a login. Register at https://image-net.org/signup.php and accept the terms of "
              "access, then download ILSVRC2012_img_val.tar (6.3 GB) and ILSVRC2012_devkit_t12.tar.gz (2.5 MB) from "
              "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php.",
        splits=("val",), hub=HubSource("ILSVRC/imagenet-1k", "validation",
                                       "https://huggingface.co/datasets/ILSVRC/imagenet-1k")),
)}


def source(name: str) -> Source:
    """The source ``data fetch`` knows by ``name``; a clear error for an embedded or unknown dataset."""
    if name in SOURCES:
        return SOURCES[name]
    if name in DATASETS.names() and DATASETS.get(name).embedded:
        raise ValueError(f"dataset {name!r} is embedded: it ships with the installed packages, nothing to fetch")
    known = ", ".join(SOURCES)
    raise ValueError(f"no known source for {name!r}; data fetch knows {known}. A dataset of your own needs "
                     f"--data {name}=PATH")


def human_size(size: int | None) -> str:
    if size is None:
        return "size not published"
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def catalogue(root: Path) -> pd.DataFrame:
    """``data list``: one row per folder dataset the registered profiles name (as data, extra data or training
    data), with the profiles, the official page, the download size, whether ``<root>/NAME`` is here, and the --data
    argument that reads it; add-ons (sbd) below the dataset they add to."""
    users: dict[str, list[str]] = {}
    for profile in map(PROFILES.get, PROFILES.names()):
        for name in dict.fromkeys([*profile.data.values(), *profile.extra_data, profile.train_data]):
            users.setdefault(name, []).append(profile.name)
    rows, root = [], root.resolve()
    for name, profiles in users.items():
        if DATASETS.get(name).embedded:
            continue
        fetched = [s for s in SOURCES.values() if s.dataset == name]
        for src in fetched or [None]:
            folder = found(name, root)
            here = folder is not None and all((folder / p).exists() for p in (src.adds if src else ()))
            size = "" if src is None else human_size(src.size) + (" (login)" if src.login else "")
            rows.append({"dataset": src.name if src else name, "profiles": ", ".join(profiles), "size": size,
                         "here": "yes" if here else "no", "use": f"--data {name}={root / name}",
                         "source": src.page if src else "no known source: pass --data"})
    return pd.DataFrame(rows)
