#!/usr/bin/env python
"""featup-bench: score feature upsamplers. `python run_bench.py --help` lists the commands."""
import os
import sys

# torch and Numba's parallel kernels each keep an OpenMP thread pool; by default idle threads
# spin, so each pool's spinning steals the cores the other needs whenever work alternates
# between them (the JBU does, every stage). Passive waiting is read when OpenMP starts, so it
# is set before torch is imported: featup_jbu at 224² ran 2x faster on the 2-core test machine.
# A short spin (GNU OpenMP's count; 0 when passive) still lets back-to-back small ops skip the
# wake-up of sleeping threads (~60-100 us an op on 28² maps): featup_jbu at 224² 79-81 ms
# against 83-95 ms passive (three profile runs each, interleaved).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from bench.allocator import keep_freed_memory  # noqa: E402
from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    keep_freed_memory()
    sys.exit(main())
