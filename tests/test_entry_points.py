"""``python run_bench.py`` and the ``featup-bench`` console script start the same way (bench.launch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
import json, os
from bench.launch import started
from bench.registry import METHODS
from methods.bilinear import Bilinear


@METHODS.register
class StartupProbe(Bilinear):  # a plugin must register something
    name = "_startup_probe"


json.dump({"started": started, "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}},
          open(os.environ["STARTUP_DUMP"], "w"))
'''


def console_script() -> str:
    found = shutil.which("featup-bench") or str(Path(sys.executable).with_name("featup-bench"))
    if not Path(found).is_file():
        pytest.fail("no featup-bench console script beside this Python: install the project (pip install -e .)")
    return found


def startup(command: list[str], tmp_path: Path, name: str) -> dict:
    plugin, dump = tmp_path / f"{name}_plugin.py", tmp_path / f"{name}.json"
    plugin.write_text(PLUGIN)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([*command, "--plugin", str(plugin), "list"], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "STARTUP_DUMP": str(dump), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(dump.read_text())


def test_both_entry_points_run_the_same_start_up(tmp_path):
    script = startup([sys.executable, "run_bench.py"], tmp_path, "script")
    console = startup([console_script()], tmp_path, "console")
    assert script == console
    assert script["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
    assert script["started"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000",
                                 "torch_imported_before": False, "keep_freed_memory": True}
