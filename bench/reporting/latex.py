"""LaTeX tables that compile as pasted: escaped text in booktabs tabulars (the preamble needs ``booktabs``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: object) -> str:
    """``text`` as LaTeX that typesets it verbatim: method, task and dataset names are full of ``_``."""
    return "".join(SPECIALS.get(c, c) for c in str(text))


def latex_cell(value: object) -> str:
    """A plain table's cell: NaN as --, a float to 3 decimals, anything else as escaped text."""
    if pd.isna(value):
        return "--"
    return f"{value:.3f}" if isinstance(value, (float, np.floating)) else latex_escape(value)


def latex_row(cells: list[str]) -> str:
    return " & ".join(cells) + r" \\"


def latex_tabular(cells: pd.DataFrame, headers: list[str]) -> str:
    """``cells`` (LaTeX source) under ``headers`` (LaTeX source) in a booktabs tabular, after a left-aligned
    column per index level, whose names and labels are text (escaped here)."""
    names = [latex_escape(n or "") for n in cells.index.names]
    keys = [k if isinstance(k, tuple) else (k,) for k in cells.index]
    body = [latex_row([latex_escape(k) for k in key] + list(row)) for key, row in zip(keys, cells.itertuples(index=False))]
    return "\n".join([rf"\begin{{tabular}}{{{'l' * len(names)}{'r' * len(headers)}}}", r"\toprule",
                      latex_row(names + headers), r"\midrule", *body, r"\bottomrule", r"\end{tabular}"])


def latex_table(table: pd.DataFrame) -> str:
    """Any table of text and numbers (``profile --format latex``) as a booktabs tabular."""
    return latex_tabular(table.map(latex_cell), [latex_escape(c) for c in table.columns])
