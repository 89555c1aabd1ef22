"""The paper profile's recipe as the public FeatUp code runs it, and `run --dry-run` plans without scoring."""
from pathlib import Path
from types import SimpleNamespace

from bench.fitting import train
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.featup_jbu import FeatUpJBU
from test_cli import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_paper_training_recipe_has_the_attention_downsampler_crf_and_featups_list():
    context = RunContext(profile=PROFILES.get("paper"), data_paths={"coco_stuff": str(FIXTURES / "coco_stuff")})
    vit = SimpleNamespace(name="vit", dim=384, stride=16)
    folder, recipe = train.checkpoint(FeatUpJBU(384, 4), vit, context)
    assert recipe["downsampler"] == "attention" and recipe["crf_weight"] == 0.001
    assert recipe["train_list"] == "Coco164kFull_Stuff_Coarse.txt" and recipe["steps"] == "one epoch"
    data = train.training_images(context)
    assert [p[0].stem for p in data.pairs] == ["000000000025", "000000000030"]  # the list, not the folder
    assert train.training_steps(context.profile, len(data)) == 1  # one epoch of 2 images at batch 4
    default = RunContext(profile=PROFILES.get("default"))
    other, default_recipe = train.checkpoint(FeatUpJBU(384, 4), vit, default)
    assert default_recipe["downsampler"] == "simple" and other.name != folder.name


def test_dry_run_lists_every_cell_scores_nothing_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = cli("run", "--profile", "smoke", "--dry-run", "-m", "bilinear,low_res,featup_jbu", "-t",
               "probe_seg,probe_depth", "--out", str(out))
    text = proc.stdout
    assert "DRY RUN" in text and "estimated time on cpu" in text
    assert "simple downsampler" in text and "CRF weight 0.001" in text and "input normalisation" in text
    cells = [line for line in text.splitlines() if line.startswith("| ") and "probe_" in line]
    assert len(cells) == 6 and all("to run" in line for line in cells)
    assert not out.exists()


def test_paper_dry_run_without_weights_or_imagenet_is_still_a_plan(tmp_path):
    proc = cli("run", "--profile", "paper", "--dry-run", "-m", "bilinear", "-t", "probe_seg,cam",
               "--data", f"coco_stuff={FIXTURES / 'coco_stuff'}", "--out", str(tmp_path / "p"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "backbone weights missing" in proc.stdout and "PROBLEM: dataset imagenet: " in proc.stdout
    assert "Coco164kFull_Stuff_Coarse.txt" in proc.stdout and "attention downsampler" in proc.stdout
    rows = [line.split("|")[1:3] for line in proc.stdout.splitlines() if line.startswith("| bilinear")]
    assert [[c.strip() for c in row] for row in rows] == [["bilinear", "probe_seg"]]


def test_paper_per_image_fits_pool_with_the_attention_downsampler_as_featups_implicit_config():
    from bench.fitting.per_image import fit_recipe
    from methods.featup_implicit import FeatUpImplicit

    vit = SimpleNamespace(name="vit", dim=384, stride=16, normalisation="imagenet")
    recipes = {name: fit_recipe(FeatUpImplicit(), vit, PROFILES.get(name)) for name in ("paper", "default")}
    assert recipes["paper"]["downsampler"] == "attention" and recipes["default"]["downsampler"] == "simple"
    assert "downsampler" not in recipes["default"]["settings"]  # a key of its own: the default fits' hash is kept
