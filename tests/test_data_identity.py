"""A result is never attributed to data it did not come from; bad inputs get one clear line."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main, parse
from bench.running.session import default_run_dir
from bench.core.context import RunContext
from bench.data import DatasetError, load_dataset
from bench.data.identity import dataset_identity
from bench.core.profiles import PROFILES
from bench.running.runner import plan, run_cells
from bench.core.store import ResultStore, RunFolderError
from bench.reporting.report import table_text

FIXTURE = Path(__file__).parent / "fixtures" / "coco_stuff"


@pytest.fixture
def two_folders(tmp_path):
    """Two copies of the COCO-Stuff fixture; in b one label file has its top half set to class 0."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    return a, b


def relabel(folder: Path) -> Path:
    path = sorted((folder / "annotations" / "val2017").glob("*.png"))[0]
    label = np.array(Image.open(path))
    label[: label.shape[0] // 2] = 0
    Image.fromarray(label).save(path)
    return path


def coco_context(folder: Path) -> RunContext:
    profile = PROFILES.get("smoke").with_data(seg="coco_stuff")
    return RunContext(profile=profile, progress=False, data_paths={"coco_stuff": str(folder)})


def test_folder_identity_is_path_and_content(two_folders):
    a, b = two_folders
    ida, idb = dataset_identity("coco_stuff", str(a)), dataset_identity("coco_stuff", str(b))
    assert ida["path"] == str(a.resolve()) and ida["files"] == idb["files"] > 0
    assert ida["label"] != idb["label"] and ida["label"].startswith("coco_stuff@a-")
    before = dataset_identity("coco_stuff", str(b))
    relabel(b)
    after = dataset_identity("coco_stuff", str(b))
    assert after["fingerprint"] != before["fingerprint"] and after["label"] == before["label"]
    (b / "extra.txt").write_text("x")
    assert dataset_identity("coco_stuff", str(b))["fingerprint"] != after["fingerprint"]


def test_embedded_identity_is_name_and_version():
    identity = dataset_identity("scenes", None)
    assert identity == {"name": "scenes", "version": "1", "label": "scenes"}


@pytest.mark.parametrize("where", ["missing", "file"])
def test_a_folder_that_is_not_there_fails_before_any_work(tmp_path, where):
    path = tmp_path / "x"
    if where == "file":
        path.write_text("")
    with pytest.raises(DatasetError, match="expected a folder laid out as") as info:
        plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(path))
    assert ("does not exist" if where == "missing" else "is a file") in str(info.value)


def test_two_folders_into_one_run_folder_are_scored_separately_and_both_shown(tmp_path, lite0, two_folders):
    a, b = two_folders
    out = tmp_path / "run"
    first = run_cells(plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(a)), lite0,
                      coco_context(a), out)
    relabel(b)
    second = run_cells(plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(b)), lite0,
                       coco_context(b), out)
    assert (len(first.done), len(second.done), len(second.skipped)) == (1, 1, 0)
    rows = ResultStore(out).rows()
    assert rows["dataset"].nunique() == 2
    table = table_text(out, "md")
    assert "coco_stuff@a-" in table and "coco_stuff@b-" in table
    manifest = (out / "run.json").read_text()
    assert str(a.resolve()) in manifest and str(b.resolve()) in manifest


def test_a_changed_folder_is_scored_afresh_and_replaces_the_stale_result(tmp_path, lite0, two_folders):
    a, _ = two_folders
    out = tmp_path / "run"
    run_cells(plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(a)), lite0, coco_context(a), out)
    relabel(a)
    again = run_cells(plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(a)), lite0,
                      coco_context(a), out)
    assert len(again.done) == 1
    assert len(list((out / "cells").glob("*.json"))) == 2 and len(ResultStore(out).current_records()) == 1


def test_a_second_run_on_a_held_run_folder_stops_with_a_clear_message(tmp_path, lite0):
    context = RunContext(profile=PROFILES.get("smoke"), progress=False)
    with ResultStore(tmp_path).lock():
        with pytest.raises(RunFolderError, match=r"in use by another run \(pid \d+"):
            run_cells(plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", context), lite0, context, tmp_path)
    with ResultStore(tmp_path).lock():  # released: usable again
        pass


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("")
    assert main(["run", "--profile", "smoke", "-m", "bilinear", "-t", "probe_seg", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file; expected a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("sizes", ["0", "-8,112", "112,abc"])
def test_sizes_must_be_positive_integers(sizes, capsys):
    with pytest.raises(SystemExit):
        parse(["profile", "kernels", f"--sizes={sizes}"])
    assert "expected comma-separated positive integers" in capsys.readouterr().err


def test_a_truncated_image_is_named(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "c")
    image = sorted((tmp_path / "c" / "images" / "val2017").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:300])
    data = load_dataset("coco_stuff", "val", (64, 64), path=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match=f"{image.name}: cannot read this image file"):
        data[0]


def test_failures_carried_over_are_not_done(tmp_path, capsys):
    args = ["--no-progress", "run", "--profile", "smoke", "-m", "_exploding",
            "-t", "probe_seg", "--out", str(tmp_path / "run")]
    assert main(args) == 1
    capsys.readouterr()
    assert main(args) == 1  # nothing rerun, but the table still holds the failure
    out = capsys.readouterr().out
    assert "0 cells scored, 1 already done" in out
    assert "kept 1 failed cell(s) from an earlier run; `--rerun failed` retries them" in out
    assert os.listdir(tmp_path / "run" / "cells")


def test_default_run_folder_names_folder_data(two_folders):
    a, b = two_folders
    names = {default_run_dir("smoke", "efficientnet_lite0",
                             plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", coco_context(f))).name
             for f in (a, b)}
    assert len(names) == 2 and all(n.startswith("smoke-efficientnet_lite0-coco_stuff-a-") or
                                   n.startswith("smoke-efficientnet_lite0-coco_stuff-b-") for n in names)
    embedded = plan(["bilinear"], ["probe_seg"], "efficientnet_lite0", RunContext(profile=PROFILES.get("smoke")))
    assert default_run_dir("smoke", "efficientnet_lite0", embedded).name == "smoke-efficientnet_lite0"
    relevance = {"cam": {**PROFILES.get("smoke").task_settings["cam"], "protocol": "relevance"}}
    assert default_run_dir("smoke", "efficientnet_lite0", embedded, relevance).name == \
        "smoke-efficientnet_lite0-cam-protocol-relevance"
