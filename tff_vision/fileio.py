"""Atomic result files: every JSON, CSV and text output goes through here.

A file is written to a temporary name in its own directory and renamed over
the target, so a reader (or a run killed mid-write) sees the old file or the
new one, never half of one. JSON is strict: NaN and infinities, which stand
for undefined metrics, become null.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def _atomic_path(path: os.PathLike | str) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; renames it over `path` if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: os.PathLike | str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with _atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: os.PathLike | str, value: Any) -> None:
    """Writes `value` as strict, indented JSON (NaN/inf -> null) to `path` atomically."""
    text = json.dumps(_finite(value), indent=2, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def write_with_atomic(path: os.PathLike | str, write: Callable[[pathlib.Path], Any]) -> None:
    """Calls `write(tmp_path)` (e.g. `frame.to_csv`, `figure.savefig`) and renames atomically."""
    with _atomic_path(path) as tmp:
        write(tmp)


def write_csv_atomic(frame, path: os.PathLike | str) -> None:
    """Writes a pandas DataFrame with its index to `path` atomically."""
    write_with_atomic(path, frame.to_csv)


def read_json(path: os.PathLike | str) -> dict[str, Any] | None:
    """The JSON object at `path`, or None if it is missing, unreadable or not an object."""
    try:
        value = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _finite(value: Any) -> Any:
    """Replaces NaN/inf floats (undefined metrics) by None, recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
