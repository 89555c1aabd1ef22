"""The start-up every entry point runs (``python run_bench.py`` and the ``featup-bench`` console script).

torch and Numba's parallel kernels each keep an OpenMP thread pool; by default idle threads spin, so
each pool's spinning steals the cores the other needs whenever work alternates between them (the JBU
does, every stage). OpenMP reads its wait policy when it starts, so it is set here, before torch is
imported: passive waiting with a short spin (GNU OpenMP's count), which still lets back-to-back small
ops skip waking sleeping threads (docs/performance.md has the measurements). glibc then keeps freed
heap memory for reuse (bench.allocator). A variable the user set is left as it is.
"""
from __future__ import annotations

import os
import sys

THREAD_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
started: dict[str, object] = {}
"""What ``main`` set up, for the test that both entry points do the same."""


def main(argv: list[str] | None = None) -> int:
    for key, value in THREAD_SETTINGS.items():
        os.environ.setdefault(key, value)
    started.update({key: os.environ[key] for key in THREAD_SETTINGS},
                   torch_imported_before="torch" in sys.modules)
    from bench.allocator import keep_freed_memory
    from bench.cli import main as cli_main

    keep_freed_memory()
    started["keep_freed_memory"] = True
    return cli_main(argv)
