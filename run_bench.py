#!/usr/bin/env python
"""featup-bench: score feature upsamplers. `python run_bench.py --help` lists the commands."""
import sys

from bench.launch import main

if __name__ == "__main__":
    sys.exit(main())
