"""The command line end to end, as a user types it (subprocesses, offline)."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "run_bench.py", "--no-progress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_list_names_everything():
    out = cli("list").stdout
    for name in ("low_res", "bilinear", "strided", "large_image", "probe_seg", "probe_depth",
                 "efficientnet_lite0", "vit", "scenes", "middlebury", "coco_stuff", "smoke"):
        assert name in out


def test_misspelt_method_gets_a_suggestion_and_exit_2(tmp_path):
    proc = cli("run", "--profile", "smoke", "-m", "bilinar", "-t", "probe_seg", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "Did you mean 'bilinear'" in proc.stderr
    assert not (tmp_path / "cells").exists()


def test_missing_weights_is_a_clear_error(tmp_path):
    proc = cli("run", "--profile", "smoke", "--backbone", "vit", "-m", "bilinear", "-t", "probe_seg",
               "--out", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "--weights PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_dataset_path_that_does_not_exist(tmp_path):
    proc = cli("run", "--profile", "smoke", "-m", "bilinear", "-t", "probe_seg", "--out", str(tmp_path),
               "--data", f"coco_stuff={tmp_path}/nope", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: --data coco_stuff={tmp_path}/nope: ") and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "cells").exists()


def test_smoke_run_resume_and_table(tmp_path):
    args = ("run", "--profile", "smoke", "-m", "low_res,bilinear,strided,large_image",
            "-t", "probe_seg,probe_depth", "--out", str(tmp_path))
    first = cli(*args)
    files = sorted((tmp_path / "cells").glob("*.json"))
    assert len(files) == 8 and "8 cells scored" in first.stdout
    second = cli(*args)
    assert "0 cells scored, 8 already done" in second.stdout
    assert sorted((tmp_path / "cells").glob("*.json")) == files
    table = cli("table", "--run", str(tmp_path), "--format", "csv").stdout
    t = pd.read_csv(io.StringIO(table)).set_index("method")
    assert set(t.index) == {"low_res", "bilinear", "strided", "large_image"}
    assert t["probe_seg.miou"].between(0, 100).all() and (t["probe_depth.rmse"] > 0).all()


def test_plugin_run(tmp_path):
    cli("run", "--profile", "smoke", "--plugin", "examples/my_upsampler.py", "-m", "my_upsampler",
        "-t", "probe_seg", "--out", str(tmp_path))
    assert len(list((tmp_path / "cells").glob("my_upsampler--*.json"))) == 1
