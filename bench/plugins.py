"""Where methods and tasks come from: built-in modules, installed packages, one-file plugins."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from bench.registry import METHODS

ENTRY_POINT_GROUP = "featup_bench.methods"


class PluginError(ImportError):
    """A plugin file or entry point could not be loaded."""


def import_package_modules(package: str) -> None:
    """Import every module of a built-in package so its classes register themselves."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")


def load_plugin_file(path: str) -> list[str]:
    """Import a user's upsampler file; returns the method names it registered."""
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"--plugin {path!r}: no such file (expected a .py file defining an Upsampler)")
    before = set(METHODS.names())
    module_name = f"featup_bench_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PluginError(f"--plugin {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    added = sorted(set(METHODS.names()) - before)
    if not added:
        raise PluginError(
            f"--plugin {path!r} registered no method: decorate your Upsampler subclass with "
            "@METHODS.register (see examples/my_upsampler.py)"
        )
    return added


def load_entry_points() -> None:
    """Import the installed packages that advertise methods in the entry-point group."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
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
