"""The command line end to end, as a user types it (subprocesses, offline; the checks that need no fresh
process call bench.cli.main in this one, which saves a start-up of torch and the registries each)."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "run_bench.py", "--no-progress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def here(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the command line run in this process."""
    status = main(["--no-progress", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_names_everything(capsys):
    out = here(capsys, "list")[1]
    for name in ("low_res", "bilinear", "strided", "large_image", "probe_seg", "probe_depth",
                 "efficientnet_lite0", "vit", "scenes", "middlebury", "coco_stuff", "smoke"):
        assert name in out


def test_misspelt_method_gets_a_suggestion_and_exit_2(tmp_path, capsys):
    status, _, err = here(capsys, "run", "--profile", "smoke", "-m", "bilinar", "-t", "probe_seg", "--out",
                          str(tmp_path))
    assert status == 2
    assert "Did you mean 'bilinear'" in err
    assert not (tmp_path / "cells").exists()


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
    status, _, err = here(capsys, "run", "--profile", "smoke", "--backbone", "vit", "-m", "bilinear", "-t",
                          "probe_seg", "--out", str(tmp_path))
    assert status == 2
    assert "--weights PATH" in err and "Traceback" not in err


def test_dataset_path_that_does_not_exist(tmp_path, capsys):
    status, out, err = here(capsys, "run", "--profile", "smoke", "-m", "bilinear", "-t", "probe_seg", "--out",
                            str(tmp_path), "--data", f"coco_stuff={tmp_path}/nope")
    assert status == 2
    assert err.startswith(f"error: --data coco_stuff={tmp_path}/nope: ") and "does not exist" in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "cells").exists()


def test_smoke_run_resume_and_table(tmp_path, capsys):
    args = ("run", "--profile", "smoke", "-m", "low_res,bilinear,strided,large_image",
            "-t", "probe_seg,probe_depth", "--out", str(tmp_path))
    first = cli(*args)
    files = sorted((tmp_path / "cells").glob("*.json"))
    assert len(files) == 8 and "8 cells scored" in first.stdout
    assert "0 cells scored, 8 already done" in here(capsys, *args)[1]
    assert sorted((tmp_path / "cells").glob("*.json")) == files
    table = here(capsys, "table", "--run", str(tmp_path), "--format", "csv")[1]
    t = pd.read_csv(io.StringIO(table)).set_index("method")
    assert set(t.index) == {"low_res", "bilinear", "strided", "large_image"}
    assert t["probe_seg.miou"].between(0, 100).all() and (t["probe_depth.rmse"] > 0).all()


def test_plugin_run_is_keyed_by_its_code_and_read_back_without_plugin(tmp_path, capsys):
    """Editing a plugin (its version unchanged) rescores its cell; table and report, in fresh processes without
    --plugin, load it from run.json. The runs are in this process (a plugin file is imported once per process, but
    its cells are keyed by the file on disk, which is what the edit changes)."""
    plugin, out = tmp_path / "mine.py", tmp_path / "run"
    plugin.write_text((ROOT / "examples/my_upsampler.py").read_text().replace('"my_upsampler"', '"_mine"'))

    def score() -> str:
        status, printed, err = here(capsys, "--plugin", str(plugin), "run", "--profile", "smoke", "-m", "_mine",
                                    "-t", "probe_seg", "--out", str(out))
        assert status == 0, err
        return printed

    assert "1 cells scored, 0 already done" in score()
    assert "0 cells scored, 1 already done" in score()
    plugin.write_text(plugin.read_text().replace("colour_sigma = 0.1", "colour_sigma = 0.2"))
    assert "1 cells scored, 0 already done" in score()
    assert len(list((out / "cells").glob("_mine--*.json"))) == 2
    shown = cli("table", "--run", str(out), "--format", "csv")
    assert "_mine" in shown.stdout and f"loaded plugin {plugin}" in shown.stderr
    cli("report", "--run", str(out), "--out", str(tmp_path / "report"), "--sizes", "32", "--photos", "1")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "_mine" in report and "left out: _mine" not in report


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


def test_list_says_which_methods_the_default_run_leaves_out(capsys):
    from bench.registry import METHODS

    out = here(capsys, "list")[1]
    lines = out.split("methods:\n")[1].split("tasks:")[0].splitlines()
    assert {"bilinear", "jafar", "uplift"} <= {line.split()[0] for line in lines}
    for line in lines:
        assert ("not in the default run" in line) == (not METHODS.get(line.split()[0]).in_default_run), line
