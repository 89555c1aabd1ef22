"""Published tables our runs are compared with: FeatUp's Table 1, JAFAR's README table, UPLiFT's and Upsample
Anything's tables.

Each reference is a CSV in results/ (one row per method, named as our methods are; results/references.md says
where each number comes from) and a map from our (task, dataset, metric) to its columns; ``table --vs NAME`` sets
its numbers beside ours and computes the rank agreement (Kendall τ) against it. Each also declares the protocol
(backbone, image size, datasets) its numbers were made with: a run is compared with it only where the run's cells
record the same (see ``Reference.compare``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pandas as pd

RESULTS = Path(__file__).resolve().parents[2] / "results"
SAME, RANKS, DIFFERS = "same", "ranks", "differs"
"""How a run's protocol compares with a reference's: the same (values and ranks compare), the reference's embedded
stand-in (ranks compare, values do not), or different (neither)."""


def size_text(size: tuple[int, int] | None) -> str:
    """``224×224 px``, or that the cells do not record their size (nothing to compare then)."""
    return f"{size[0]}×{size[1]} px" if size else "an unrecorded image size"


@dataclass(frozen=True)
class Protocol:
    """What a table's numbers were made with; a number compares only with one made the same way."""

    backbone: str
    """Our backbone name for the table's (``vit`` for ViT-S/16, ``dinov2`` for DINOv2 ViT-S/14)."""
    image_size: tuple[int, int] | None
    """None: the source checked does not state it, so it is not compared."""
    datasets: frozenset[str]
    """Our dataset names for the data its columns were scored on."""

    def text(self) -> str:
        size = f" at {size_text(self.image_size)}" if self.image_size else ""
        return f"{self.backbone}{size} on {', '.join(sorted(self.datasets))}"


def profile_protocol(name: str) -> Protocol:
    """The protocol a registered profile runs: its backbone, image size and every dataset it scores on."""
    from bench.core.profiles import PROFILES

    profile = PROFILES.get(name)
    datasets = frozenset(profile.data.values()) | set(profile.extra_data)
    return Protocol(profile.backbone, tuple(profile.image_size), datasets)


@dataclass(frozen=True)
class RunSetting:
    """What the cells of a run behind the columns set beside a reference were made with, as they record it."""

    backbones: frozenset[str]
    image_sizes: frozenset[tuple[int, int] | None]
    datasets: frozenset[str]

    @classmethod
    def of(cls, compared: pd.DataFrame, records: list[dict[str, Any]]) -> RunSetting:
        """From the ok rows of the compared columns (ResultStore.rows) and the run's records, whose recipes hold
        their profile's image size."""
        hashes = set(compared["config_hash"])
        sizes = {tuple(size) if (size := r["recipe"].get("profile", {}).get("image_size")) else None
                 for r in records if r["config_hash"] in hashes}
        return cls(frozenset(compared["backbone"]), frozenset(sizes),
                   frozenset(str(d).partition("@")[0] for d in compared["dataset"]))

    def text(self) -> str:
        if not self.datasets:
            return "no column the table has"
        sizes = " / ".join(sorted(map(size_text, self.image_sizes)))
        return f"{' / '.join(sorted(self.backbones))} at {sizes} on {', '.join(sorted(self.datasets))}"

    def differences(self, protocol: Protocol) -> list[str]:
        """What of the run is not made as ``protocol`` ("backbone", "image size", "data"): none when it is."""
        return [what for what, same in (
            ("backbone", self.backbones == {protocol.backbone}),
            ("image size", not protocol.image_size or self.image_sizes == {protocol.image_size}),
            ("data", bool(self.datasets) and self.datasets <= protocol.datasets)) if not same]


@dataclass(frozen=True)
class Comparison:
    """How one run's protocol compares with one reference's, and the line that says so."""

    kind: str
    """SAME, RANKS or DIFFERS."""
    label: str
    run: str
    protocol: str
    differences: tuple[str, ...] = ()

    @property
    def ranks(self) -> bool:
        """Whether τ against the reference means anything for this run."""
        return self.kind != DIFFERS

    def line(self) -> str:
        """One line under a table that sets the reference's numbers beside ours."""
        if self.kind == SAME:
            return f"Protocol: {self.run}, as the {self.label} table's."
        if self.kind == RANKS:
            return (f"Protocol: {self.run}, the {self.label} table's embedded stand-in (the table: {self.protocol}): "
                    f"ranks compare (τ below), values do not.")
        return (f"Protocol differs from the {self.label} table's ({self.gap()}): its numbers are set beside ours "
                f"because --vs asked for them, but neither values nor ranks compare, so no τ.")

    def why_not(self) -> str:
        """One line where a report leaves the reference out."""
        return f"Not set beside the {self.label} table: {self.gap()}. `table --vs` sets it beside anyway, with no τ."

    def gap(self) -> str:
        """``this run: efficientnet_lite0 at 96×128 px on scenes; the table: vit at ... (differs in: backbone)``."""
        return f"this run: {self.run}; the table: {self.protocol} (differs in: {', '.join(self.differences)})"


