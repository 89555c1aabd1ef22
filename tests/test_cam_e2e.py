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
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running.runner import plan
from methods.bilinear import Bilinear
from methods.base import Upsampler
from tasks.cam import Cam, LinearHead, cam_mask, cam_of, class_probs
from tasks.e2e_seg import Decoder, E2ESeg, fit_decoder, model_gflops
from tasks.metrics import ADCC, AverageDrop, AverageIncrease, DeltaAccuracy, pearson

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
    """Faithfulness of the real classifier's CAMs, as a one-sided sign test with the photograph as the unit.

    32 validation items at 224² (the smoke sizes, 96x128 and 8 training items, leave a 3x4 grid and a
    weak classifier; 16 are used here) are crops of a few photographs, so items are not independent:
    each photograph's mean of (score kept with the CAM - score kept with its inverse) is one sample.
    Under the null (the CAM no better than its inverse: a photograph's mean as likely below 0 as above,
    photographs independent) every one of k >= 6 photographs above 0 has probability 2^-k <= 1/64:
    the false-pass rate, fixed before measuring. Measured: 28 of 32 items and 7 of 7 photographs
    above 0 (photograph means +0.03 to +0.52).
    """
    profile = PROFILES.get("smoke").with_overrides(image_size=(224, 224), task_settings={"cam": {"n_train": 16}})
    context = dataclasses.replace(cam_context, profile=profile)
    task = Cam()
    head = task.head(lite0, context)
    photos = task.load("val", context, 32)
    image = torch.stack([photos[i]["image"] for i in range(len(photos))])
    with torch.no_grad():
        top = class_probs(lite0, head, image).argmax(1)
        cam = cam_of(Bilinear(), lite0, head, image, top)

        def score(mask):
            return class_probs(lite0, head, image * mask[:, None]).gather(1, top[:, None])[:, 0]

        gain = score(cam_mask(cam, "standard")) - score(cam_mask(1 - cam, "standard"))
    sources = [photos.source(i) for i in range(len(photos))]
    by_photo = {name: gain[[s == name for s in sources]].mean().item() for name in sorted(set(sources))}
    print("kept - inverted per item", gain.tolist(), "per photograph", by_photo)
    assert len(image) == 32 and len(by_photo) >= 6
    assert all(mean > 0 for mean in by_photo.values()), by_photo


def test_a_cam_computed_in_tiles_equals_the_whole_one(lite0, cam_context):
    task = Cam()
    head = task.head(lite0, cam_context)
    image = torch.stack([task.load("val", cam_context, 2)[i]["image"] for i in range(2)])
    with torch.no_grad():  # 96 x 128 images, 40 px tiles: tiles at image borders and inside, the last ones shorter
        top = class_probs(lite0, head, image).argmax(1)
        torch.testing.assert_close(cam_of(Bilinear(), lite0, head, image, top, tile=40),
                                   cam_of(Bilinear(), lite0, head, image, top), atol=1e-5, rtol=1e-5)


def test_cam_task_scores_both_protocols(lite0, cam_context):
    rows = {}
    for protocol in ("standard", "relevance"):
        profile = PROFILES.get("smoke")
        profile = profile.with_overrides(task_settings={**profile.task_settings,
                                                        "cam": {**profile.task_settings["cam"], "protocol": protocol}})
        rows[protocol] = {r.metric: r for r in Cam().run(Bilinear(), lite0, dataclasses.replace(cam_context, profile=profile))}
        assert Cam().recipe(profile)["settings"]["protocol"] == protocol
    for protocol, by_metric in rows.items():
        for r in by_metric.values():
            assert 0 <= r.value <= 100 and len(r.per_image) == 4 and r.statistic == "percent_sums"
            numerators, denominators = np.array(r.per_image).T
            assert r.value == pytest.approx(100 * numerators.sum() / max(denominators.sum(), 1))
    # standard A.D. averages over every image; relevance only over those whose score dropped (0 or 1 each,
    # and an image that did not drop adds nothing); the values themselves: the transcription test below
    assert [d for _, d in rows["standard"]["ad"].per_image] == [1.0] * 4
    relevance = np.array(rows["relevance"]["ad"].per_image)
    assert set(relevance[:, 1]) <= {0.0, 1.0} and (relevance[relevance[:, 1] == 0, 0] == 0).all()


def test_pearson_against_numpy_corrcoef_and_zero_for_a_constant_map():
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(3, 5, 7, generator=g), torch.rand(3, 5, 7, generator=g)
    b[1] = 0.3 * a[1] + 0.1 * b[1]  # strongly correlated
    b[2] = 0.25  # constant: no correlation defined, scored 0
    expected = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(2)] + [0.0]
    assert pearson(a, b).tolist() == pytest.approx(expected, abs=1e-12)
    assert pearson(a, -2 * a + 1).tolist() == pytest.approx([-1.0] * 3)


class NearestUpsampler(Upsampler):
    """Nearest-neighbour resize: each backbone cell becomes a block of pixels, easy to transcribe."""

    name = "nearest_for_tests"

    def forward(self, lr_feats, image, output_size):
        return F.interpolate(lr_feats, size=output_size, mode="nearest")


