"""A dataset from a plugin file (examples/my_dataset.py) is listed, refuses a wrong folder clearly, and is
scored through the CLI in its kind's place (``--data my_masks=PATH``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.plugins import load_plugin_file
from bench.registry import DATASETS
from bench.running import session

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "my_dataset.py")
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)


def write_folder(root: Path, sizes: dict[str, int]) -> None:
    """Images of three coloured vertical bands and their masks (band k = class k, a stripe unlabelled)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    for split, n in sizes.items():
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True)
        for i in range(n):
            cuts = np.sort(rng.choice(np.arange(10, 118), 2, replace=False))
            mask = np.digitize(np.arange(128), cuts)[None].repeat(96, 0).astype(np.uint8)
            mask[:4] = 255
            Image.fromarray(COLOURS[np.minimum(mask, 2)]).save(root / split / "images" / f"{i:03d}.jpg")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")


def test_the_example_dataset_lists_reads_and_scores_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "CACHE_DIR", tmp_path / "cache")
    root = tmp_path / "masks"
    write_folder(root, {"train": 4, "val": 2})
    assert main(["--plugin", EXAMPLE, "list"]) == 0
    assert "my_masks" in capsys.readouterr().out
    data = DATASETS.get("my_masks").dataset_class()(str(root), "val", (48, 64), None)
    item = data[0]
    assert data.num_classes == 3 and len(data) == 2 and tuple(item["image"].shape) == (3, 48, 64)
    assert set(item["label"].unique().tolist()) == {0, 1, 2, 255}
    out = tmp_path / "run"
    assert main(["--plugin", EXAMPLE, "--no-progress", "run", "--profile", "smoke", "-m", "bilinear",
                 "-t", "probe_seg", "--data", f"my_masks={root}", "--out", str(out)]) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "ok", records[0]["message"]
    assert records[0]["recipe"]["data"]["name"] == "my_masks" and records[0]["recipe"]["data"]["path"] == str(root)
    assert records[0]["cell"]["dataset"].startswith("my_masks")


def test_the_example_dataset_says_what_layout_it_expected(tmp_path):
    load_plugin_file(EXAMPLE)
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"(?s)lacks train/masks; expected\n.*classes.txt.*\nfound\ntrain/\n    images/"):
        DATASETS.get("my_masks").dataset_class()(str(tmp_path), "train", (48, 64), None)