@dataclass(frozen=True)
class Reference:
    name: str
    label: str
    """Its columns' suffix in our tables: ``probe_seg.miou (paper)``."""
    csv: Path
    note: str
    protocol: Protocol
    columns: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    """(task, dataset name, metric) -> the reference's column; dataset None: the task's primary dataset,
    whichever it is (the reference's own setting)."""
    units: dict[str, float] = field(default_factory=dict)
    """The reference's column -> the factor that puts it in our units (a percentage where ours is a fraction: 0.01)."""
    stand_ins: tuple[Protocol, ...] = ()
    """Protocols of our embedded profiles built to reproduce its ordering, not its values (FeatUp's: the default
    profile): a run made so is ranked against it."""

    def table(self) -> pd.DataFrame:
        """The reference's numbers in our units, one row per method; ``confirmed`` says which were checked."""
        import pandas as pd

        table = pd.read_csv(self.csv).set_index("method")
        for column, factor in self.units.items():
            table[column] = table[column] * factor
        if "confirmed" not in table:
            table["confirmed"] = True
        return table

    def ranked(self) -> pd.DataFrame:
        """Its rows checked against their source: the only ones τ counts."""
        table = self.table()
        return table[table["confirmed"].astype(bool)]

    def unconfirmed_note(self, methods: list[str]) -> str:
        """One line naming the rows of ``methods`` whose figures were not checked against their source, or ""."""
        table = self.table()
        shown = [m for m in methods if m in table.index and not table.at[m, "confirmed"]]
        if not shown:
            return ""
        return (f"Not checked against the {self.label} table's source (column `confirmed` of "
                f"results/{self.csv.name}; results/references.md): {', '.join(shown)}. Shown, never ranked.")

    def matches(self, ok: pd.DataFrame) -> dict[str, str]:
        """Our table column -> the reference's, for the columns of ``ok`` (rows with a ``column``, as
        bench.reporting.report.with_columns gives them) that it has."""
        out = {}
        for r in ok.drop_duplicates("column").itertuples():
            primary = "@" not in r.column
            dataset = str(r.dataset).partition("@")[0]
            theirs = self.columns.get((r.task, dataset, r.metric)) or (
                self.columns.get((r.task, None, r.metric)) if primary else None)
            if theirs is not None:
                out[r.column] = theirs
        return out

    def compare(self, run: RunSetting) -> Comparison:
        """SAME where the run is made as the table was, RANKS where it is made as one of its stand-ins, else DIFFERS."""
        differences = run.differences(self.protocol)
        kind = SAME if not differences else RANKS if any(not run.differences(p) for p in self.stand_ins) else DIFFERS
        return Comparison(kind, self.label, run.text(), self.protocol.text(), tuple(differences))


def featup_columns() -> dict[tuple[str, str | None, str], str]:
    """Each registered task's ``paper_columns``, for its primary dataset."""
    from bench.registry import TASKS

    return {(name, None, metric): theirs for name in TASKS.names()
            for metric, theirs in TASKS.get(name).paper_columns.items()}


FEATUP_NOTE = (
    "paper: FeatUp Table 1 (ViT-S/16, COCO-Stuff, 224 px). The paper prints its segmentation columns as "
    "'mIoU' then 'Accuracy'; accuracy is almost always the higher one, so our mIoU is set beside its second "
    "column and our accuracy beside its first."
)
FEATUP_PROTOCOL = Protocol("vit", (224, 224), frozenset({"coco_stuff", "nyuv2", "imagenet"}))
"""Depth: the paper does not name its labels' source; NYUv2 is the paper profile's."""
JAFAR_NOTE = (
    "reference: JAFAR's README table (Couairon et al. 2025, github.com/PaulCouairon/JAFAR; DINOv2 ViT-S/14, "
    "448 px; linear probes 20 epochs, AdamW 5e-4, batch 2). Its depth columns are on COCO images with "
    "Depth-Anything-V2-Small pseudo-labels, not NYUv2, so beside our NYUv2 depth they compare ranks, not values; "
    "its FeatUp row is FeatUp's JBU (our featup_jbu). Its δ<1.25 is printed in percent; shown here as a fraction, "
    "as ours is."
)
JAFAR_SEG_COLUMNS = {
    ("probe_seg", "coco_stuff", "miou"): "coco_miou", ("probe_seg", "voc", "miou"): "voc_miou",
    ("probe_seg", "ade20k", "miou"): "ade20k_miou", ("probe_seg", "cityscapes", "miou"): "cityscapes_miou",
}
"""The four segmentation columns of JAFAR's protocol, which UPLiFT's table repeats."""
JAFAR_DEPTH_COLUMNS = {("probe_depth", None, "delta1.25"): "depth_delta1", ("probe_depth", None, "rmse"): "depth_rmse"}
JAFAR_COLUMNS = {**JAFAR_SEG_COLUMNS, **JAFAR_DEPTH_COLUMNS,
                 ("cam", None, "ad"): "cam_ad", ("cam", None, "ai"): "cam_ai"}
