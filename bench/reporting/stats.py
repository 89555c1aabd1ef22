"""Statistics for comparing our table with the paper's, and for telling real differences from noise.

Rank agreement (``kendall_tau``, ``discordant_pairs``) says whether we reproduce the paper's
*ordering* of methods even where absolute numbers differ. The bootstrap over images
(``bootstrap_interval``, ``paired_bootstrap_difference``) gives error bars for metrics that are
not averages of per-image values (mIoU from summed confusion matrices, RMSE from summed squared
errors), so each image contributes sufficient statistics and the metric is recomputed per
resample. Mean and sd over seeds are left to pandas (``Series.mean()``, ``Series.std()``).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

Statistic = Callable[[np.ndarray], float]


def _common(ours: pd.Series, paper: pd.Series) -> pd.DataFrame:
    """The methods both series score (NaN in either dropped), in ``ours``' order."""
    for name, s in (("ours", ours), ("paper", paper)):
        if not s.index.is_unique:
            raise ValueError(f"{name}: method names must be unique, got duplicates "
                             f"{sorted(map(str, s.index[s.index.duplicated()]))}")
    both = pd.DataFrame({"ours": ours, "paper": paper.reindex(ours.index)}, index=ours.index)
    return both.dropna().astype(float)


def kendall_tau(ours: pd.Series, paper: pd.Series) -> tuple[float, int]:
    """Kendall's tau-b between two scorings of the same methods, and how many methods it used.

    Says whether we reproduce the paper's ordering even when the absolute numbers differ.
    The index is the method name; only methods with a value in both count. Raw values are
    compared, so pass two metrics of the same direction (both higher- or both lower-is-better).
    Ties are handled as tau-b (scipy's default); fewer than 2 common methods, or a constant
    side, give NaN.
    """
    both = _common(ours, paper)
    n = len(both)
    if n < 2:
        return math.nan, n
    return float(kendalltau(both["ours"], both["paper"]).statistic), n


def discordant_pairs(ours: pd.Series, paper: pd.Series) -> list[tuple[str, str]]:
    """The pairs of methods the two scorings order differently, so a report can name them.

    Each pair ``(a, b)`` has ``ours[a] > ours[b]`` but ``paper[a] < paper[b]``; pairs tied in
    either are not discordant. Listed by ``ours`` from largest value down (stable for ties).
    Their count is tau's n_d: with no ties, tau = 1 - 4 * len(pairs) / (n * (n - 1)).
    """
    both = _common(ours, paper).sort_values("ours", ascending=False, kind="stable")
    names, o, p = list(both.index), both["ours"].to_numpy(), both["paper"].to_numpy()
    return [(str(names[i]), str(names[j]))
            for i in range(len(names)) for j in range(i + 1, len(names))
            if o[i] > o[j] and p[i] < p[j]]


# ---------------------------------------------------------------- metrics of summed statistics

def miou_from_summed_confusions(conf: np.ndarray) -> np.ndarray:
    """mIoU in percent of confusion matrices ``(..., K, K)`` already summed over images.

    Matches torchmetrics' ``MulticlassJaccardIndex(average="macro")``: a class absent from both
    labels and predictions (empty row and column) is left out of the mean, one that only
    appears in predictions (or only in labels) counts with IoU 0. NaN if no class is present.
    Batched over leading axes so the bootstrap can evaluate all resamples at once.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(-1) + conf.sum(-2) - tp
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
        return 100.0 * iou.sum(-1) / present.sum(-1)


def macc_from_summed_confusions(conf: np.ndarray) -> np.ndarray:
    """Mean class accuracy (recall) in percent of confusion matrices ``(..., K, K)`` summed over images.

    Matches torchmetrics' ``MulticlassAccuracy(average="macro")``: a class absent from both labels
    and predictions is left out, one only predicted counts with accuracy 0. Batched like mIoU.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp, support = np.diagonal(conf, axis1=-2, axis2=-1), conf.sum(-1)
    present = (support + conf.sum(-2)) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / np.where(support > 0, support, 1.0), 0.0)
        return 100.0 * np.where(present, recall, 0.0).sum(-1) / present.sum(-1)


def rmse_from_summed(sums: np.ndarray) -> np.ndarray:
    """RMSE of ``(..., 2)`` arrays of [sum of squared errors, count] already summed over images.

    RMSE pools pixels across images (sqrt of total squared error over total count), so it is
    not a mean of per-image RMSEs; NaN for a zero count. Batched over leading axes.
    """
    sums = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sums[..., 0] / sums[..., 1])


def sum_statistic(of_sums: Callable[[np.ndarray], np.ndarray]) -> Statistic:
    """A per-image statistic that depends on the images only through their sum along axis 0.

    ``of_sums`` must accept a leading batch axis. The bootstrap recognises such statistics
    (they carry ``of_sums``) and forms every resample's sum as one matrix product of
    multiplicity counts with the per-image rows instead of gathering n_boot copies.
    """
    def statistic(per_image: np.ndarray) -> float:
        return float(of_sums(np.asarray(per_image).sum(0)))

    statistic.of_sums = of_sums  # type: ignore[attr-defined]
    return statistic


