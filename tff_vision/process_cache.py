"""Built federated processes kept for the next experiment of the same process; off by default.

Building an algorithm's TFF process traces the Keras model into TFF
computations, seconds of work whose result depends only on the settings the
build reads, never on a run's seed, partition or output directory (the
process gets its initial weights from the run, see `training.RoundStep`). A
process that runs many experiments one after another (`experiments.cell_host`)
turns the cache on, and an experiment whose build key equals an earlier one's
reuses that build. Callers name everything the build depends on in the key.
The computations are values: running one in a fresh TFF context gives the
results of a fresh build. Off (the default), every lookup builds anew.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
_capacity = 0  # 0: off.
_stats = {"hits": 0, "builds": 0}


def enable(capacity: int = 4) -> None:
    """Keeps up to `capacity` builds, the least recently used dropped first."""
    global _capacity
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    with _lock:
        _capacity = capacity
        while len(_entries) > _capacity:
            _entries.popitem(last=False)


def disable() -> None:
    """Turns the cache off and drops every build it held."""
    global _capacity
    with _lock:
        _capacity = 0
        _entries.clear()


def enabled() -> bool:
    return _capacity > 0


def stats() -> dict[str, int]:
    """How many lookups reused a build (`hits`) and how many built (`builds`)."""
    with _lock:
        return dict(_stats, entries=len(_entries))


def get_or_build(key: Hashable, build: Callable[[], T]) -> T:
    """The build stored under `key`, else `build()` (stored when the cache is on).

    Building runs outside the lock; the key must hold every input of `build`
    that can differ between the callers that share the cache.
    """
    with _lock:
        if _capacity and key in _entries:
            _entries.move_to_end(key)
            _stats["hits"] += 1
            return _entries[key]
    value = build()
    with _lock:
        _stats["builds"] += 1
        if _capacity:
            _entries[key] = value
            while len(_entries) > _capacity:
                _entries.popitem(last=False)
    return value
