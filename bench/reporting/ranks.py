"""Does our table order the methods as the paper's does? Kendall τ per metric, and who disagrees."""
from __future__ import annotations

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


def rank_agreement(table: pd.DataFrame, paper: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """One row per our column with a paper column: τ over all common methods and over those that
    see the backbone's own features, with the number of methods and the discordant pairs (all).
    Reference rows (colour_only) are not upsamplers and never count."""
    out = []
    methods = table.index.get_level_values(0)
    for ours, theirs in columns.items():
        if ours not in table.columns or methods.has_duplicates:
            continue
        mine = pd.Series(table[ours].to_numpy(), index=methods, dtype=float)
        mine = mine[[not is_reference(m) for m in mine.index]]
        same = [m for m in mine.index if sees_backbone_features(m)]
        tau_all, n_all = kendall_tau(mine, paper[theirs])
        tau_same, n_same = kendall_tau(mine[same], paper[theirs])
        out.append({"column": ours, "paper": theirs, "tau_all": tau_all, "n_all": n_all, "tau_same_features": tau_same,
                    "n_same_features": n_same, "discordant": discordant_pairs(mine, paper[theirs])})
    return pd.DataFrame(out)


def agreement_text(agreement: pd.DataFrame, against: str = "featup") -> str:
    """Markdown lines: τ per metric and the pairs of methods ordered unlike the reference."""
    who = "the paper" if against == "featup" else f"the {against} reference"
    lines = [f"Rank agreement with {who} (Kendall τ-b; 1 = same order):", ""]
    for r in agreement.itertuples():
        pairs = ", ".join(f"{a} > {b}" for a, b in r.discordant) or "none"
        lines.append(f"- {r.column}: τ {r.tau_all:+.2f} over {r.n_all} methods, {r.tau_same_features:+.2f} over the "
                     f"{r.n_same_features} that see the backbone's own features; ordered unlike {who} "
                     f"(ours first): {pairs}")
    return "\n".join(lines)
