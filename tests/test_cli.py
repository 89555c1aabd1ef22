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


def test_plugin_run_is_keyed_by_its_code_and_read_back_without_plugin(tmp_path):
    """Editing a plugin (its version unchanged) rescores its cell; table and report load it from run.json."""
    plugin, out = tmp_path / "mine.py", tmp_path / "run"
    plugin.write_text((ROOT / "examples/my_upsampler.py").read_text())

    def score() -> str:
        return cli("run", "--profile", "smoke", "--plugin", str(plugin), "-m", "my_upsampler", "-t", "probe_seg",
                   "--out", str(out)).stdout

    assert "1 cells scored, 0 already done" in score()  # (an unedited plugin is skipped: test_smoke_run_resume_...)
    plugin.write_text(plugin.read_text().replace("colour_sigma = 0.1", "colour_sigma = 0.2"))
    assert "1 cells scored, 0 already done" in score()
    assert len(list((out / "cells").glob("my_upsampler--*.json"))) == 2
    shown = cli("table", "--run", str(out), "--format", "csv")
    assert "my_upsampler" in shown.stdout and f"loaded plugin {plugin}" in shown.stderr
    cli("report", "--run", str(out), "--out", str(tmp_path / "report"), "--sizes", "32", "--photos", "1")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "my_upsampler" in report and "left out: my_upsampler" not in report


def test_help_lists_every_command_and_loads_no_framework():
    """`--help` describes every command (not `run` alone), without importing torch: it answers at once."""
    probe = ("import sys\nfrom bench.cli import build_parser, parse\ntry:\n    parse(['--help'])\nexcept SystemExit:\n"
             "    pass\nprint(sorted(build_parser().commands))\nprint('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    *help_text, commands, torch_loaded = proc.stdout.strip().splitlines()
    listed = {line.split()[0] for line in help_text if line.startswith("    ") and line.split()}
    assert set(eval(commands)) <= listed
    assert torch_loaded == "False"


def test_misspelt_command_gets_a_suggestion_and_exit_2():
    proc = cli("lsit", check=False)
    assert proc.returncode == 2
    assert "did you mean 'list'" in proc.stderr


def test_list_says_which_methods_the_default_run_leaves_out():
    from bench.plugins import load_all
    from bench.registry import METHODS

    load_all([])
    out = cli("list").stdout
    lines = out.split("methods:\n")[1].split("tasks:")[0].splitlines()
    assert {"bilinear", "jafar", "uplift"} <= {line.split()[0] for line in lines}
    for line in lines:
        assert ("not in the default run" in line) == (not METHODS.get(line.split()[0]).in_default_run), line
