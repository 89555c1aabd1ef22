"""``ablate colour``: probe_seg scored at each colour level of ``materials``, its CSV, figure and report section."""
import matplotlib.image
import pandas as pd

from bench.cli import main
from bench.reporting.colour import CSV, PNG
from bench.reporting.document import colour_section


def test_the_sweep_scores_each_level_and_writes_its_table_and_figure(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["ablate", "colour", "--profile", "smoke", "--no-progress", "-m", "colour_only,bilinear",
                 "--levels", "0,0.5,1", "--seeds", "0", "--out", str(out)]) == 0
    table = pd.read_csv(out / CSV)
    miou = table[table["metric"] == "probe_seg.miou"]
    assert sorted(miou["level"].unique()) == [0.0, 0.5, 1.0]
    assert set(miou["method"]) == {"colour_only", "bilinear"} and len(miou) == 6
    assert set(miou["dataset"]) == {"materials_colour0", "materials_colour50", "materials"}
    assert matplotlib.image.imread(out / PNG).shape[0] > 100
    assert "bilinear" in capsys.readouterr().out
    # a second call scores nothing new: the cells are kept as they were
    cells = {p: p.stat().st_mtime_ns for p in out.glob("scores/*/cells/*.json")}
    assert len(cells) == 6
    assert main(["ablate", "colour", "--profile", "smoke", "--no-progress", "-m", "colour_only,bilinear",
                 "--levels", "0,0.5,1", "--seeds", "0", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("scores/*/cells/*.json")} == cells

    figures = tmp_path / "figures"
    figures.mkdir()
    section = colour_section(out, figures)
    assert "figures/colour.png" in section and (figures / "colour.png").is_file() and "colour_only" in section
    assert "ablate colour --out" in colour_section(tmp_path / "none", figures)


def test_levels_outside_0_to_1_are_refused(tmp_path, capsys):
    assert main(["ablate", "colour", "--profile", "smoke", "--levels", "0,2", "--out", str(tmp_path)]) == 2
    assert "[0, 1]" in capsys.readouterr().err
