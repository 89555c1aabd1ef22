"""Every metric's per-image statistics on asymmetric examples whose answers were computed by hand.

A table's value comes from the metric; its interval comes from pooling the per-image statistics
(bench.reporting.stats). Both must say the same thing: pooling all images gives the reported value, and
pooling one image gives that image's own value. The examples are asymmetric on purpose (a confusion
matrix that is not symmetric, recall unequal to precision), so statistics stored the wrong way round
(predictions and targets swapped) change the pooled mAcc and fail here though mIoU and aAcc do not move.
"""
import numpy as np
import pytest
import torch

from bench.reporting.stats import STATISTICS
from tasks.metrics import AverageDrop, AverageIncrease, DepthScores, SegmentationScores

# Two 2x3 images, 3 classes, 255 = unlabelled. Image 0: true [[0,0,1],[1,2,255]], predicted [[0,1,1],[1,1,0]].
LABEL = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 2], [0, 1, 1]]])
PRED = torch.tensor([[[0, 1, 1], [1, 1, 0]], [[2, 0, 2], [0, 1, 2]]])
# By hand, [true, predicted] counts over labelled pixels:
CONFUSION = [np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]]),  # image 0: true 0 -> 0, 1; true 1 -> 1, 1; true 2 -> 1
             np.array([[1, 0, 0], [0, 1, 1], [1, 0, 2]])]  # image 1: true 2 -> 2, 0, 2; true 0 -> 0; true 1 -> 1, 2
# Pooled [[2,1,0],[0,3,1],[1,1,2]]: IoU 2/4, 3/6, 2/5; recall 2/3, 3/4, 2/4; 7 of 11 right.
POOLED = {"miou": 100 * (2 / 4 + 3 / 6 + 2 / 5) / 3, "macc": 100 * (2 / 3 + 3 / 4 + 2 / 4) / 3, "aacc": 100 * 7 / 11}
# Image 0 alone: IoU 1/2, 2/4, 0/1 (class 2 true once, never predicted); recall 1/2, 2/2, 0/1; 3 of 5.
# Image 1 alone: IoU 1/2, 1/2, 2/4; recall 1/1, 1/2, 2/3; 4 of 6.
ALONE = [{"miou": 100 * (1 / 2 + 2 / 4 + 0) / 3, "macc": 100 * (1 / 2 + 1 + 0) / 3, "aacc": 100 * 3 / 5},
         {"miou": 100 * (1 / 2 + 1 / 2 + 2 / 4) / 3, "macc": 100 * (1 + 1 / 2 + 2 / 3) / 3, "aacc": 100 * 4 / 6}]


def test_segmentation_per_image_statistics_pool_to_the_reported_values():
    scores = SegmentationScores(3, {"miou": "miou", "macc": "macc", "aacc": "aacc"})
    valid = LABEL != 255
    scores.update(PRED[:1], LABEL[:1], valid[:1])  # two batches, as a task feeds them
    scores.update(PRED[1:], LABEL[1:], valid[1:])
    values, per_image = scores.result()
    for name, expected in POOLED.items():
        stats, statistic = per_image[name]
        assert values[name] == pytest.approx(expected, abs=1e-4)
        assert STATISTICS[statistic](np.asarray(stats, dtype=np.float64)) == pytest.approx(expected)
        for i, alone in enumerate(ALONE):
            assert STATISTICS[statistic](np.asarray(stats[i:i + 1], dtype=np.float64)) == pytest.approx(alone[name])
    for stored, by_hand in zip(per_image["miou"][0], CONFUSION):
        np.testing.assert_array_equal(np.asarray(stored), by_hand)
    assert per_image["aacc"][0] == [[3, 5], [4, 6]]


def test_depth_per_image_statistics_pool_to_the_reported_values():
    # image 0: errors 1, 0, 2 over 3 valid pixels (the 4th invalid); image 1: error 3 over 1 valid pixel
    depth = torch.tensor([[[2.0, 4.0], [1.0, 8.0]], [[3.0, 5.0], [6.0, 7.0]]])
    pred = torch.tensor([[[3.0, 4.0], [3.0, 1.0]], [[6.0, 5.0], [6.0, 7.0]]])
    valid = torch.tensor([[[True, True], [True, False]], [[True, False], [False, False]]])
    scores = DepthScores()
    scores.update(pred, depth, valid)
    values, per_image = scores.result()
    rmse = np.sqrt((1 + 0 + 4 + 9) / 4)
    # δ: ratios 1.5, 1, 3 | 2 -> only 4.0/4.0 is under 1.25
    assert values["rmse"] == pytest.approx(rmse, rel=1e-6) and values["delta1.25"] == pytest.approx(1 / 4)
    (sq, sq_stat), (hits, hit_stat) = per_image["rmse"], per_image["delta1.25"]
    assert sq == [[5.0, 3], [9.0, 1]] and hits == [[1.0, 3.0], [0.0, 1.0]]
    assert STATISTICS[sq_stat](np.asarray(sq)) == pytest.approx(rmse)
    assert STATISTICS[sq_stat](np.asarray(sq[:1])) == pytest.approx(np.sqrt(5 / 3))
    assert STATISTICS[sq_stat](np.asarray(sq[1:])) == pytest.approx(3.0)
    assert STATISTICS[hit_stat](np.asarray(hits)) == pytest.approx(1 / 4)
    assert STATISTICS[hit_stat](np.asarray(hits[:1])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("protocol", ["standard", "relevance"])
def test_cam_per_image_statistics_pool_to_the_reported_values(protocol):
    y, o = torch.tensor([0.8, 0.5, 0.2, 0.6]), torch.tensor([0.4, 0.5, 0.3, 0.0])
    drop, increase = AverageDrop(protocol), AverageIncrease(protocol)
    drop.update(y, o)
    increase.update(y, o)
    # drops 0.5, 0, 0 (it rose), 1.0; the relevance protocol averages over the two whose score fell
    expected_ad = 100 * 1.5 / 4 if protocol == "standard" else 100 * 1.5 / 2
    # rose: image 2 only; relevance also counts image 1 (level)
    expected_ai = 25.0 if protocol == "standard" else 50.0
    for metric, expected in ((drop, expected_ad), (increase, expected_ai)):
        pairs = np.asarray(metric.per_image())
        assert metric.compute().item() == pytest.approx(expected)
        assert STATISTICS["percent_sums"](pairs) == pytest.approx(expected)
    ad_pairs = np.asarray(drop.per_image())
    assert STATISTICS["percent_sums"](ad_pairs[:1]) == pytest.approx(50.0)  # image 0 alone: half its score lost
    assert STATISTICS["percent_sums"](np.asarray(increase.per_image())[2:3]) == pytest.approx(100.0)
