"""Linear 1x1 probes on frozen, upsampled features: the machinery both probe tasks share.

Recipe (REFERENCE §2, public FeatUp code): training targets are resized (nearest)
to the feature grid, so the low-res row is probed on the backbone's own grid; a
linear layer is trained with Adam; at evaluation the probe's predictions are
resized to the label grid. Two deliberate CPU-friendly choices, stored in the
recipe: the probe trains on a fixed random sample of pixels per image (the
profile's ``probe_pixels``) instead of every pixel, and its inputs are
standardised per channel with training statistics, so methods whose features
differ only in per-channel scale are probed alike.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bench.backbones import Backbone
from bench.running.context import RunContext
from bench.running.profiles import Profile
from methods.base import Upsampler
from tasks.base import MetricRow, Task

PROBE_BATCH_PIXELS = 8192


def feature_batches(
    upsampler: Upsampler, backbone: Backbone, data: Dataset, context: RunContext, desc: str
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (HR features, batch) over ``data``, features at the image size (or the grid for low_res)."""
    loader = DataLoader(data, batch_size=context.profile.batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not context.progress):
        batch = {k: v.to(context.device) for k, v in batch.items()}
        image = batch["image"]
        with torch.no_grad():
            feats = upsampler.upsample(backbone, image, tuple(image.shape[-2:]))
        yield feats.float(), batch


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a (B,H,W) target map, never mixing label values."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].to(target.dtype)


def sample_pixels(
    feats: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, n: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` valid pixels per image as rows: (N, C) features and (N,) targets."""
    xs, ys = [], []
    for f, t, v in zip(feats, target, valid):
        idx = v.flatten().nonzero().squeeze(1)
        if n is not None and idx.numel() > n:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:n]]
        xs.append(f.flatten(1)[:, idx].T)
        ys.append(t.flatten()[idx])
    return torch.cat(xs), torch.cat(ys)


class LinearProbe(nn.Module):
    """Per-channel standardisation (fitted, frozen) followed by a learned 1x1 linear map.

    Regression targets (``y`` given) are standardised too, so Adam's fixed step size
    reaches metric depths of any scale within the profile's step budget.
    """

    def __init__(self, x: torch.Tensor, outputs: int, y: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp_min(1e-6))
        self.register_buffer("y_mean", y.float().mean() if y is not None else torch.tensor(0.0))
        self.register_buffer("y_std", y.float().std().clamp_min(1e-6) if y is not None else torch.tensor(1.0))
        self.linear = nn.Linear(x.shape[1], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std) * self.y_std + self.y_mean

    def apply_map(self, feats: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) features -> (B,outputs,h,w) predictions."""
        return self(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def train_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    outputs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    lr: float,
    seed: int,
    regression: bool,
    progress: bool = False,
) -> LinearProbe:
    """Adam on random mini-batches of the sampled pixels (full batch when they are few)."""
    torch.manual_seed(seed)
    probe = LinearProbe(x, outputs, y if regression else None)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="probe", leave=False, disable=not progress):
        idx = torch.randint(len(x), (min(len(x), PROBE_BATCH_PIXELS),), generator=generator)
        loss = loss_fn(probe(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


def probe_recipe(p: Profile, kind: str) -> dict[str, Any]:
    return {
        "probe": "linear 1x1, inputs standardised per channel",
        "optimizer": "Adam",
        "lr": p.probe_lr,
        "steps": p.probe_steps,
        "batch_pixels": PROBE_BATCH_PIXELS,
        "pixels_per_image": p.probe_pixels,
        "image_size": list(p.image_size),
        "n_train": p.split_size(kind, "train"),
        "n_val": p.split_size(kind, "val"),
        "seed": p.seed,
        "train_targets": "nearest-resized to the feature grid",
        "standardised": "inputs per channel; regression targets",
    }


class ProbeTask(Task):
    """Fit a linear probe on the training split's features, score it on the validation split."""

    metrics: ClassVar[dict[str, bool]]
    regression: ClassVar[bool] = False

    @abstractmethod
    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,H,W) training targets and (B,H,W) bool mask of pixels that count."""

    @abstractmethod
    def outputs(self, data: Dataset) -> int:
        """Number of probe outputs (classes, or 1 for depth)."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(
        self, probe: LinearProbe, batches: Iterable[tuple[torch.Tensor, dict]]
    ) -> tuple[dict[str, float], dict[str, tuple[list, str]]]:
        """Metric values over the validation batches of (features, batch), and per metric the
        per-image statistics with the name of the ``bench.reporting.stats`` statistic that pools them."""

    def load_split(self, split: str, context: RunContext) -> Dataset:
        return self.load(split, context, context.profile.split_size(self.data_kind, split))

    def recipe(self, profile: Profile) -> dict[str, Any]:
        return {**super().recipe(profile), **probe_recipe(profile, self.data_kind)}

    def images(self, context: RunContext) -> Iterator[torch.Tensor]:
        for split in ("train", "val"):
            data = self.load_split(split, context)
            for i in range(len(data)):
                yield data[i]["image"]

    def run(self, upsampler: Upsampler, backbone: Backbone, context: RunContext) -> list[MetricRow]:
        p = context.profile
        generator = torch.Generator().manual_seed(p.seed)
        xs, ys = [], []
        train = self.load_split("train", context)
        for feats, batch in feature_batches(upsampler, backbone, train, context, f"{self.name} train"):
            target, valid = (resize_target(t, feats.shape[-2:]) for t in self.targets(batch))
            x, y = sample_pixels(feats, target, valid, p.probe_pixels, generator)
            xs.append(x.cpu())
            ys.append(y.cpu())
        probe = train_probe(
            torch.cat(xs), torch.cat(ys), self.outputs(train), self.loss, p.probe_steps, p.probe_lr, p.seed,
            self.regression, context.progress,
        ).to(context.device)
        val = self.load_split("val", context)
        return self.rows(*self.evaluate(probe, feature_batches(upsampler, backbone, val, context, f"{self.name} val")))