JAFAR_DATA = frozenset({"coco_stuff", "voc", "ade20k", "cityscapes"})
JAFAR_PROTOCOL = Protocol("dinov2", (448, 448), JAFAR_DATA | {"nyuv2", "imagenet"})
"""NYUv2: the jafar profile's stand-in for its COCO pseudo-label depth (JAFAR_NOTE)."""
UPLIFT_NOTE = (
    "reference: UPLiFT (Walmer, Suri, Aggarwal, Shrivastava, 'UPLiFT: Efficient Pixel-Dense Feature Upsampling "
    "with Local Attenders', CVPR 2026, arXiv 2601.17950; code github.com/mwalmer-umd/UPLiFT@85f09ee), on JAFAR's "
    "protocol (DINOv2 ViT-S/14, 448 px). Its depth columns follow JAFAR's (COCO pseudo-labels): ranks, not values, "
    "beside our NYUv2. Table number and every figure unconfirmed (results/references.md)."
)
UPSAMPLE_ANYTHING_NOTE = (
    "reference: Upsample Anything (Seo, Hamilton, Kim, 'Upsample Anything: A Simple and Hard to Beat Baseline for "
    "Feature Upsampling', arXiv 2511.16301; code github.com/seominseok0429/Upsample-Anything_Pytorch@6a02ae7): "
    "DINOv2 ViT-S, VOC mIoU and NYUv2 depth RMSE; its fixed JBU is our jbu_classic, its FeatUp our featup_jbu. "
    "Image size, table number and every figure unconfirmed (results/references.md)."
)
UPSAMPLE_ANYTHING_PROTOCOL = Protocol("dinov2", None, frozenset({"voc", "nyuv2"}))

BUILDERS: dict[str, Callable[[], Reference]] = {
    "featup": lambda: Reference("featup", "paper", RESULTS / "paper_table.csv", FEATUP_NOTE, FEATUP_PROTOCOL,
                                featup_columns(), stand_ins=(profile_protocol("default"),)),
    "jafar": lambda: Reference("jafar", "jafar", RESULTS / "jafar_table.csv", JAFAR_NOTE, JAFAR_PROTOCOL,
                               JAFAR_COLUMNS, units={"depth_delta1": 0.01}),
    "uplift": lambda: Reference("uplift", "uplift", RESULTS / "uplift_table.csv", UPLIFT_NOTE,
                                Protocol("dinov2", (448, 448), JAFAR_DATA | {"nyuv2"}),
                                {**JAFAR_SEG_COLUMNS, **JAFAR_DEPTH_COLUMNS}, units={"depth_delta1": 0.01}),
    "upsample_anything": lambda: Reference(
        "upsample_anything", "upsample_anything", RESULTS / "upsample_anything_table.csv", UPSAMPLE_ANYTHING_NOTE,
        UPSAMPLE_ANYTHING_PROTOCOL, {("probe_seg", "voc", "miou"): "voc_miou",
                                     ("probe_depth", "nyuv2", "rmse"): "nyuv2_rmse"}),
}
REFERENCES = tuple(BUILDERS)
"""The names ``table --vs`` takes."""

PROFILE_REFERENCES = {"jafar": "jafar"}
"""A profile -> the published table made in its setting (every other profile: FeatUp's)."""


def reference_for(profile: str) -> Reference:
    """The reference a run of ``profile`` is set beside in its report."""
    return reference(PROFILE_REFERENCES.get(profile, "featup"))


def reference(name: str) -> Reference:
    """The reference called ``name`` (one of REFERENCES); a clear error otherwise."""
    if name not in BUILDERS:
        raise ValueError(f"no reference table {name!r}: expected one of {', '.join(REFERENCES)}")
    return BUILDERS[name]()