def miou_from_confusions(conf: np.ndarray) -> float:
    """mIoU in percent of per-image confusion matrices ``(n_images, K, K)`` (summed first).

    mIoU is computed from the pooled confusion matrix, not averaged per image; see
    ``miou_from_summed_confusions`` for how absent classes are treated (as torchmetrics does).
    """
    return float(miou_from_summed_confusions(np.asarray(conf).sum(0)))


def macc_from_confusions(conf: np.ndarray) -> float:
    """Mean class accuracy in percent of per-image confusion matrices ``(n_images, K, K)`` (summed first)."""
    return float(macc_from_summed_confusions(np.asarray(conf).sum(0)))


def rmse_from_sums(sums: np.ndarray) -> float:
    """RMSE from per-image ``(n_images, 2)`` rows of [sum of squared errors, valid pixel count]."""
    return float(rmse_from_summed(np.asarray(sums).sum(0)))


miou_from_confusions.of_sums = miou_from_summed_confusions  # type: ignore[attr-defined]
macc_from_confusions.of_sums = macc_from_summed_confusions  # type: ignore[attr-defined]
rmse_from_sums.of_sums = rmse_from_summed  # type: ignore[attr-defined]


def ratio_from_summed(sums: np.ndarray) -> np.ndarray:
    """[hits, count] arrays ``(..., 2)`` already summed over images -> hits / count."""
    sums = np.asarray(sums, dtype=np.float64)
    return sums[..., 0] / sums[..., 1]


ratio_from_sums = sum_statistic(ratio_from_summed)
"""A pooled fraction (pixel accuracy, δ<1.25) from per-image rows of [hits, count]."""
percent_from_sums = sum_statistic(lambda sums: 100 * ratio_from_summed(sums))
"""The same pooled fraction in percent."""

STATISTICS: dict[str, Statistic] = {
    "miou_confusion": miou_from_confusions, "macc_confusion": macc_from_confusions, "rmse_sums": rmse_from_sums,
    "ratio_sums": ratio_from_sums, "percent_sums": percent_from_sums,
}
"""Names under which a task stores how its per-image statistics give the metric (``MetricRow.statistic``)."""


# ------------------------------------------------------------------------------- the bootstrap

def bootstrap_indices(n_images: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """All resamples at once: ``default_rng(seed).integers(0, n_images, (n_boot, n_images))``.

    Public so the draws are reproducible outside this module (and by the tests).
    """
    if n_images < 1 or n_boot < 1:
        raise ValueError(f"need at least one image and one resample, got {n_images=} {n_boot=}")
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


def replicates(per_image: np.ndarray, statistic: Statistic, idx: np.ndarray) -> np.ndarray:
    """The statistic of each resample ``per_image[idx[b]]``, vectorised for sum statistics."""
    of_sums = getattr(statistic, "of_sums", None)
    if of_sums is None:
        return np.array([statistic(per_image[rows]) for rows in idx], dtype=np.float64)
    n_boot, n = idx.shape
    # counts[b, i] = how often image i is in resample b; sums = counts @ rows. Float64 is exact
    # for integer counts below 2**53, so confusion-matrix sums equal the gathered ones.
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    flat = per_image.reshape(n, -1).astype(np.float64)
    sums = (counts.reshape(n_boot, n).astype(np.float64) @ flat).reshape(n_boot, *per_image.shape[1:])
    return np.asarray(of_sums(sums), dtype=np.float64)


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap_interval(per_image: np.ndarray, statistic: Statistic, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over images.

    ``per_image`` holds one sub-array of sufficient statistics per image along axis 0 (e.g.
    ``(n_images, K, K)`` confusions or ``(n_images, 2)`` squared-error sums); ``statistic``
    takes such an array resampled along axis 0 with replacement and returns the metric.
    Resampling images rather than pixels keeps the within-image correlation in the error bar.
    Draws come from ``bootstrap_indices(n_images, n_boot, seed)``; a NaN replicate makes the
    interval NaN rather than silently shrinking it.
    """
    per_image = np.asarray(per_image)
    idx = bootstrap_indices(len(per_image), n_boot, seed)
    return percentile_interval(replicates(per_image, statistic, idx), level)


def paired_bootstrap_difference(a_per_image: np.ndarray, b_per_image: np.ndarray,
                                statistic: Statistic, n_boot: int = 1000, seed: int = 0,
                                level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(a) - statistic(b)`` over the same resampled images.

    Pairing (one set of drawn images for both methods) cancels the image-to-image difficulty
    both methods share, so the interval is much tighter than comparing two separate ones; a
    difference from bilinear is significant at ``level`` when the interval excludes 0. Row i
    of ``a`` and ``b`` must be the same image.
    """
    a, b = np.asarray(a_per_image), np.asarray(b_per_image)
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same images for both: {len(a)} vs {len(b)} rows")
    idx = bootstrap_indices(len(a), n_boot, seed)
    return percentile_interval(replicates(a, statistic, idx) - replicates(b, statistic, idx), level)
