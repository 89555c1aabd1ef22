"""Linear 1x1 probes on frozen, upsampled features: the machinery both probe tasks share.

Recipe (docs/reference.md §2, public FeatUp code): training targets are resized (nearest) to the
feature grid, so the low-res row is probed on the backbone's own grid; a linear layer is
trained with Adam on minibatches of images over epochs; at evaluation its predictions are
resized to the label grid. Two choices of ours, stored in the recipe: each step trains on a
fixed random sample of ``pixels`` valid pixels per image (None: all of them), and the inputs
are standardised per channel with training statistics (one pass before training), so methods
whose features differ only in per-channel scale are probed alike.

Training streams: every step upsamples its batch of images again (``feature_cache="none"``;
memory does not grow with the number of training images, which COCO-Stuff at 224² needs:
every pixel of one image is 77 MB of 384-d features), or the sampled pixels of each image are
kept after the first pass (``"memory"``, the embedded profiles: a few MB). Both give the same
probe: the pixels an image contributes are fixed by the seed and the image's index.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from bench.backbones import Backbone
from bench.data.common import epoch_order
from bench.core.context import RunContext
from bench.core.profiles import Profile
from methods.base import Upsampler
from methods.tiling import PixelMap
from tasks.base import MetricRow, Task, TaskSettings, Workload
from tasks.metrics import PerImage

FEATURE_CACHES = ("none", "memory")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class ProbeSettings(TaskSettings):
    """Defaults are the public probe config (train_probe.yaml): Adam 5e-3, batch 2, 200 epochs, every pixel."""

    n_train: int | None = None
    """Training images (None: the whole split)."""
    n_val: int | None = None
    epochs: int = 200
    batch_size: int = 2
    """Images per optimiser step (and per upsampling batch at evaluation)."""
    lr: float = 5e-3
    pixels: int | None = None
    """Valid training pixels sampled per image (None: every one)."""
    feature_cache: str = "none"
    """"none": upsample each step's images again (memory bounded by one batch); "memory": keep each
    image's sampled pixels after the first pass."""
    optimizer: str = "adam"
    """"adam" (FeatUp's probe config) or "adamw" (JAFAR's, with ``weight_decay``)."""
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    """"constant" (FeatUp's) or "cosine": cosine annealing over the epochs, stepped per epoch (JAFAR's)."""
    ADDED: ClassVar[dict[str, Any]] = {"optimizer": "adam", "weight_decay": 0.0, "lr_schedule": "constant"}

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS or self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"optimizer {self.optimizer!r} / lr_schedule {self.lr_schedule!r}: expected one of "
                             f"{', '.join(OPTIMIZERS)} / {', '.join(LR_SCHEDULES)}")
        if self.feature_cache not in FEATURE_CACHES:
            raise ValueError(f"feature_cache {self.feature_cache!r}: expected one of {', '.join(FEATURE_CACHES)}")
        if self.epochs < 1 or self.batch_size < 1 or (self.pixels is not None and self.pixels < 1):
            raise ValueError(f"epochs, batch_size and pixels must be positive, got {self.epochs}, "
                             f"{self.batch_size}, {self.pixels}")


class Scores(Protocol):
    """A task's validation metrics: fed prediction maps at the label grid, then read once."""

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None: ...

    def result(self) -> tuple[dict[str, float], PerImage]: ...


def upsampled(upsampler: Upsampler, backbone: Backbone, image: torch.Tensor, tile: int | None,
              pixelwise: PixelMap | None = None) -> torch.Tensor:
    """HR features at the image size (the grid for low_res), float32, no gradients, in ``tile`` x ``tile``
    tiles when given (``--tile``); mapped by ``pixelwise`` when given (tile by tile, never holding the whole
    features)."""
    with torch.no_grad():
        return upsampler.upsample(backbone, image, tuple(image.shape[-2:]), tile,
                                  pixelwise=None if pixelwise is None else lambda f: pixelwise(f.float())).float()


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a (B,H,W) target map, never mixing label values."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].to(target.dtype)


