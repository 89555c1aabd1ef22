"""pytest-benchmark timings of the embedded scene generators (run: pytest -m benchmark --benchmark-enable tests/benchmarks).

Generating an item is on the critical path of every probe run (the default run draws 48 + 24 scenes
and 96 + 96 depth scenes at 224²); it measured under 0.25 s (scenes) and 0.1 s (depth_scenes) per
item on an idle 2-core CPU. A timing, never an assertion: a shared machine runs slower.
"""
from __future__ import annotations

import pytest

from bench.data import load_dataset


@pytest.mark.benchmark
@pytest.mark.parametrize("name", ["scenes", "depth_scenes"])
def test_bench_scene_generation(benchmark, name):
    data = load_dataset(name, "train", (224, 224), limit=10)
    data[0]  # warm-up: the textures are loaded once
    benchmark.group = "embedded scenes, 10 items at 224²"
    items = benchmark(lambda: [data[i] for i in range(10)])
    assert len(items) == 10 and tuple(items[0]["image"].shape) == (3, 224, 224)
