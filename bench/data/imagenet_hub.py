"""ImageNet from the Hugging Face hub (``data fetch imagenet --source hf``), written as ``val/<wnid>/<file>`` for
``ImageNetFolder``.

ILSVRC/imagenet-1k is gated: its terms are accepted on the hub, and ``datasets`` sends the token of
``huggingface-cli login`` or HF_TOKEN. The split is streamed, so only its own files are downloaded and nothing is
cached twice. Each image is written as the hub stores it (the published JPEG bytes, not re-encoded). Its label is
the class index in the order the hub's ClassLabel and timm share (the sorted WordNet ids), which names its folder.
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from bench.data.common import FetchError
from bench.data.folders import IMAGE_SUFFIXES, imagenet_wnids
from bench.data.sources import HubSource


def write_split(hub: HubSource, build: Path, progress: bool) -> int:
    """Stream ``hub``'s split into ``build/val/<wnid>/``; the number of images written."""
    import datasets

    try:
        rows = datasets.load_dataset(hub.path, data_files=hub.data_files, split=hub.split, streaming=True)
        rows = rows.cast_column("image", datasets.Image(decode=False))
    except (OSError, ValueError) as exc:  # gated without a token, offline, no such split: each its own type
        raise FetchError(f"cannot open {hub.path} ({hub.split}) on the Hugging Face hub: {exc}. Accept its terms at "
                         f"{hub.page}, log in with `huggingface-cli login` (or set HF_TOKEN), and leave "
                         f"HF_HUB_OFFLINE unset") from None
    wnids = imagenet_wnids()
    count = 0
    try:
        for count, row in enumerate(tqdm(rows, desc=f"{hub.path} {hub.split}", unit="img", disable=not progress), 1):
            label, image = row["label"], row["image"]
            if not 0 <= label < len(wnids):
                raise FetchError(f"{hub.path}: label {label} is no ImageNet-1k class index (0-{len(wnids) - 1})")
            name = Path(image.get("path") or f"{count:08d}.JPEG").name
            name += "" if Path(name).suffix.lower() in IMAGE_SUFFIXES else ".JPEG"
            folder = build / "val" / wnids[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(image["bytes"])
    except (OSError, ValueError) as exc:
        raise FetchError(f"{hub.path}: the stream broke off after {count} images ({exc}); run the command again "
                         f"(it starts over)") from None
    if not count:
        raise FetchError(f"{hub.path} ({hub.split}) holds no images")
    return count
