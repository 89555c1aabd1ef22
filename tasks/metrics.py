"""torchmetrics Metrics the tasks need that torchmetrics does not ship: CAM faithfulness and δ < 1.25.

Each keeps summed states (so it accumulates over batches and syncs across processes like any
torchmetrics Metric) and offers ``per_image``: the per-image (numerator, denominator) pairs the
report's bootstrap pools with ``bench.reporting.stats.percent_from_sums`` / ``ratio_from_sums``.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

CAM_PROTOCOLS = ("standard", "relevance")
"""standard: Grad-CAM++'s A.D./A.I. over all images, the image multiplied by its CAM; relevance: the
Relevance-CAM code's, the top 50% of CAM pixels kept, A.D. over the images whose score dropped, O >= Y."""


def check_protocol(protocol: str) -> str:
    if protocol not in CAM_PROTOCOLS:
        raise ValueError(f"CAM protocol {protocol!r}: expected one of {', '.join(CAM_PROTOCOLS)}")
    return protocol


class _SumRatio(Metric):
    """100 * sum of numerators / sum of denominators, with the per-image pairs kept for intervals."""

    full_state_update = False
    higher_is_better: bool

    def __init__(self) -> None:
        super().__init__()
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.pairs: list[list[float]] = []

    def add(self, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        self.numerator += numerator.double().sum()
        self.denominator += denominator.double().sum()
        self.pairs += [[float(n), float(d)] for n, d in zip(numerator, denominator)]

    def compute(self) -> torch.Tensor:
        return 100 * self.numerator / self.denominator.clamp_min(1)

    def reset(self) -> None:
        super().reset()
        self.pairs = []

    def per_image(self) -> list[list[float]]:
        return self.pairs


class _CamMetric(_SumRatio):
    """A CAM faithfulness metric under one of CAM_PROTOCOLS."""

    def __init__(self, protocol: str = "standard") -> None:
        super().__init__()
        self.protocol = check_protocol(protocol)


class AverageDrop(_CamMetric):
    """A.D. = 100 * mean of max(0, Y - O) / Y: how much of the class score the CAM-masked image loses.

    ``y`` is the softmax score of the class on the image, ``o`` on the masked image. Standard: the mean
    over all images; relevance: over the images whose score dropped.
    """

    higher_is_better = False

    def update(self, y: torch.Tensor, o: torch.Tensor) -> None:
        drop = (y - o).clamp_min(0) / y
        counted = torch.ones_like(y) if self.protocol == "standard" else (o < y).to(y)
        self.add(drop * counted, counted)


class AverageIncrease(_CamMetric):
    """A.I. = 100 * fraction of images whose class score rises when masked by the CAM (relevance: or stays)."""

    higher_is_better = True

    def update(self, y: torch.Tensor, o: torch.Tensor) -> None:
        rose = o > y if self.protocol == "standard" else o >= y
        self.add(rose.to(y), torch.ones_like(y))


class ADCC(_SumRatio):
    """ADCC (Poppi et al. 2021) = 100 * mean over images of 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - drop)).

    coherency: (Pearson correlation of the CAM with the CAM of the CAM-masked image + 1) / 2;
    complexity: the CAM's mean (its L1 norm over the pixels); drop: max(0, Y - O) / Y. An image
    with a zero term (its score gone, a CAM that is all ones, or coherency 0) scores 0.
    """

    higher_is_better = True

    def update(self, y: torch.Tensor, o: torch.Tensor, coherency: torch.Tensor, complexity: torch.Tensor) -> None:
        drop = (y - o).clamp_min(0) / y
        terms = torch.stack([coherency, 1 - complexity, 1 - drop])
        score = torch.where((terms > 1e-8).all(0), 3 / (1 / terms.clamp_min(1e-8)).sum(0), torch.zeros_like(y))
        self.add(score, torch.ones_like(y))


class DeltaAccuracy(_SumRatio):
    """δ < threshold: the fraction of valid pixels with max(pred/gt, gt/pred) < threshold, as a ratio."""

    higher_is_better = True

    def __init__(self, threshold: float = 1.25) -> None:
        super().__init__()
        self.threshold = threshold

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """(B,H,W) predicted and true depth, (B,H,W) bool mask; per image (hits, valid pixels)."""
        ratio = torch.maximum(pred / target, target / pred)
        hits = ((ratio < self.threshold) & valid).flatten(1).sum(1)
        self.add(hits, valid.flatten(1).sum(1))

    def compute(self) -> torch.Tensor:
        return self.numerator / self.denominator.clamp_min(1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of each pair of maps (0 where either map is constant)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-30), torch.zeros_like(denominator))
