"""Markdown tables of DataFrames, as the sweep reports print and write them.

Hand-written rather than `DataFrame.to_markdown`, which needs `tabulate` and does
not escape a ``|`` inside a cell.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of `frame` (columns as header, index dropped)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)
