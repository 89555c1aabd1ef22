"""Where methods, tasks and backbones come from: built-in modules, installed packages, one-file plugins."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.core.code_identity import module_digest, plugin_digest
from bench.registry import BACKBONES, DATASETS, METHODS, TASKS

ENTRY_POINT_GROUPS = ("featup_bench.methods", "featup_bench.backbones", "featup_bench.tasks", "featup_bench.datasets")
"""Installed packages advertise a module per entry point; importing it registers what it defines."""
PLUGIN_REGISTRIES = (METHODS, BACKBONES, TASKS, DATASETS)


class PluginError(ImportError):
    """A plugin file or entry point could not be loaded."""


PLUGIN_FILES: dict[str, Path] = {}
"""Each name a plugin file registered -> that file (resolved): a run records them, and keys their cells by them."""


def import_package_modules(package: str) -> None:
    """Import every module of a built-in package so its classes register themselves."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")


def load_plugin_file(path: str) -> list[str]:
    """Import a user's file of upsamplers, backbones, tasks or datasets; returns the names it registered.

    A file is imported once per process (a second import would register its names again, which the
    registries refuse); loading it again returns the same names.
    """
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"--plugin {path!r}: no such file (expected a .py file defining an Upsampler, "
                          f"a backbone or a task)")
    return _import_plugin(file.resolve())


@functools.cache
def _import_plugin(file: Path) -> list[str]:
    path = str(file)
    before = {registry.kind: set(registry.names()) for registry in PLUGIN_REGISTRIES}
    module_name = f"featup_bench_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"--plugin {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    added = sorted(name for registry in PLUGIN_REGISTRIES for name in set(registry.names()) - before[registry.kind])
    if not added:
        raise PluginError(
            f"--plugin {path!r} registered nothing: decorate your Upsampler subclass with @METHODS.register "
            "(see examples/my_upsampler.py), register a backbone with BACKBONES.register(timm_spec(...)) "
            "(examples/my_backbone.py), a Task subclass with @TASKS.register or a dataset with "
            "DATASETS.register(DatasetSpec(...)) (examples/my_dataset.py)"
        )
    PLUGIN_FILES.update(dict.fromkeys(added, file))
    return added


def method_code(method_cls: type) -> dict[str, str | None]:
    """What a method's cells record of its code: ``plugin``, the hash of the plugin file that registered it
    (with its local imports; part of the cell's key), or ``module``, the hash of a built-in's module source."""
    file = PLUGIN_FILES.get(method_cls.name)
    if file is not None:
        return {"plugin": plugin_digest(file)}
    return {"module": module_digest(method_cls.__module__)}


def changed_code(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(method, version) of each built-in method whose module differs from the one its stored cell ``records``
    were scored with, at the same version (plugins need no check: their code is part of the cell's key)."""
    changed = {}
    for rec in records:
        name, stored = rec["cell"]["method"], rec["provenance"].get("method_code", {})
        if name in METHODS and "module" in stored and stored != method_code(METHODS.get(name)) \
                and rec["provenance"].get("method_version") == METHODS.get(name).version:
            changed[name] = METHODS.get(name).version
    return sorted(changed.items())


def plugins_of(names: list[str]) -> list[str]:
    """The plugin files that registered any of ``names``, as a run records them in run.json."""
    return sorted({str(PLUGIN_FILES[n]) for n in names if n in PLUGIN_FILES})


def load_entry_points() -> None:
    """Import the installed packages that advertise methods, backbones or tasks in the entry-point groups."""
    for ep in (ep for group in ENTRY_POINT_GROUPS for ep in entry_points(group=group)):
        try:
            ep.load()
        except Exception as exc:
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc


def load_all(plugin_files: list[str] = ()) -> None:
    """Everything a command may need: datasets, built-in methods and tasks, entry points, plugin files."""
    importlib.import_module("bench.data")
    import_package_modules("methods")
    import_package_modules("tasks")
    load_entry_points()
    for path in plugin_files:
        load_plugin_file(path)
