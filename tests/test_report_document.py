"""The report holds every method and metric, its figures are real images, its HTML is one self-contained page."""
import base64
import re
from html.parser import HTMLParser

import matplotlib.image
import pandas as pd
import pytest
import torch

from bench.reporting.document import HTML_STYLE, write_report
from bench.reporting.figures import PcaBasis, profile_results
from bench.core.store import ResultStore
from test_report import write_cell

METRICS = {"probe_seg": {"miou": 40.0, "acc": 70.0}, "probe_depth": {"rmse": 0.5, "delta1.25": 0.8}}


class Page(HTMLParser):
    """Tags, image sources and unclosed tags of an HTML page."""

    VOID = {"img", "br", "hr", "meta", "input", "link"}

    def __init__(self):
        super().__init__()
        self.tags, self.images, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):  # <img ... />
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


@pytest.fixture
def run(tmp_path):
    store = ResultStore(tmp_path / "run")
    for i, method in enumerate(("bilinear", "low_res")):
        for task, metrics in METRICS.items():
            write_cell(store, method, task, {k: v + i for k, v in metrics.items()})
    write_cell(store, "strided", "probe_seg", {}, status="error", message="ValueError: bad input\ntrace line")
    ablation = tmp_path / "run" / "ablate-fourier"
    ablation.mkdir()
    pd.DataFrame([{"variant": v, "image": f"im{i}", "step": s, "nll": 1.0 / s + (v == "raw")}
                  for v in ("fourier", "raw") for i in range(2) for s in range(1, 6)]).to_csv(
        ablation / "loss_curves.csv", index=False)
    return tmp_path / "run"


def test_report_of_a_run(run, tmp_path):
    md_path, html_path = write_report(run, tmp_path / "rep", torch.device("cpu"), sizes=(32, 64), photos=2,
                                      progress=False)
    md = md_path.read_text()
    for name in ("bilinear", "low_res", "strided", "probe_seg.miou", "probe_seg.acc", "probe_depth.rmse",
                 "probe_depth.delta1.25", "ValueError: bad input", "trace line"):
        assert name in md, name
    # efficientnet_lite0 on generated scenes is not the paper's ViT-S/16 on COCO-Stuff: one line, no paper numbers
    assert "Not set beside the paper table: this run: efficientnet_lite0 at an unrecorded image size on scenes" in md
    assert "(paper)" not in md and "Kendall" not in md and "Ours minus" not in md
    figures = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["fourier_ablation.png", "pca.png", "profile.png"]
    for figure in figures:
        pixels = matplotlib.image.imread(figure)
        assert min(pixels.shape[:2]) > 100 and pixels[..., :3].std() > 0.01, figure.name
        assert f"figures/{figure.name}" in md

    page = Page()
    page.feed(html_path.read_text())
    page.close()
    assert not page.open and "table" in page.tags and "pre" in page.tags
    assert len(page.images) == 3
    for src in page.images:  # every figure embedded, nothing to fetch
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"<td[^>]*>ok</td>", html_path.read_text())  # the provenance table


def test_pca_basis_finds_the_planted_directions():
    gen = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(16, 3, generator=gen))[0]  # orthonormal (16, 3)
    weights = torch.randn(4000, 3, generator=gen) * torch.tensor([10.0, 5.0, 2.0])
    vectors = weights @ directions.T + 0.05 * torch.randn(4000, 16, generator=gen) + 3.0
    basis = PcaBasis.fit(vectors.T.reshape(1, 16, 40, 100))
    cosines = (basis.components.float().T @ directions).abs()
    assert torch.diagonal(cosines).min() > 0.999  # each component is its planted direction, up to sign
    colours = basis.rgb(vectors.T.reshape(1, 16, 40, 100))
    assert colours.shape == (1, 40, 100, 3) and colours.min() >= 0 and colours.max() <= 1
    inside = ((colours > 0) & (colours < 1)).float().mean()
    assert 0.95 < inside < 0.99  # the 1st-99th percentile range clips about 2% per channel


def test_profile_stored_with_the_run_is_used(run, tmp_path):
    (run / "profile").mkdir()
    stored = pd.DataFrame([{"method": "bilinear", "size": 64, "ms": 1.0, "peak_mb": 2.0, "status": "ok"}])
    stored.to_csv(run / "profile" / "profile.csv", index=False)
    df, source = profile_results(run, tmp_path, ["bilinear"], [32], 8, "cpu", progress=False)
    pd.testing.assert_frame_equal(df, stored)
    assert "stored with the run" in source and not (tmp_path / "profile.csv").exists()


@pytest.mark.parametrize("profile, where, size, label, theirs, deltas", [
    ("paper", ("vit", "coco_stuff", "paper"), 224, "paper", 0.910, True),
    ("default", ("efficientnet_lite0_s16", "materials", "default"), 224, "paper", 0.910, False),
    ("jafar", ("dinov2", "coco_stuff@cocostuff-a1b2c3", "jafar"), 448, "jafar", 0.5992, True)])
def test_the_report_sets_a_run_beside_the_table_of_its_setting(tmp_path, profile, where, size, label, theirs, deltas):
    """A run made as a table was is set beside it with our differences from its numbers; the default profile, FeatUp's
    embedded stand-in, beside its ranks only (values from other data mean nothing); a jafar-profile run beside JAFAR's
    table (its δ in our units)."""
    from bench.reporting.document import table_section

    store = ResultStore(tmp_path)
    for i, method in enumerate(("bilinear", "low_res")):
        for task, metrics in METRICS.items():
            write_cell(store, method, task, {k: v + i for k, v in metrics.items()}, where=where,
                       recipe={"method_version": "1", "task_version": "1", "profile": {"image_size": [size, size]}})
    text = table_section(tmp_path, store.current_records(), store.rows(), profile)
    assert f"## Results beside the {label} table" in text
    row = next(line for line in text.splitlines() if line.startswith("| bilinear"))
    assert f"{theirs:.3f}".rstrip("0") in row, row
    assert ("Ours minus the reference" in text) == deltas


def test_a_header_cell_never_wraps_inside_a_column_name():
    """A header once broke as ``delta1.2 5``: every rule that reaches ``th`` leaves it on one line."""
    rules = [body for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", HTML_STYLE)
             if "th" in [s.strip() for s in selectors.split(",")]]
    spacing = [d.split(":")[1] for body in rules for d in body.split(";") if d.startswith("white-space")]
    assert spacing[-1] == "nowrap"
    assert not [body for body in rules if "overflow-wrap" in body or "word-break" in body]
