"""Any timm backbone by name, backbones from plugin files, and the input normalisation choice.

Offline throughout: three timm families (a ViT with patch 16, a ViT with patch 14, a convnet cut at a
stage), tiny and randomly initialised.
"""
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import bench.cli as cli
from bench.backbones.names import resolve_spec, timm_spec
from bench.backbones import build_backbone, cache_key, load_backbone
from bench.core.cells import slug
from bench.fitting import train
from bench.plugins import PluginError, load_plugin_file
from bench.running import session
from bench.registry import BACKBONES, METHODS, RegistryError
from bench.core.cells import Cell
from bench.core.context import RunContext
from bench.core.profiles import PROFILES

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_backbone.py"
FAMILIES = {  # registered name -> (timm model, stage, stride, dim)
    "_any_vit16": ("test_vit", None, 16, 64),
    "_any_vit14": ("eva02_tiny_patch14_224", None, 14, 192),
    "_any_resnet_s16": ("test_resnet", "layer3", 16, 192),
}
for _name, (_model, _stage, _, _) in FAMILIES.items():
    if _name not in BACKBONES:
        BACKBONES.register(timm_spec(_model, _stage, name=_name, random_init=True))


@pytest.fixture(scope="module")
def backbones():
    return {name: load_backbone(name) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_spec_reads_stride_and_dim_from_the_model(name):
    _, _, stride, dim = FAMILIES[name]
    spec = BACKBONES.get(name)
    assert (spec.stride, spec.dim) == (stride, dim)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [(70, 100), (45, 131)])
def test_features_have_the_declared_shape_and_match_timm_at_non_square_sizes(backbones, name, size):
    backbone = backbones[name]
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    feats = backbone.features(image)
    grid = tuple(math.ceil(s / backbone.stride) for s in size)
    assert feats.shape == (2, backbone.dim, *grid)
    x = (image - backbone.mean) / backbone.std
    if backbone.is_vit:  # timm's own NCHW path: last block, final norm, prefix tokens dropped
        reference = backbone.model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
    else:  # the stage module's output on the zero-padded image, seen by a hook on a plain forward
        seen = []
        module = dict(backbone.model.named_modules())[FAMILIES[name][1]]
        hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            backbone.model(F.pad(x, (0, grid[1] * backbone.stride - size[1], 0, grid[0] * backbone.stride - size[0])))
        finally:
            hook.remove()
        reference = seen[0]
    torch.testing.assert_close(feats, reference)


def test_a_stage_by_index_and_by_module_name_is_the_same_stage():
    by_index, by_name = resolve_spec("timm:resnet18@3"), resolve_spec("timm:resnet18@layer3")
    assert (by_index.stride, by_index.dim, by_index.stage) == (by_name.stride, by_name.dim, by_name.stage) == (16, 256, 3)
    last = resolve_spec("timm:resnet18")
    assert (last.stride, last.dim, last.stage) == (32, 512, 4)


@pytest.mark.parametrize("name, expected", [
    ("timm:vit_smal_patch16_224", "unknown timm model 'vit_smal_patch16_224'. Did you mean 'vit_small_patch16_224'"),
    ("timm:vit_small_patch16_224.dinoo", "no pretrained tag 'dinoo'. Did you mean 'vit_small_patch16_224.dino'"),
    ("timm:resnet18@layr3", "no stage 'layr3'. Did you mean 'layer3'"),
    ("timm:resnet18@9", "no stage '9'. Its stages: 0 (act1: stride 2, 64 ch), 1 (layer1"),
    ("timm:vit_small_patch16_224@3", "is a ViT: it takes no @stage"),
    ("timm:beit_base_patch16_224", "is a ViT without timm's dynamic_img_size"),
    ("vitt", "unknown backbone 'vitt'. Did you mean 'vit'?"),
])
def test_a_wrong_model_or_stage_is_a_clear_error_with_a_suggestion(name, expected):
    with pytest.raises(RegistryError, match=re.escape(expected)):
        resolve_spec(name)


