"""The commands the other CLI tests do not reach, run in-process through ``bench.cli.main`` as a user types
them: ``profile`` (its files and exit code), ``merge``, ``table`` and ``report`` on merged folders,
``ablate fourier`` end to end (and its output read by ``report``), and a valid ``--weights`` file."""
from __future__ import annotations

import io
import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.core.store import ResultStore
from test_report import write_cell


def png_with_content(path) -> bool:
    pixels = matplotlib.image.imread(path)
    return min(pixels.shape[:2]) > 100 and pixels[..., :3].std() > 0.01


def test_profile_methods_writes_csv_and_png_and_exits_1_when_a_row_failed(tmp_path, capsys):
    args = ["--no-progress", "profile", "methods", "--sizes", "16,32", "--channels", "8", "--device", "cpu",
            "--format", "csv"]
    assert main([*args, "-m", "bilinear,_exploding", "--out", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "bad" / "profile.csv")
    assert list(zip(df["method"], df["size"], df["status"])) == [
        ("bilinear", 16, "ok"), ("bilinear", 32, "ok"), ("_exploding", 16, "error"), ("_exploding", 32, "error")]
    assert df[df["method"] == "_exploding"]["message"].str.contains("boom in create").all()
    assert pd.read_csv(io.StringIO(out))["method"].tolist() == df["method"].tolist()  # the table printed
    assert png_with_content(tmp_path / "bad" / "profile.png")

    assert main([*args, "-m", "bilinear", "--out", str(tmp_path / "good")]) == 0
    assert (pd.read_csv(tmp_path / "good" / "profile.csv")["status"] == "ok").all()
    assert png_with_content(tmp_path / "good" / "profile.png")


def shard(folder, cells):
    store = ResultStore(folder)
    for method, task, metrics in cells:
        write_cell(store, method, task, metrics)


def test_merge_then_table_and_report_through_the_cli(tmp_path, capsys):
    shard(tmp_path / "s1", [("bilinear", "probe_seg", {"miou": 40.0, "acc": 70.0}),
                            ("bilinear", "probe_depth", {"rmse": 0.5, "delta1.25": 0.8})])
    shard(tmp_path / "s2", [("low_res", "probe_seg", {"miou": 30.0, "acc": 60.0})])
    merged = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(merged)]) == 0
    assert "merged 3 cell files from 2 folders" in capsys.readouterr().err
    assert main(["table", "--run", str(merged), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    assert table.loc["bilinear", "probe_seg.miou"] == 40.0 and table.loc["low_res", "probe_seg.acc"] == 60.0
    assert table.loc["bilinear", "probe_depth.rmse"] == 0.5 and pd.isna(table.loc["low_res", "probe_depth.rmse"])

    # one cell with two different results: refused in one line, exit 2, nothing written
    shard(tmp_path / "s3", [("low_res", "probe_seg", {"miou": 31.0, "acc": 60.0})])
    assert main(["merge", str(tmp_path / "s2"), str(tmp_path / "s3"), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different results" in err and "Traceback" not in err

    report = tmp_path / "report"
    assert main(["--no-progress", "report", "--run", str(merged), "--out", str(report), "--device", "cpu",
                 "--sizes", "16,32", "--photos", "1"]) == 0
    assert f"wrote {report / 'report.md'}" in capsys.readouterr().out
    md = (report / "report.md").read_text()
    lines = {}  # the first row of each method: the results table
    for line in md.splitlines():
        if line.startswith("| "):
            lines.setdefault(line.split("|")[1].strip(), line)
    assert "40.000" in lines["bilinear"] and "30.000" in lines["low_res"] and "probe_depth.rmse" in md
    # efficientnet on generated scenes is not the paper's protocol: no differences from its numbers, one line why
    assert "Not set beside the" in md and "-10.650" not in md
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 2
    assert all(png_with_content(f) for f in (report / "figures").glob("*.png"))


def test_ablate_fourier_end_to_end_and_the_report_reads_it(tmp_path, capsys):
    run = tmp_path / "run"
    shard(run, [("bilinear", "probe_seg", {"miou": 40.0, "acc": 70.0})])
    out = run / "ablate-fourier"
    assert main(["--no-progress", "ablate", "fourier", "--profile", "smoke", "--images", "1", "--steps", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    curves, finals = pd.read_csv(out / "loss_curves.csv"), pd.read_csv(out / "final_errors.csv")
    # two variants x one image x three steps, the same image for both variants
    assert len(curves) == 6 and sorted(curves["step"].unique()) == [1, 2, 3]
    assert sorted(curves["variant"].unique()) == ["fourier", "raw"] and curves["image"].nunique() == 1
    assert len(finals) == 2 and np.isfinite(finals[["final_nll", "held_out_mse"]].to_numpy()).all()
    assert (finals["held_out_mse"] > 0).all()
    # each final NLL is the last step of its curve
    last = curves[curves["step"] == 3].set_index(["variant", "image"])["nll"]
    assert finals.set_index(["variant", "image"])["final_nll"].to_dict() == pytest.approx(last.to_dict())
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["settings"]["steps"] == 3 and recipe["profile"] == "smoke" and recipe["images"].endswith("first 1")
    assert png_with_content(out / "loss_curves.png")
    # the one-line summary, recounted from the CSV
    paired = finals.pivot(index="image", columns="variant", values="held_out_mse")
    assert f"(fourier lower on {int((paired['fourier'] < paired['raw']).sum())}/1 images)" in printed

    assert main(["ablate", "fourier", "--steps", "3,4", "--out", str(out)]) == 2
    assert "takes one count of fit steps" in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["--no-progress", "report", "--run", str(run), "--out", str(report), "--device", "cpu",
                 "--sizes", "16", "--photos", "1"]) == 0
    md = (report / "report.md").read_text()
    assert "figures/fourier_ablation.png" in md and "(fourier lower on" in md
    assert png_with_content(report / "figures" / "fourier_ablation.png")


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """A state dict of the paper's ViT-S/16, saved from timm with weights no download has (seed 1)."""
    import timm
    from safetensors.torch import save_file

    from bench.backbones.names import resolve_spec

    torch.manual_seed(1)
    model = timm.create_model(resolve_spec("vit").timm_id, pretrained=False, dynamic_img_size=True,
                              dynamic_img_pad=True)  # as the backbone builds it: any image size
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("weights")
    save_file(state, folder / "vit_s16.safetensors")
    torch.save(state, folder / "vit_s16.pth")
    return folder, state, model.eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_valid_weights_file_is_the_backbone_the_cli_runs(vit_weights, suffix, monkeypatch):
    from bench.cli import context_backbone, make_context, parse

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, state, model = vit_weights
    args = parse(["run", "--profile", "smoke", "--backbone", "vit", "--weights", str(folder / f"vit_s16{suffix}"),
                  "--device", "cpu"])
    backbone = context_backbone(args, make_context(args))
    loaded = backbone.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    # the features are timm's own tokens of that model (prefix token dropped) on the normalised image
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    with torch.no_grad():
        tokens = model.forward_features((image - mean[:, None, None]) / std[:, None, None])
    expected = tokens[:, 1:].transpose(1, 2).reshape(1, 384, 4, 6)
    torch.testing.assert_close(backbone.features(image), expected, atol=1e-5, rtol=1e-5)


def test_a_run_with_a_valid_weights_file_scores_its_cells(vit_weights, tmp_path, capsys):
    folder, _, _ = vit_weights
    assert main(["--no-progress", "run", "--profile", "smoke", "--backbone", "vit", "--weights",
                 str(folder / "vit_s16.safetensors"), "-m", "low_res", "-t", "probe_seg",
                 "--out", str(tmp_path / "run")]) == 0
    assert "1 cells scored" in capsys.readouterr().out
    rows = ResultStore(tmp_path / "run").rows()
    assert (rows["status"] == "ok").all() and set(rows["backbone"]) == {"vit"}
