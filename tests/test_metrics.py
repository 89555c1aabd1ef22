"""The probe metrics against brute-force numpy formulas."""
import numpy as np
import pytest
import torch

from bench.reporting.stats import STATISTICS
from tasks.probe_depth import ProbeDepth
from tasks.probe_seg import IGNORE, ProbeSeg


def brute_force_seg(pred: np.ndarray, label: np.ndarray, classes: int) -> tuple[float, float]:
    keep = label != IGNORE
    p, t = pred[keep], label[keep]
    ious = []
    for c in range(classes):
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(np.sum((p == c) & (t == c)) / union)
    return 100 * float(np.mean(ious)), 100 * float(np.mean(p == t))


def test_seg_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    classes = 5
    label = rng.integers(0, classes - 1, size=(3, 8, 10))  # class 4 never in labels, only predicted
    label[:, :2] = IGNORE
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, classes, size=label.shape))
    pred[pred == IGNORE] = 0
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), classes).permute(0, 3, 1, 2).float()
    batches = [(logits[i : i + 2], {"label": torch.from_numpy(label[i : i + 2])}) for i in (0, 2)]
    got, per_image = ProbeSeg().evaluate(classes, batches)
    miou, acc = brute_force_seg(pred, label, classes)
    assert abs(got["miou"] - miou) < 1e-3 and abs(got["acc"] - acc) < 1e-3
    # the stored per-image statistics pool back to the same numbers, image by image
    assert len(per_image["miou"][0]) == 3
    for key, brute in (("miou", miou), ("acc", acc)):
        stats, name = per_image[key]
        assert abs(STATISTICS[name](np.array(stats)) - brute) < 1e-3
    first = brute_force_seg(pred[:1], label[:1], classes)
    assert abs(STATISTICS["miou_confusion"](np.array(per_image["miou"][0][:1])) - first[0]) < 1e-3


def test_depth_metrics_match_brute_force():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.5, 5, size=(2, 6, 7)).astype(np.float32)
    pred = (gt * rng.uniform(0.7, 1.4, size=gt.shape)).astype(np.float32)
    valid = rng.random(gt.shape) > 0.2
    batch = {"depth": torch.from_numpy(gt), "valid": torch.from_numpy(valid)}
    got, per_image = ProbeDepth().evaluate(1, [(torch.from_numpy(pred)[:, None], batch)])
    p, t = pred[valid], gt[valid]
    assert abs(got["rmse"] - np.sqrt(np.mean((p - t) ** 2))) < 1e-5
    assert abs(got["delta1.25"] - np.mean(np.maximum(p / t, t / p) < 1.25)) < 1e-6
    for key in ("rmse", "delta1.25"):
        stats, name = per_image[key]
        assert len(stats) == 2 and abs(STATISTICS[name](np.array(stats)) - got[key]) < 1e-5
    p0, t0 = pred[0][valid[0]], gt[0][valid[0]]
    assert abs(STATISTICS["rmse_sums"](np.array(per_image["rmse"][0][:1])) - np.sqrt(np.mean((p0 - t0) ** 2))) < 1e-5


def test_cam_metrics_merge_their_per_image_pairs_as_their_sums():
    """Each process's AverageDrop holds its images' (drop, 1) pairs as a metric state: merged (as a sync across
    processes merges them), the pairs are every image's and the score is their pooled ratio."""
    from tasks.metrics import AverageDrop

    here, there = AverageDrop(), AverageDrop()
    here.update(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))  # drops 0.5 and 0 (the score rose)
    there.update(torch.tensor([0.9]), torch.tensor([0.3]))  # drop 2/3
    here.merge_state(there)
    np.testing.assert_allclose(sorted(here.per_image()), [[0.0, 1.0], [0.5, 1.0], [2 / 3, 1.0]], rtol=1e-6)
    assert here.compute().item() == pytest.approx(100 * (0.5 + 0 + 2 / 3) / 3)
    here.reset()
    assert here.per_image() == []
