"""Progress lines for long work: durations, ETAs and one line per step.

Every runner shows progress the same way: `format_duration` is the one
duration format (``41 s``, ``3m05s``, ``1h02m``), and `Progress` prints a
step's metrics, its seconds and the ETA of the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def format_duration(seconds: float) -> str:
    """``41 s``, ``3m05s``, ``1h02m`` (negative durations count as 0)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """One terminal line per step: metrics, seconds per step and ETA.

    The ETA uses the mean duration of the steps run in this process (the first
    one, which includes tracing, only while it is alone), so a resumed run
    gives a sensible estimate from its first step.
    """

    def __init__(
        self, label: str, total: int, unit: str = "round", printer: Callable[[str], None] = print
    ):
        self.label, self.total, self.unit, self._print = label, total, unit, printer
        self._seconds: list[float] = []

    def update(self, step: int, seconds: float, metrics: dict[str, float]) -> str:
        self._seconds.append(seconds)
        mean = float(np.mean(self._seconds[1:] or self._seconds))
        parts = [f"[{self.label}] {self.unit} {step}/{self.total}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and np.isfinite(v)]
        parts.append(f"{seconds:.1f} s/{self.unit}")
        parts.append(f"ETA {format_duration(mean * (self.total - step))}")
        line = "  ".join(parts)
        self._print(line)
        return line
