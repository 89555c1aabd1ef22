"""Does our table order the methods as the paper's does? Kendall τ per metric, and who disagrees."""
from __future__ import annotations

import math

import pandas as pd

from bench.registry import METHODS, RegistryError
from bench.reporting.stats import discordant_pairs, kendall_tau
from methods.base import Upsampler


def is_reference(method: str) -> bool:
    """True for a reference row that is not an upsampler (colour_only); unknown (plugin) methods are upsamplers."""
    try:
        return bool(METHODS.get(method).reference)
    except RegistryError:
        return False


def sees_backbone_features(method: str) -> bool:
    """False for methods that change what the backbone sees (strided, large_image: they override ``features``).

    The paper ranks those below bilinear because a ViT degrades off its training geometry; a
    τ over the other methods isolates the upsamplers proper. Unknown (plugin) methods count as True.
    """
    try:
        cls = METHODS.get(method)
    except RegistryError:
        return True
    return cls.features is Upsampler.features


MIN_TAU_METHODS = 5
"""Fewest methods in common with a reference for a τ: over 4 there are 6 pairs, and one swap moves τ by 1/3."""


def gated_tau(ours: pd.Series, theirs: pd.Series) -> tuple[float, int]:
    """Kendall τ-b over the methods both score, and their number; NaN under MIN_TAU_METHODS."""
    tau, n = kendall_tau(ours, theirs)
    return (tau if n >= MIN_TAU_METHODS else math.nan), n


def better_first(pairs: list[tuple[str, str]], higher_is_better: bool) -> list[tuple[str, str]]:
    """Discordant pairs (ours larger first) as (better here, worse here) by the metric's direction."""
    return pairs if higher_is_better else [(b, a) for a, b in pairs]


def rank_agreement(table: pd.DataFrame, paper: pd.DataFrame, columns: dict[str, str],
                   higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """One row per our column with a paper column: τ over all common methods and over those that
    see the backbone's own features (each NaN under MIN_TAU_METHODS), with the number of methods and the
    pairs we order the other way round, as (better here, worse here) by ``higher_is_better`` of the column.
    Reference rows (colour_only) are not upsamplers and never count; pass only the reference's checked rows."""
    out = []
    methods = table.index.get_level_values(0)
    for ours, theirs in columns.items():
        if ours not in table.columns or methods.has_duplicates:
            continue
        mine = pd.Series(table[ours].to_numpy(), index=methods, dtype=float)
        mine = mine[[not is_reference(m) for m in mine.index]]
        same = [m for m in mine.index if sees_backbone_features(m)]
        tau_all, n_all = gated_tau(mine, paper[theirs])
        tau_same, n_same = gated_tau(mine[same], paper[theirs])
        pairs = better_first(discordant_pairs(mine, paper[theirs]), higher_is_better.get(ours, True))
        out.append({"column": ours, "paper": theirs, "tau_all": tau_all, "n_all": n_all, "tau_same_features": tau_same,
                    "n_same_features": n_same, "discordant": pairs})
    return pd.DataFrame(out)


def tau_text(tau: float, n: int, whose: str) -> str:
    """``τ +0.33 over 6 methods``, or why it is not given."""
    if n < MIN_TAU_METHODS:
        return f"no τ over {n} {whose} ({MIN_TAU_METHODS} needed)"
    if math.isnan(tau):
        return f"τ undefined over {n} {whose} (one side is constant)"
    return f"τ {tau:+.2f} over {n} {whose}"


WHOSE_SAME = "methods that see the backbone's own features"


def agreement_text(agreement: pd.DataFrame, against: str = "featup") -> str:
    """Markdown lines: τ per metric (where enough methods are in common) and the pairs ordered unlike the reference,
    worded by the metric's direction."""
    who = "the paper" if against == "featup" else f"the {against} reference"
    lines = [f"Rank agreement with {who} (Kendall τ-b; 1 = same order; τ needs {MIN_TAU_METHODS} or more methods "
             f"in common):", ""]
    for r in agreement.itertuples():
        pairs = ", ".join(f"{a} better than {b}" for a, b in r.discordant) or "none"
        lines.append(f"- {r.column}: {tau_text(r.tau_all, r.n_all, 'methods')}, "
                     f"{tau_text(r.tau_same_features, r.n_same_features, WHOSE_SAME)}; here, unlike {who}: {pairs}")
    return "\n".join(lines)
