"""Which code made a number: a hash of the source a method ran from.

A method's ``version`` is bumped by hand, and a researcher editing an upsampler all day does not bump it.
So a plugin file's cells are keyed by the hash of its source and of the local modules it imports (those in
its folder): editing either rescores exactly its cells. A built-in method's cells record the hash of its
module, so a run can say when the code changed under an unchanged version.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path


def file_digest(files: list[Path]) -> str:
    """sha256 over the files' names and bytes, in the order given (16 hex digits: a cell key, not a signature)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


SUITE_PACKAGES = frozenset({"bench", "methods", "tasks", "kernels"})
"""The suite's own code, which a plugin in the checkout's root would otherwise count as its local modules."""


def local_imports(file: Path) -> list[Path]:
    """The source files of the modules ``file`` imports, directly or through each other, that live in its
    folder or below (never installed packages, nor the suite): what a plugin's behaviour depends on besides itself."""
    root, seen, todo = file.parent.resolve(), {file.resolve()}, [file.resolve()]
    while todo:
        for name in imported_names(todo.pop()):
            if name.partition(".")[0] in SUITE_PACKAGES:
                continue
            origin = module_origin(name)
            if origin is not None and origin.is_relative_to(root) and "site-packages" not in origin.parts \
                    and origin not in seen:
                seen.add(origin)
                todo.append(origin)
    return sorted(seen - {file.resolve()})


def imported_names(file: Path) -> set[str]:
    """Module names an ``import`` or ``from ... import`` statement in ``file`` names (relative imports aside)."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def module_origin(name: str) -> Path | None:
    """The source file of module ``name`` (already imported or findable), or None for built-ins and namespaces."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None and spec.has_location else None
    return Path(origin).resolve() if origin and origin.endswith(".py") else None


def plugin_digest(file: Path) -> str:
    """The code identity of a plugin file: its source and that of the local modules it imports."""
    return file_digest([file.resolve(), *local_imports(file)])


def module_digest(module_name: str) -> str | None:
    """The hash of a built-in method's module source, or None where it has no source file."""
    origin = module_origin(module_name)
    return file_digest([origin]) if origin is not None else None