def test_cli_wrong_stage_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["run", "--profile", "smoke", "--backbone", "timm:resnet18@7", "-m", "bilinear",
                     "-t", "probe_seg", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: timm 'resnet18' has no stage '7'") and err.count("\n") == 1


def test_list_backbones_shows_what_a_name_resolves_to(capsys):
    assert cli.main(["list", "--backbones", "timm:resnet18@3", "_any_vit16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["timm:resnet18@3", "stride", "16", "dim", "256"]
    assert "mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)" in lines[0]
    assert lines[1].split()[:5] == ["_any_vit16", "stride", "16", "dim", "64"] and "mean (0.5, 0.5, 0.5)" in lines[1]


def test_plugin_backbone_is_listed_and_scored(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(session, "CACHE_DIR", tmp_path / "cache")
    assert cli.main(["--plugin", str(EXAMPLE), "list"]) == 0
    assert "my_backbone" in capsys.readouterr().out
    out = tmp_path / "run"
    assert cli.main(["--no-progress", "--plugin", str(EXAMPLE), "run", "--backbone", "my_backbone", "--profile",
                     "smoke", "-m", "bilinear", "-t", "probe_seg", "--out", str(out)]) == 0
    [record] = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert record["status"] == "ok" and record["cell"]["backbone"] == "my_backbone"
    assert record["recipe"]["profile"]["normalisation"] == "config"


def test_plugin_may_register_only_a_backbone_or_only_a_task_but_not_nothing(tmp_path):
    backbone = tmp_path / "only_backbone.py"
    backbone.write_text("from bench.backbones.names import timm_spec\nfrom bench.registry import BACKBONES\n"
                        "BACKBONES.register(timm_spec('test_convnext', name='_only_backbone', random_init=True))\n")
    assert load_plugin_file(str(backbone)) == ["_only_backbone"]
    task = tmp_path / "only_task.py"
    task.write_text("from bench.registry import TASKS\nfrom tasks.probe_seg import ProbeSeg\n"
                    "@TASKS.register\nclass OnlyTask(ProbeSeg):\n    name = '_only_task'\n")
    assert load_plugin_file(str(task)) == ["_only_task"]
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PluginError, match="registered nothing"):
        load_plugin_file(str(empty))


@pytest.mark.parametrize("name", FAMILIES)
def test_smoke_run_with_a_trained_upsampler_completes(name, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "CACHE_DIR", tmp_path / "cache")
    out = tmp_path / "run"
    assert cli.main(["--no-progress", "run", "--backbone", name, "--profile", "smoke",
                     "-m", "bilinear,featup_jbu", "-t", "probe_seg", "--out", str(out)]) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted(r["cell"]["method"] for r in records) == ["bilinear", "featup_jbu"]
    assert all(r["status"] == "ok" for r in records)
    [weights] = (tmp_path / "cache" / "weights").iterdir()
    provenance = json.loads((weights / "provenance.json").read_text())
    assert provenance["backbone"] == name and provenance["dim"] == FAMILIES[name][3]
    assert provenance["steps"] == PROFILES.get("smoke").train_steps


def test_train_command_caches_weights_per_stage_and_normalisation(tmp_path, monkeypatch):
    specs = [timm_spec("test_resnet", stage, random_init=True) for stage in (3, 4)]
    context = RunContext(PROFILES.get("smoke"), cache_dir=tmp_path, progress=False)
    backbones = [build_backbone(specs[0]), build_backbone(specs[1]), build_backbone(specs[0], normalisation="imagenet")]
    folders = [train.checkpoint(METHODS.get("featup_jbu").create(b), b, context)[0].name for b in backbones]
    assert [cache_key(b) for b in backbones] == ["timm:test_resnet@3", "timm:test_resnet@4", "timm:test_resnet@3+imagenet-norm"]
    assert len(set(folders)) == 3 and all(slug(cache_key(b)) in f for b, f in zip(backbones, folders))
    monkeypatch.setattr(session, "CACHE_DIR", tmp_path / "cache")
    assert cli.main(["--no-progress", "train", "featup_jbu", "--backbone", "_any_vit16", "--profile", "smoke"]) == 0
    [trained] = (tmp_path / "cache" / "weights").iterdir()
    assert trained.name.startswith(f"featup_jbu-v{METHODS.get('featup_jbu').version}-_any_vit16-photos")
    assert (trained / "weights.pt").is_file()


def test_normalisation_sets_the_input_stats(backbones):
    config = backbones["_any_resnet_s16"]
    imagenet = build_backbone(BACKBONES.get("_any_resnet_s16"), normalisation="imagenet")
    assert config.mean.flatten().tolist() == [0.5] * 3 and config.std.flatten().tolist() == [0.5] * 3
    torch.testing.assert_close(imagenet.mean.flatten(), torch.tensor(IMAGENET_DEFAULT_MEAN))
    torch.testing.assert_close(imagenet.std.flatten(), torch.tensor(IMAGENET_DEFAULT_STD))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # same weights (seed 0): fed the ImageNet-normalised image, the config backbone gives imagenet's features
    shifted = (image - imagenet.mean) / imagenet.std * config.std + config.mean
    torch.testing.assert_close(imagenet.features(image), config.features(shifted))
    assert not torch.allclose(imagenet.features(image), config.features(image))
    with pytest.raises(ValueError, match="normalisation 'lab'"):
        build_backbone(BACKBONES.get("_any_vit16"), normalisation="lab")


def test_normalisation_is_in_the_recipe_and_changes_the_hash_but_the_default_keeps_old_hashes():
    cell = Cell("bilinear", "probe_seg", "vit", "scenes", "smoke", 0)
    smoke = PROFILES.get("smoke")
    config, imagenet = smoke.recipe(), smoke.with_overrides(normalisation="imagenet").recipe()
    assert config["normalisation"] == "config" and imagenet["normalisation"] == "imagenet"
    assert cell.config_hash({"profile": config}) != cell.config_hash({"profile": imagenet})
    before_the_field = {k: v for k, v in config.items() if k != "normalisation"}
    assert cell.config_hash({"profile": config}) == cell.config_hash({"profile": before_the_field})
    assert PROFILES.get("paper").normalisation == "imagenet" and PROFILES.get("default").normalisation == "config"


def test_normalisation_on_the_command_line_gets_its_own_run_folder():
    assert session.default_run_dir("smoke", "timm:resnet18@3", [], None, "imagenet").name == \
        "smoke-timm-resnet18-3-normalisation-imagenet"
    assert session.default_run_dir("smoke", "timm:resnet18@3", [], None, "config").name == "smoke-timm-resnet18-3"


def test_a_stage_cut_counts_only_the_parameters_it_runs(backbones):
    cut = backbones["_any_resnet_s16"]  # test_resnet up to layer3: neither layer4 nor the classifier
    expected = [p for name, p in cut.model.named_parameters() if not name.startswith(("layer4.", "fc."))]
    assert {id(p) for p in cut.feature_parameters()} == {id(p) for p in expected}
