"""Shared fixtures: everything offline, the real default backbone loaded once."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Callable, Iterator

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FEATUP_BENCH_DATA"] = os.path.join(os.path.dirname(__file__), "no-data-root")  # a user's fetched data
# would otherwise stand in for the folders tests leave out on purpose
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from bench.plugins import load_all  # noqa: E402

load_all()

from bench.registry import METHODS  # noqa: E402
from methods.bilinear import Bilinear  # noqa: E402


class Images(torch.utils.data.Dataset):
    """``n`` seeded random (3, *size) images in [0, 1]: a training set for the trainer's plumbing in tests."""

    def __init__(self, n, size):
        self.images = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


# Failing test doubles shared by the runner and CLI tests ("_" names: the contract test skips them).
@METHODS.register
class Exploding(Bilinear):
    name = "_exploding"

    @classmethod
    def create(cls, backbone):
        raise RuntimeError("boom in create")


@METHODS.register
class OutOfMemory(Bilinear):
    name = "_oom"

    @classmethod
    def create(cls, backbone):
        raise MemoryError("cannot allocate 80 GB")


@pytest.fixture(scope="session")
def lite0():
    from bench.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture
def images():
    """Two non-square images whose sides are not multiples of 32."""
    return torch.rand(2, 3, 70, 100, generator=torch.Generator().manual_seed(0))


def live_memory_start() -> None:
    from bench.allocator import follow_live_memory

    follow_live_memory()
    load_all()


def spawned(initializer: Callable[[], None]) -> Iterator[Callable]:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=initializer) as pool:
        yield lambda fn, *args: pool.submit(fn, *args).result()


@pytest.fixture
def fresh_process():
    """``call(fn, *args)`` runs a module-level ``fn`` in a newly spawned interpreter and returns its result.

    A CPU peak is read from the process's resident set, which the heap state that earlier tests
    leave behind moves by hundreds of MB either way; a spawned process starts from the same state
    in every run, so a memory bound checked there means the same thing alone and in the full suite.
    """
    yield from spawned(load_all)


@pytest.fixture
def live_memory_process():
    """``fresh_process`` whose large allocations are mapped afresh (``follow_live_memory``): its resident set is
    the memory alive, not what a long loop's heap happens to keep. Slow where a call allocates much."""
    yield from spawned(live_memory_start)


def trained_on_a_tiny_backbone(method_cls, module, monkeypatch, tmp_path):
    """``method_cls`` (defined in ``module``) trained 3 steps with its own objective on 4 random 64x96 images through a
    tiny random timm convnet (stride 32, 256 channels), the published 448-px training size cut to 128 so it takes
    seconds: (method, its state before, the training's provenance, the backbone). LiFT and UPLiFT share it."""
    import json

    import timm

    from bench.backbones import backbone_from_model
    from bench.core.context import RunContext
    from bench.core.profiles import PROFILES
    from bench.fitting import train

    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Images(4, size))
    monkeypatch.setattr(module, "TRAIN_SIZE", 128)
    backbone = backbone_from_model("tiny", timm.create_model("test_efficientnet", pretrained=False),
                                   stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(64, 96), train_steps=3, train_batch=2)
    context = RunContext(profile=profile, cache_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    method = method_cls.create(backbone)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train.ensure_trained(method, backbone, context)
    folder, _ = train.checkpoint(method, backbone, context)
    return method, before, json.loads((folder / "provenance.json").read_text()), backbone


def assert_tiles_equal_whole_through_a_backbone(method, dim: int, output_size: tuple[int, int]) -> None:
    """``upsample`` with 10-px tiles equals it whole (float32), through a stand-in stride-16 backbone of ``dim``
    channels on a 48x64 image: the tiled path as a run calls it, backbone included."""
    from types import SimpleNamespace

    backbone = SimpleNamespace(features=lambda x: x[:, :1].repeat(1, dim, 1, 1)[..., ::16, ::16] * 3 - 1)
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        whole = method.upsample(backbone, image, output_size)
        tiled = method.upsample(backbone, image, output_size, tile=10)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def write_cell(store, method: str, task: str, seed: int, metric: str, value: float, higher_is_better: bool = True,
               per_image=None, statistic: str | None = None) -> None:
    """A finished smoke cell with one metric, written straight into ``store``: table and report tests
    without scoring anything."""
    from bench.core.cells import Cell

    cell = Cell(method, task, "efficientnet_lite0", "scenes", "smoke", seed)
    recipe = {"method_version": "1", "task_version": "1", "seed": seed}
    store.write(cell, recipe, {
        "cell": vars(cell), "status": "ok", "message": "", "recipe": recipe, "config_hash": cell.config_hash(recipe),
        "metrics": [{"metric": metric, "value": value, "higher_is_better": higher_is_better, "per_image": per_image,
                     "statistic": statistic}],
        "provenance": {"method_version": "1", "task_version": "1", "wall_s": 1.0, "peak_mb": 1.0, "git_commit": "x",
                       "started": "2026-01-01"},
    })
