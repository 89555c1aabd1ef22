"""torchmetrics Metrics the tasks need that torchmetrics does not ship (CAM faithfulness, δ < 1.25),
and the dense-prediction scores the probe and end-to-end tasks share.

Each Metric keeps summed states and the per-image pairs as metric states (so it accumulates over batches
and syncs or merges across processes like any torchmetrics Metric) and offers ``per_image``: those
(numerator, denominator) pairs, which the report's bootstrap pools with ``bench.reporting.stats.percent_from_sums`` / ``ratio_from_sums``.
"""
from __future__ import annotations

import torch
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


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
        self.add_state("pairs", [], dist_reduce_fx="cat")  # (n, 2) per batch: per-image (numerator, denominator)

    def add(self, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        self.numerator += numerator.double().sum()
        self.denominator += denominator.double().sum()
        self.pairs.append(torch.stack([numerator.double().flatten(), denominator.double().flatten()], dim=1).cpu())

    def compute(self) -> torch.Tensor:
        return 100 * self.numerator / self.denominator.clamp_min(1)

    def per_image(self) -> list[list[float]]:
        """The per-image (numerator, denominator) pairs, in the order the images came (gathered across
        processes when synced, as the sums are)."""
        pairs = self.pairs if isinstance(self.pairs, torch.Tensor) else (torch.cat(self.pairs) if self.pairs else None)
        return [] if pairs is None else pairs.tolist()


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


PerImage = dict[str, tuple[list, str]]
"""Metric name -> (per-image statistics, the ``bench.reporting.stats.STATISTICS`` name that pools them)."""


class SegmentationScores:
    """mIoU, mAcc and aAcc in percent (torchmetrics) over labelled pixels, with each image's confusion
    matrix kept for the bootstrap. ``names`` maps the task's metric names to "miou", "macc" or "aacc"."""

    KINDS = {"miou": ("macro", MulticlassJaccardIndex, "miou_confusion"),
             "macc": ("macro", MulticlassAccuracy, "macc_confusion"),
             "aacc": ("micro", MulticlassAccuracy, "percent_sums")}

    def __init__(self, classes: int, names: dict[str, str]) -> None:
        self.classes, self.names = classes, names
        self.metrics = MetricCollection({name: self.KINDS[kind][1](classes, average=self.KINDS[kind][0])
                                         for name, kind in names.items()}, compute_groups=False)
        self.confusions: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> None:
        """(B,H,W) predicted and true class maps, (B,H,W) bool mask of labelled pixels."""
        self.metrics.update(pred[valid], label[valid])
        self.confusions.extend(confusion_matrices(pred, label, valid, self.classes))

    def result(self) -> tuple[dict[str, float], PerImage]:
        values = {k: 100 * v.item() for k, v in self.metrics.compute().items()}
        confusions = [c.tolist() for c in self.confusions]
        per_image = {name: ([[int(c.trace()), int(c.sum())] for c in self.confusions] if kind == "aacc" else confusions,
                            self.KINDS[kind][2]) for name, kind in self.names.items()}
        return values, per_image


def confusion_matrices(pred: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, K, K) per-image confusion counts [true, predicted] over the ``valid`` pixels: the bootstrap's statistics."""
    out = torch.zeros(len(label), classes, classes, dtype=torch.int64)
    for i, (p, t, v) in enumerate(zip(pred, label, valid)):
        out[i] = torch.bincount(t[v] * classes + p[v], minlength=classes * classes).view(classes, classes)
    return out


class DepthScores:
    """RMSE (m) and δ < 1.25 over valid pixels, with per-image sums for the bootstrap."""

    def __init__(self) -> None:
        self.rmse, self.delta = MeanSquaredError(squared=False), DeltaAccuracy(1.25)
        self.squared: list[list[float]] = []

    def update(self, pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> None:
        """(B,H,W) predicted and true depth, (B,H,W) bool mask of valid pixels."""
        self.rmse.update(pred[valid], depth[valid])
        self.delta.update(pred, depth, valid)
        self.squared += [[float(((p[v] - g[v]) ** 2).double().sum()), int(v.sum())] for p, g, v in zip(pred, depth, valid)]

    def result(self) -> tuple[dict[str, float], PerImage]:
        return ({"rmse": self.rmse.compute().item(), "delta1.25": self.delta.compute().item()},
                {"rmse": (self.squared, "rmse_sums"), "delta1.25": (self.delta.per_image(), "ratio_sums")})

