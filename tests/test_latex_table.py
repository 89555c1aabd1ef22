"""`table --format latex` is pasted into papers: it must compile as it is (escaped names, booktabs rules), hold one
`value ± sd` or `value [lo, hi]` column per metric, and bold the best mean in its metric's direction."""
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.core.store import ResultStore
from bench.reporting.latex import latex_table
from bench.reporting.report import table_text
from bench.reporting.stats import miou_from_confusions
from conftest import write_cell as write

ODD = "up_&_down#1%"
"""A plugin's method name with every character LaTeX gives a meaning to that a file name allows."""
DOCUMENT = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n\\input{t.tex}\n\\end{document}\n"


def confusions(rng, accuracy, n=12, k=3):
    """n per-image confusion matrices of k classes, 100 pixels each, ``accuracy`` of them right."""
    out = np.zeros((n, k, k), dtype=np.int64)
    for i in range(n):
        truth = rng.integers(0, k, 100)
        np.add.at(out[i], (truth, np.where(rng.random(100) < accuracy, truth, rng.integers(0, k, 100))), 1)
    return out


@pytest.fixture
def latex(tmp_path):
    """RMSE (lower is better) at two seeds, mIoU at one seed with per-image statistics; colour_only, a reference
    row, is best on both and must not be bolded."""
    store = ResultStore(tmp_path / "run")
    rmse = {"bilinear": (0.50, 0.52), "jbu_classic": (0.40, 0.42), "colour_only": (0.10, 0.12), ODD: (0.45, 0.47)}
    for method, values in rmse.items():
        for seed, value in enumerate(values):
            write(store, method, "probe_depth", seed, "rmse", value, False)
    rng = np.random.default_rng(0)
    for method, accuracy in (("bilinear", 0.5), ("jbu_classic", 0.8), ("colour_only", 0.95), (ODD, 0.6)):
        conf = confusions(rng, accuracy)
        write(store, method, "probe_seg", 0, "miou", miou_from_confusions(conf), True, conf.tolist(), "miou_confusion")
    return table_text(tmp_path / "run", "latex")


def rows_of(tex: str) -> dict[str, list[str]]:
    """The tabular's rows by their first cell: the header row under "method"."""
    lines = [line.removesuffix(r" \\") for line in tex.splitlines() if line.endswith(r" \\")]
    return {cells[0]: cells[1:] for cells in (line.split(" & ") for line in lines)}


def compile_latex(tex: str, folder) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "t.tex").write_text(tex)
    (folder / "doc.tex").write_text(DOCUMENT)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:]


def test_text_is_escaped_outside_math(latex):
    outside_math = [re.sub(r"\$[^$]*\$", "", line) for line in latex.splitlines() if not line.startswith("%")]
    assert not [line for line in outside_math if re.search(r"(?<!\\)[_#%]", line)]
    assert r"colour\_only" in latex and r"up\_\&\_down\#1\%" in latex


def test_booktabs_rules_and_one_column_per_metric(latex):
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert latex.count(rule) == 1
    assert r"\begin{tabular}{lrr}" in latex
    header = rows_of(latex)["method"]
    assert header == [r"probe\_depth RMSE $\downarrow$", r"probe\_seg mIoU $\uparrow$"]


def test_cells_hold_sd_over_seeds_or_the_interval_over_images(latex):
    rmse, miou = rows_of(latex)["bilinear"]
    assert rmse == r"$0.510 \pm 0.014$"
    assert re.fullmatch(r"\$\d+\.\d+\\ \[\d+\.\d+, \d+\.\d+\]\$", miou)


def test_the_best_mean_is_bold_in_its_direction_and_a_reference_row_is_never_best(latex):
    rows = rows_of(latex)
    assert rows[r"jbu\_classic"][0] == r"$\mathbf{0.410} \pm 0.014$"  # lowest RMSE but colour_only's
    assert rows[r"jbu\_classic"][1].startswith(r"$\mathbf{")  # highest mIoU but colour_only's
    bold = [method for method, cells in rows.items() for cell in cells if r"\mathbf" in cell]
    assert bold == [r"jbu\_classic", r"jbu\_classic"]


def test_a_plain_table_escapes_its_text():
    """`profile --format latex`: any table of text and numbers."""
    table = pd.DataFrame({"ms": [1.23456, float("nan")], "message": ["", "needs fit_method & 50% memory"]},
                         index=pd.Index(["featup_jbu", ODD], name="method"))
    tex = latex_table(table)
    assert r"featup\_jbu & 1.235 &  \\" in tex
    assert r"up\_\&\_down\#1\% & -- & needs fit\_method \& 50\% memory \\" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (.ci/run installs it)")
def test_the_tables_compile(latex, tmp_path):
    compile_latex(latex, tmp_path / "results")
    compile_latex(latex_table(pd.DataFrame({"a_b": ["x_y", "50%"]}, index=["m_1", "m#2"])), tmp_path / "plain")
