"""Code identity: a plugin's cells are keyed by its source and its local imports; built-ins record their module."""
from __future__ import annotations

import sys

from bench.core.code_identity import local_imports, plugin_digest
from bench.plugins import load_all, method_code
from bench.registry import METHODS
from bench.plugins import changed_code


def test_plugin_digest_follows_the_file_and_its_local_imports_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "helper_kernel.py").write_text("SCALE = 1\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import torch\nfrom helper_kernel import SCALE\nfrom methods.base import Upsampler\n")
    assert local_imports(plugin) == [(tmp_path / "helper_kernel.py").resolve()]  # installed or the suite's
    before = plugin_digest(plugin)
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    assert plugin_digest(plugin) == before
    (tmp_path / "helper_kernel.py").write_text("SCALE = 2\n")
    edited_helper = plugin_digest(plugin)
    assert edited_helper != before
    plugin.write_text(plugin.read_text() + "# a comment is an edit too\n")
    assert plugin_digest(plugin) not in (before, edited_helper)
    sys.modules.pop("helper_kernel", None)


def record(method: str, version: str, code: dict) -> dict:
    return {"cell": {"method": method}, "provenance": {"method_version": version, "method_code": code}}


def test_a_built_in_method_whose_module_changed_at_the_same_version_is_named():
    load_all()
    bilinear = METHODS.get("bilinear")
    now = method_code(bilinear)
    assert set(now) == {"module"} and len(now["module"]) == 16
    old = {"module": "0" * 16}
    assert changed_code([record("bilinear", bilinear.version, now)]) == []
    assert changed_code([record("bilinear", bilinear.version, old)]) == [("bilinear", bilinear.version)]
    assert changed_code([record("bilinear", bilinear.version + "-older", old)]) == []  # a version bump says it
    assert changed_code([{"cell": {"method": "bilinear"}, "provenance": {"method_version": bilinear.version}}]) == []


def test_the_table_names_changed_code_and_how_long_trained_rows_trained():
    from bench.reporting.report import changed_code_note, training_note

    load_all()
    bilinear = METHODS.get("bilinear")
    stale = {**record("bilinear", bilinear.version, {"module": "0" * 16}), "recipe": {}}
    assert f"bilinear (v{bilinear.version})" in changed_code_note([stale])
    assert changed_code_note([{**stale, "provenance": {**stale["provenance"],
                                                       "method_code": method_code(bilinear)}}]) == ""

    def trained(method: str, profile: str, weights: dict | None) -> dict:
        recipe = {"train_data": {"name": "photos"}, "profile": {"train_steps": 3}, **({"weights": weights} if weights else {})}
        return {"cell": {"method": method, "profile": profile}, "recipe": recipe}

    smoke = training_note([trained("jafar", "smoke", None), {"cell": {"method": "bilinear", "profile": "smoke"},
                                                            "recipe": {}}])
    assert "jafar 3 steps" in smoke and "not the methods' numbers" in smoke and "bilinear" not in smoke
    shipped = training_note([trained("carafe", "default", {"source": "shipped", "steps": 2000})])
    assert "carafe 2000 steps (shipped)" in shipped and "plumbing" not in shipped


def test_cells_that_today_plans_under_another_hash_are_not_current(tmp_path):
    from bench.core.store import ResultStore, cell_key
    from bench.reporting.report import table_text
    from conftest import write_cell

    store = ResultStore(tmp_path)
    for method, value in (("bilinear", 50.0), ("low_res", 40.0)):
        write_cell(store, method, "probe_seg", 0, "miou", value)
    records = {r["cell"]["method"]: r for r in store.records()}
    planned = {cell_key(records["bilinear"]["cell"]): records["bilinear"]["config_hash"],
               cell_key(records["low_res"]["cell"]): "another-recipe"}
    assert {r["cell"]["method"] for r in store.current_records(planned)} == {"bilinear"}
    assert {r["cell"]["method"] for r in store.current_records()} == {"bilinear", "low_res"}
    text = table_text(tmp_path, planned=planned)
    assert "Left out, scored under another recipe or code than today's: low_res / probe_seg" in text
    assert "| low_res" not in text
