"""The task interface: score one upsampler on one backbone, return tidy metric rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from bench.backbones import Backbone
    from bench.core.context import RunContext
    from bench.core.profiles import Profile
    from methods.base import Upsampler


@dataclass(frozen=True)
class MetricRow:
    metric: str
    value: float
    higher_is_better: bool
    per_image: list | None = None
    """Per-image sufficient statistics (one entry per validation image), for bootstrap intervals."""
    statistic: str | None = None
    """How ``per_image`` gives ``value``: a key of ``bench.reporting.stats.STATISTICS``."""


@dataclass(frozen=True)
class Workload:
    images: int
    """Distinct images an upsampler is shown (each is one fit for a per-image method)."""
    passes: int
    """Backbone + upsampler passes, forward-equivalents (a backward pass counts two)."""


@dataclass(frozen=True)
class TaskSettings:
    """A task's own settings: subclass with fields and their defaults (the paper's recipe where it has one)."""

    ADDED: ClassVar[dict[str, Any]] = {}
    """Settings added after results were stored, at the value every earlier result was made with: left out of
    the recipe (so of the hash) at that value, so those results stay valid; recorded like any other otherwise."""


class Task(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    metrics: ClassVar[dict[str, bool]]
    """Metric name -> higher is better."""
    paper_columns: ClassVar[dict[str, str]] = {}
    """Metric name -> column of the paper's table (results/paper_table.csv) it is compared with."""
    data_kind: ClassVar[str]
    """Which of the profile's datasets the task reads: ``profile.data[data_kind]`` ("seg", "depth", "classify",
    or a kind of its own, which a profile or ``--data`` then names)."""
    Settings: ClassVar[type[TaskSettings]] = TaskSettings

    def dataset(self, profile: "Profile") -> str:
        return profile.dataset(self.data_kind)

    def settings(self, profile: "Profile") -> TaskSettings:
        """The task's defaults with the profile's overrides for this task (``Profile.task_settings``)."""
        overrides = dict(profile.task_settings.get(self.name, {}))
        known = {f.name for f in fields(self.Settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"profile {profile.name!r} sets {', '.join(unknown)} for task {self.name!r}, "
                             f"which has no such setting; its settings: {', '.join(sorted(known)) or 'none'}")
        return self.Settings(**overrides)

    def recipe(self, profile: "Profile") -> dict[str, Any]:
        """Everything about how the numbers were made that is not the method itself."""
        settings = {k: v for k, v in asdict(self.settings(profile)).items()
                    if k not in self.Settings.ADDED or self.Settings.ADDED[k] != v}
        return {"task": self.name, "task_version": self.version, "dataset": self.dataset(profile),
                **({"settings": settings} if settings else {})}

    def load(self, split: str, context: "RunContext", limit: int | None) -> "Dataset":
        """The first ``limit`` items of ``split`` of the profile's dataset of this task's kind."""
        from bench.data import load_dataset  # imported on use: `list` and plugins need no data stack

        p = context.profile
        name = self.dataset(p)
        return load_dataset(name, split, p.image_size, limit=limit, path=context.data_paths.get(name), seed=p.seed)

    def load_split(self, split: str, context: "RunContext") -> "Dataset":
        """``split`` with as many items as the task's settings give for it (``n_train``, ``n_val``; None: all)."""
        return self.load(split, context, getattr(self.settings(context.profile), f"n_{split}", None))

    def images(self, context: "RunContext") -> Iterator["torch.Tensor"]:
        """Every (3,H,W) image ``run`` will show an upsampler, so per-image methods are fitted up front."""
        return iter(())

    def workload(self, context: "RunContext") -> Workload | None:
        """What one cell of this task costs, for ``run --dry-run``'s estimate; None where the task cannot say."""
        return None

    def prepare(self, backbone: "Backbone", context: "RunContext") -> None:
        """Train or load what every method's cell of this task shares (e.g. CAM's classifier) into the cache.

        ``run`` does it on first use too; a parallel executor calls this once before the cells, so
        workers never train the same thing side by side.
        """

    @abstractmethod
    def run(self, upsampler: "Upsampler", backbone: "Backbone", context: "RunContext") -> list[MetricRow]:
        """Score ``upsampler`` (already fitted) on ``backbone`` features."""

    def rows(self, values: dict[str, float], per_image: dict[str, tuple[list, str]] | None = None) -> list[MetricRow]:
        """Metric rows in ``metrics`` order; ``per_image`` maps a metric to (statistics, statistic name)."""
        per_image = per_image or {}
        return [MetricRow(k, float(values[k]), self.metrics[k], *per_image.get(k, (None, None))) for k in self.metrics]