def sample_pixels(
    feats: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, n: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` valid pixels of one image's (C,h,w) features and (h,w) targets as rows: (N, C) and (N,)."""
    idx = valid.flatten().nonzero().squeeze(1)
    if n is not None and idx.numel() > n:
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:n]]
    return feats.flatten(1)[:, idx].T, target.flatten()[idx]


class PixelSource:
    """The sampled training pixels (features, targets) of any set of training images.

    Pixels are drawn per image from a generator seeded by (seed, image index), so an image gives the
    same pixels whether it is upsampled once and kept (``cache``) or again in every batch.
    """

    def __init__(self, task: "ProbeTask", upsampler: Upsampler, backbone: Backbone, data: Dataset,
                 context: RunContext, settings: ProbeSettings) -> None:
        self.task, self.upsampler, self.backbone, self.data = task, upsampler, backbone, data
        self.device, self.settings, self.seed, self.tile = context.device, settings, context.profile.seed, context.tile
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = (
            {} if settings.feature_cache == "memory" else None)

    def pixels(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [i for i in indices if self.cache is None or i not in self.cache]
        fresh = dict(zip(missing, self._sample(missing))) if missing else {}
        if self.cache is not None:
            self.cache.update(fresh)
        got = [fresh[i] if i in fresh else self.cache[i] for i in indices]
        return torch.cat([x for x, _ in got]), torch.cat([y for _, y in got])

    def _sample(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = next(iter(DataLoader(Subset(self.data, indices), batch_size=len(indices))))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        feats = upsampled(self.upsampler, self.backbone, batch["image"], self.tile)
        target, valid = (resize_target(t, feats.shape[-2:]) for t in self.task.targets(batch))
        feats, target, valid = feats.cpu(), target.cpu(), valid.cpu()
        return [sample_pixels(feats[j], target[j], valid[j], self.settings.pixels,
                              torch.Generator().manual_seed(self.seed * 1_000_003 + i)) for j, i in enumerate(indices)]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, size = epoch_order(len(self.data), epoch, self.seed), self.settings.batch_size
        for start in range(0, len(order), size):
            yield self.pixels(order[start:start + size])


class Moments:
    """Per-channel mean and sample std of rows seen in chunks (float64 sums; no library keeps
    per-channel running moments without holding the rows)."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.double().reshape(len(rows), -1)
        self.n += len(rows)
        self.total = self.total + rows.sum(0)
        self.squares = self.squares + rows.square().sum(0)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.n
        var = (self.squares - self.n * mean.square()) / max(self.n - 1, 1)
        return mean.float(), var.clamp_min(0).sqrt().float()


class LinearProbe(nn.Module):
    """Per-channel standardisation (fitted, frozen) followed by a learned 1x1 linear map.

    Regression targets are standardised too (``y_mean``, ``y_std``), so Adam's fixed step size
    reaches metric depths of any scale within the step budget.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, outputs: int,
                 y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(1e-6))
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(max(float(y_std), 1e-6)))
        self.linear = nn.Linear(len(mean), outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std) * self.y_std + self.y_mean

    def apply_map(self, feats: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) features -> (B,outputs,h,w) predictions."""
        return self(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def fit_probe(source: PixelSource, outputs: int, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              regression: bool, progress: bool = False) -> LinearProbe:
    """One pass for the standardisation statistics, then Adam, one step per batch of images, over the epochs."""
    s, seed = source.settings, source.seed
    x_moments, y_moments = Moments(), Moments()
    for start in range(0, len(source.data), s.batch_size):
        x, y = source.pixels(list(range(start, min(start + s.batch_size, len(source.data)))))
        x_moments.add(x)
        if regression:
            y_moments.add(y.float()[:, None])
    mean, std = x_moments.mean_std()
    y_mean, y_std = (float(v) for v in y_moments.mean_std()) if regression else (0.0, 1.0)
    torch.manual_seed(seed)
    probe = LinearProbe(mean, std, outputs, y_mean, y_std)
    opt = OPTIMIZERS[s.optimizer](probe.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs) if s.lr_schedule == "cosine" else None
    steps = s.epochs * math.ceil(len(source.data) / s.batch_size)
    bar = tqdm(total=steps, desc="probe", leave=False, disable=not progress)
    for epoch in range(s.epochs):
        for x, y in source.batches(epoch):
            loss = loss_fn(probe(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update()
        if schedule is not None:
            schedule.step()
    bar.close()
    return probe.eval()


class ProbeTask(Task):
    """Fit a linear probe on the training split's features, score it on the validation split.

    The subclasses say only what differs: the targets, the loss, how a probe's output becomes a
    prediction at the label grid, and the scores.
    """

    metrics: ClassVar[dict[str, bool]]
    regression: ClassVar[bool] = False
    Settings = ProbeSettings

    @abstractmethod
    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,H,W) targets and (B,H,W) bool mask of pixels that count."""

    @abstractmethod
    def outputs(self, data: Dataset) -> int:
        """Number of probe outputs (classes, or 1 for depth)."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, outputs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B,H,W) predictions at the label grid ``size`` from the probe's (B,outputs,h,w) map."""

    @abstractmethod
    def scores(self, outputs: int) -> Scores: ...

    def recipe(self, profile: Profile) -> dict[str, Any]:
        return {**super().recipe(profile), "probe": "linear 1x1, inputs standardised per channel",
                "optimizer": OPTIMIZERS[self.settings(profile).optimizer].__name__, "image_size": list(profile.image_size), "seed": profile.seed,
                "train_targets": "nearest-resized to the feature grid",
                "standardised": "inputs per channel" + ("; regression targets" if self.regression else "")}

    def images(self, context: RunContext) -> Iterator[torch.Tensor]:
        for split in ("train", "val"):
            data = self.load_split(split, context)
            for i in range(len(data)):
                yield data[i]["image"]

    def workload(self, context: RunContext) -> Workload:
        s = self.settings(context.profile)
        train, val = (len(self.load_split(split, context)) for split in ("train", "val"))
        return Workload(train + val, train * (1 if s.feature_cache == "memory" else s.epochs + 1) + val)

    def evaluate(self, outputs: int, batches: Iterator[tuple[torch.Tensor, dict]]) -> tuple[dict[str, float], PerImage]:
        """Metric values over the validation batches of (probe output map, batch) and their per-image statistics."""
        scores = self.scores(outputs)
        with torch.no_grad():
            for mapped, batch in batches:
                target, valid = (t.cpu() for t in self.targets(batch))
                scores.update(self.predict(mapped, tuple(target.shape[-2:])).cpu(), target, valid)
        return scores.result()

    def run(self, upsampler: Upsampler, backbone: Backbone, context: RunContext) -> list[MetricRow]:
        s = self.settings(context.profile)
        train = self.load_split("train", context)
        source = PixelSource(self, upsampler, backbone, train, context, s)
        probe = fit_probe(source, self.outputs(train), self.loss, self.regression, context.progress).to(context.device)
        val = self.load_split("val", context)
        loader = DataLoader(val, batch_size=s.batch_size, shuffle=False)

        def batches() -> Iterator[tuple[torch.Tensor, dict]]:
            for batch in tqdm(loader, desc=f"{self.name} val", leave=False, disable=not context.progress):
                batch = {k: v.to(context.device) for k, v in batch.items()}
                yield upsampled(upsampler, backbone, batch["image"], context.tile, probe.apply_map), batch

        return self.rows(*self.evaluate(probe.linear.out_features, batches()))
