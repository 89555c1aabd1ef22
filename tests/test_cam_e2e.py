"""CAM faithfulness and end-to-end segmentation: metrics by hand, a faithfulness property of the real
classifier, FLOP and parameter counts of a known model, end-to-end training on scenes, task settings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from bench.data import load_dataset
from bench.reporting.stats import macc_from_confusions
from bench.running.context import RunContext
from bench.running.profiles import PROFILES
from bench.running.runner import plan
from methods.bilinear import Bilinear
from tasks.cam import Cam, cam_mask, cam_of, class_probs
from tasks.e2e_seg import Decoder, E2ESeg, fit_decoder, model_gflops
from tasks.metrics import ADCC, AverageDrop, AverageIncrease, DeltaAccuracy

Y = torch.tensor([0.8, 0.5, 0.2, 0.6])
O = torch.tensor([0.4, 0.5, 0.3, 0.0])


def test_average_drop_and_increase_by_hand_for_both_protocols():
    # drops: 0.5, 0, 0 (rose), 1.0; standard over 4 images, relevance over the 2 that dropped
    standard, relevance = AverageDrop("standard"), AverageDrop("relevance")
    standard.update(Y[:2], O[:2])
    standard.update(Y[2:], O[2:])
    relevance.update(Y, O)
    assert standard.compute().item() == pytest.approx(100 * 1.5 / 4)
    assert relevance.compute().item() == pytest.approx(100 * 1.5 / 2)
    rose, rose_or_same = AverageIncrease("standard"), AverageIncrease("relevance")
    rose.update(Y, O)
    rose_or_same.update(Y, O)
    assert rose.compute().item() == pytest.approx(25.0)  # only image 2 rose
    assert rose_or_same.compute().item() == pytest.approx(50.0)  # image 1 stayed level
    assert standard.per_image() == [[0.5, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
    standard.reset()
    standard.update(Y[:1], O[:1])
    assert standard.per_image() == [[0.5, 1.0]] and standard.compute().item() == pytest.approx(50.0)


def test_adcc_by_hand():
    coherency, complexity = torch.tensor([0.9, 0.5, 0.7, 0.8]), torch.tensor([0.3, 0.2, 0.1, 0.4])
    adcc = ADCC()
    adcc.update(Y.double(), O.double(), coherency.double(), complexity.double())
    drops = [0.5, 0.0, 0.0, 1.0]
    expected = [3 / (1 / c + 1 / (1 - x) + 1 / (1 - d)) if d < 1 else 0.0
                for c, x, d in zip(coherency.tolist(), complexity.tolist(), drops)]
    assert adcc.compute().item() == pytest.approx(100 * np.mean(expected))
    with pytest.raises(ValueError, match="CAM protocol 'median'"):
        AverageDrop("median")


def test_delta_accuracy_by_brute_force():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 5, 6, generator=g) + 0.5, torch.rand(2, 5, 6, generator=g) + 0.5
    valid = torch.rand(2, 5, 6, generator=g) > 0.3
    metric = DeltaAccuracy()
    metric.update(pred, target, valid)
    hits = [max(p / t, t / p) < 1.25 for p, t, v in zip(pred.flatten().tolist(), target.flatten().tolist(),
                                                          valid.flatten().tolist()) if v]
    assert metric.compute().item() == pytest.approx(sum(hits) / len(hits))


def test_mean_class_accuracy_matches_torchmetrics():
    g = torch.Generator().manual_seed(1)
    label, pred = torch.randint(0, 5, (3, 8, 8), generator=g), torch.randint(0, 6, (3, 8, 8), generator=g)
    label[0, 0] = 255
    reference = MulticlassAccuracy(7, average="macro", ignore_index=255)
    reference.update(pred, label)
    valid = label != 255
    conf = np.zeros((3, 7, 7))
    for i in range(3):
        np.add.at(conf[i], (label[i][valid[i]].numpy(), pred[i][valid[i]].numpy()), 1)
    assert macc_from_confusions(conf) == pytest.approx(100 * reference.compute().item(), abs=1e-4)


@pytest.fixture(scope="module")
def cam_context(tmp_path_factory):
    return RunContext(PROFILES.get("smoke"), cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_masking_with_the_cam_keeps_more_class_score_than_its_inverse(lite0, cam_context):
    # 224 px and 16 training photos: the smoke sizes (96x128, 8) leave a 3x4 grid and a weak classifier
    profile = PROFILES.get("smoke").with_overrides(image_size=(224, 224), task_settings={"cam": {"n_train": 16}})
    context = dataclasses.replace(cam_context, profile=profile)
    task = Cam()
    head = task.head(lite0, context)
    photos = task.load("val", context, 6)
    image = torch.stack([photos[i]["image"] for i in range(len(photos))])
    with torch.no_grad():
        top = class_probs(lite0, head, image).argmax(1)
        cam = cam_of(Bilinear(), lite0, head, image, top)

        def score(mask):
            return class_probs(lite0, head, image * mask[:, None]).gather(1, top[:, None])[:, 0]

        kept, inverted = score(cam_mask(cam, "standard")), score(cam_mask(1 - cam, "standard"))
    print("kept", kept.tolist(), "inverted", inverted.tolist())
    # a statistical property of a linear classifier trained on 16 photos: measured 5 of 6 photos, mean +0.17
    assert len(image) == 6 and (kept > inverted).sum() >= 4 and (kept - inverted).mean() > 0.05


def test_a_cam_computed_in_tiles_equals_the_whole_one(lite0, cam_context):
    task = Cam()
    head = task.head(lite0, cam_context)
    image = torch.stack([task.load("val", cam_context, 2)[i]["image"] for i in range(2)])
    tiled = Bilinear()
    tiled.tile = 40  # 96 x 128 images: tiles at image borders and inside, the last ones shorter
    with torch.no_grad():
        top = class_probs(lite0, head, image).argmax(1)
        torch.testing.assert_close(cam_of(tiled, lite0, head, image, top), cam_of(Bilinear(), lite0, head, image, top),
                                   atol=1e-5, rtol=1e-5)


def test_cam_task_scores_both_protocols(lite0, cam_context):
    rows = {}
    for protocol in ("standard", "relevance"):
        profile = PROFILES.get("smoke")
        profile = profile.with_overrides(task_settings={**profile.task_settings,
                                                        "cam": {**profile.task_settings["cam"], "protocol": protocol}})
        rows[protocol] = {r.metric: r for r in Cam().run(Bilinear(), lite0, dataclasses.replace(cam_context, profile=profile))}
        assert Cam().recipe(profile)["settings"]["protocol"] == protocol
    for r in rows["standard"].values():
        assert 0 <= r.value <= 100 and len(r.per_image) == 4 and r.statistic == "percent_sums"


class StubBackbone(nn.Module):
    """Average-pooled colour, 3 channels at stride 8: no multiply-adds of its own."""

    name, stride, dim = "stub", 8, 3

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(image, 8)


def test_flops_and_params_of_a_known_model():
    backbone, decoder = StubBackbone(), Decoder(3, 5)
    image = torch.rand(2, 3, 32, 48)
    pixels = 32 * 48
    assert model_gflops(Bilinear(), backbone, decoder, image) * 1e9 == 2 * pixels * (3 * 128 + 128 * 5)
    assert sum(p.numel() for p in decoder.parameters()) == 3 * 128 + 128 + 128 * 5 + 5


def test_end_to_end_training_lowers_the_loss_and_beats_a_constant_predictor(lite0):
    train = load_dataset("scenes", "train", (96, 128), limit=8)
    val = load_dataset("scenes", "val", (96, 128), limit=4)
    settings = E2ESeg.Settings(steps=40, batch_size=4, lr=3e-3)
    decoder, losses = fit_decoder(Bilinear(), lite0, train, settings, seed=0, device=torch.device("cpu"))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    context = RunContext(PROFILES.get("smoke"), progress=False)
    rows = {r.metric: r.value for r in E2ESeg().evaluate(Bilinear(), lite0, decoder, val, context)}
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    counts = torch.bincount(labels[labels != 255].flatten())
    constant_miou = 100 * counts.max().item() / counts.sum().item() / (counts > 0).sum().item()
    print(rows, "constant predictor mIoU", constant_miou)
    assert rows["miou"] > constant_miou and rows["params"] > 0 and rows["gflops"] > 0


def test_a_changed_task_setting_rehashes_only_that_tasks_cells(cam_context):
    def hashes(profile):
        context = dataclasses.replace(cam_context, profile=profile)
        return {(c.task, c.method): c.config_hash(r) for c, r in plan(["bilinear"], ["cam", "probe_seg"], "x", context)}

    smoke = PROFILES.get("smoke")
    changed = smoke.with_overrides(task_settings={**smoke.task_settings, "cam": {"n_val": 3}})
    before, after = hashes(smoke), hashes(changed)
    assert before[("cam", "bilinear")] != after[("cam", "bilinear")]
    assert before[("probe_seg", "bilinear")] == after[("probe_seg", "bilinear")]
    with pytest.raises(ValueError, match="no such setting"):
        Cam().settings(smoke.with_overrides(task_settings={"cam": {"images": 3}}))


def write_jpeg(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 50, 3), colour, dtype=np.uint8)).save(path)


def test_imagenet_folder_in_both_published_layouts(tmp_path):
    from scipy.io import savemat

    from bench.data.folders import imagenet_wnids

    wnids = imagenet_wnids()
    nested = tmp_path / "nested"
    write_jpeg(nested / "val" / wnids[285] / "a.JPEG", 10)
    write_jpeg(nested / "val" / wnids[1] / "b.JPEG", 20)
    data = load_dataset("imagenet", "val", (32, 32), path=str(nested))
    assert sorted(int(data[i]["label"]) for i in range(len(data))) == [1, 285]

    kaggle = tmp_path / "kaggle"
    write_jpeg(kaggle / "val" / "ILSVRC2012_val_00000001.JPEG", 30)
    (kaggle / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{wnids[7]} 1 2 3 4\n")
    assert int(load_dataset("imagenet", "val", (32, 32), path=str(kaggle))[0]["label"]) == 7

    devkit = tmp_path / "devkit"
    for n in (1, 2):
        write_jpeg(devkit / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", 40 * n)
    # the devkit numbers classes by ILSVRC2012_ID, in an order that is not the sorted WordNet ids
    synsets = np.array([(1, wnids[500]), (2, wnids[3])], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n")
    data = load_dataset("imagenet", "val", (32, 32), path=str(devkit))
    assert [int(data[i]["label"]) for i in range(2)] == [3, 500]

    write_jpeg(tmp_path / "bare" / "val" / "x.JPEG", 50)
    with pytest.raises(Exception, match="no labels"):
        load_dataset("imagenet", "val", (32, 32), path=str(tmp_path / "bare"))


def test_ade20k_folder_maps_other_to_ignore(tmp_path):
    for split in ("training", "validation"):
        write_jpeg(tmp_path / "images" / split / "ADE_x_0001.jpg", 60)
        annotation = np.zeros((40, 50), dtype=np.uint8)
        annotation[:, 20:] = 1
        annotation[:, 40:] = 150
        (tmp_path / "annotations" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(annotation).save(tmp_path / "annotations" / split / "ADE_x_0001.png")
    label = load_dataset("ade20k", "val", (40, 50), path=str(tmp_path))[0]["label"]
    assert sorted(label.unique().tolist()) == [0, 149, 255] and label[0, 0] == 255


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_s16"])
def test_model_parameters_are_those_the_features_touch(name):
    from bench.backbones import load_backbone

    backbone, touched = load_backbone(name), set()
    hooks = [m.register_forward_hook(lambda mod, _i, _o: touched.update(id(p) for p in mod.parameters(recurse=False)))
             for m in backbone.model.modules()]
    backbone.features(torch.rand(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert {id(p) for p in backbone.feature_parameters()} == touched