class LabelledColours(torch.utils.data.Dataset):
    """Random colourful 16 x 24 images with given ImageNet labels, which are ground truth."""

    labels_are_truth = True
    num_classes = 1000

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels
        self.images = torch.rand(len(labels), 3, 16, 24, generator=torch.Generator().manual_seed(7))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": torch.tensor(self.labels[i])}


_g = torch.Generator().manual_seed(4)
HEAD = LinearHead(weight=2 * torch.randn(3, 3, generator=_g), bias=0.3 * torch.randn(3, generator=_g),
                  classes=torch.tensor([5, 7, 9]))
"""A head under which, on LabelledColours' 8 images, masking raises some class scores and lowers others
(in both protocols), so every branch of A.D., A.I. and ADCC is exercised."""


def transcribed_cam_scores(data: LabelledColours, protocol: str) -> dict:
    """AD, AI and ADCC of the CAM task, written out in numpy (float64) from the definitions: features =
    8 x 8 average pools of the colours, channel-standardised, mean-pooled, linear head; CAM = ReLU of the
    class's per-pixel logit, min-max normalised; only images whose top-1 is their label are scored."""
    w, b, classes = HEAD.weight.double().numpy(), HEAD.bias.double().numpy(), HEAD.classes.numpy()

    def standardised_cells(image):  # (3,16,24) -> (3,2,3)
        cells = image.reshape(3, 2, 8, 3, 8).mean((2, 4))
        return (cells - cells.mean(0)) / np.sqrt(cells.var(0) + 1e-5)

    def probs(image):
        logits = w @ standardised_cells(image).mean((1, 2)) + b
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def cam(image, k):
        logit = np.einsum("c,chw->hw", w[k], standardised_cells(image)) + b[k]
        blocks = np.maximum(np.kron(logit, np.ones((8, 8))), 0)  # nearest: each cell an 8 x 8 block
        return (blocks - blocks.min()) / max(blocks.max() - blocks.min(), 1e-12)

    drops, rose, rose_or_same, adcc, counted = [], [], [], [], []
    for i in range(len(data)):
        image = data.images[i].double().numpy()
        p = probs(image)
        k = int(p.argmax())
        if classes[k] != data.labels[i]:
            continue  # wrong: not scored on ground truth
        c = cam(image, k)
        if protocol == "standard":
            mask = c
        else:  # the top half of the pixels: above the lower median (ties stay out)
            mask = (c > np.sort(c.ravel())[(c.size - 1) // 2]).astype(float)
        masked = image * mask
        y, o = p[k], probs(masked)[k]
        drop = max(0.0, y - o) / y
        coherency = (np.corrcoef(c.ravel(), cam(masked, k).ravel())[0, 1] + 1) / 2
        terms = [coherency, 1 - c.mean(), 1 - drop]
        adcc.append(3 / sum(1 / t for t in terms) if min(terms) > 1e-8 else 0.0)
        drops.append(drop)
        counted.append(1.0 if protocol == "standard" else float(o < y))
        rose.append(o > y)
        rose_or_same.append(o >= y)
    ai = rose if protocol == "standard" else rose_or_same
    return {"ad": 100 * np.dot(drops, counted) / max(sum(counted), 1), "ai": 100 * np.mean(ai),
            "adcc": 100 * np.mean(adcc), "scored": len(drops)}


def cam_run(data: LabelledColours, protocol: str) -> dict:
    profile = PROFILES.get("smoke")
    profile = profile.with_overrides(task_settings={"cam": {**profile.task_settings["cam"], "protocol": protocol,
                                                            "batch_size": 3}})
    task = Cam()
    task.head = lambda backbone, context: HEAD
    task.load_split = lambda split, context: data
    return {r.metric: r for r in task.run(NearestUpsampler(), StubBackbone(), RunContext(profile, progress=False))}


def predicted(data: LabelledColours) -> list[int]:
    with torch.no_grad():
        return HEAD.classes[class_probs(StubBackbone(), HEAD, data.images).argmax(1)].tolist()


@pytest.mark.parametrize("protocol", ["standard", "relevance"])
def test_cam_on_true_labels_scores_the_correct_images_as_a_numpy_transcription_does(protocol):
    top = predicted(LabelledColours([0] * 8))
    # images 3-5 (the second batch of 3) get a wrong label: that batch scores nothing, the others all
    labels = [t if i not in (3, 4, 5) else next(c for c in (5, 7, 9) if c != t) for i, t in enumerate(top)]
    data = LabelledColours(labels)
    assert len(set(top)) > 1  # the head is not constant on these images
    got, expected = cam_run(data, protocol), transcribed_cam_scores(data, protocol)
    assert expected["scored"] == 5
    for metric in ("ad", "ai", "adcc"):
        assert got[metric].value == pytest.approx(expected[metric], rel=1e-4, abs=1e-4), metric
        assert len(got[metric].per_image) == 5  # one pair per correctly classified image
    assert 0 < expected["ad"] < 100 and 0 < expected["ai"] < 100 and expected["adcc"] > 0  # a mix: no branch unused


def test_cam_on_true_labels_with_no_correct_image_says_nothing_was_scored():
    top = predicted(LabelledColours([0] * 8))
    data = LabelledColours([next(c for c in (5, 7, 9) if c != t) for t in top])  # every label wrong
    with pytest.raises(ValueError, match="no validation image .* is classified correctly .*nothing to score"):
        cam_run(data, "standard")


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
