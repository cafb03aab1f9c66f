"""Intervals over seeds: the t-interval of a mean, and of a mean paired difference.

A sweep has a few seeds per setting, so its means carry Student-t intervals
(not bootstrap ones: three values give no resampling distribution worth the
name). Cells of one seed share the partition and initialization, so two
methods are compared by their paired differences, seed by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95  # Of every interval and paired comparison in a report.


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float]:
    """The `level` t-interval of the mean of `values` (NaNs for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    half = (
        stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    )
    return float(values.mean() - half), float(values.mean() + half)


def paired_difference(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float]:
    """(n, mean, low, high) of a - b over the seeds (index) both have, with its t-interval."""
    diff = (a - b).dropna()
    low, high = t_interval(diff)
    return len(diff), float(diff.mean()) if len(diff) else math.nan, low, high
