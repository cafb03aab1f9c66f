"""The memory of a run: lean mode (--lean_memory) and glibc's heap, at equal results.

A federated run's peak is its process plus its TFF workers. Lean memory means:
- the process builds its learning process in a fresh one (`fresh_process`),
  so the graphs of that tracing never live here;
- each local worker trains one client at a time (unless --worker_concurrency
  says otherwise) and returns blocks of 1 MB or more to the OS as soon as it
  frees them (glibc's `M_MMAP_THRESHOLD`; the state it receives and sends is
  ~45 MB for ResNet-18), as this process does during the federated stage;
- this process allocates TensorFlow's tensors with the system allocator
  rather than oneDNN's pool, which keeps the high-water mark of evaluation
  for the life of the process. The workers keep that pool: there it is fast,
  and the system allocator made rounds ~25% slower.
None of these changes a number (tested). They cost a few seconds per run (the
fresh process's imports), ~10% of the speed of Keras training in this process
(baselines, fine-tuning) and, with small models, round time: so `auto` is
lean for every model but the small CNN.

The heap calls (`trim_heap`, the mmap threshold) are glibc's, through one
loader, and no-ops where the C library is another.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
from collections.abc import Iterator

LEAN_MEMORY_MODES = ("auto", "on", "off")
# Models whose runs are lean under --lean_memory=auto.
_SMALL_MODELS = frozenset({"cnn"})
_MMAP_THRESHOLD = 1 << 20
_MMAP_THRESHOLD_AFTER = 32 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h).
# Read by TensorFlow's oneDNN CPU allocator when it is created, at the first tensor.
_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"


def is_lean(mode: str, model: str) -> bool:
    """Whether a run of `model` is lean under `--lean_memory=mode`."""
    if mode not in LEAN_MEMORY_MODES:
        raise ValueError(f"lean memory mode must be one of {LEAN_MEMORY_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and model not in _SMALL_MODELS)


def worker_env() -> dict[str, str]:
    """Environment of a lean worker: glibc's mmap threshold, unless the caller set their own."""
    name = "MALLOC_MMAP_THRESHOLD_"
    return {} if name in os.environ else {name: str(_MMAP_THRESHOLD)}


@contextlib.contextmanager
def large_blocks_returned(enabled: bool) -> Iterator[None]:
    """Within it, glibc gives blocks of 1 MB or more back to the OS as soon as they are freed.

    For the federated stage, whose peak is what lean memory lowers. Afterwards
    the threshold is 32 MB, the highest that glibc's own adapts to: the Keras
    training of the baselines and of fine-tuning then reuses freed blocks
    instead of faulting in fresh pages (with 1 MB, ~30% slower epochs). A
    no-op where libc is not glibc.
    """
    if not enabled:
        yield
        return
    _set_mmap_threshold(_MMAP_THRESHOLD)
    try:
        yield
    finally:
        _set_mmap_threshold(_MMAP_THRESHOLD_AFTER)


def _set_mmap_threshold(size: int) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, size)


def release_free_memory() -> None:
    """Collects garbage and returns glibc's free heap pages to the OS (so RSS reads true)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Returns glibc's free heap pages to the OS (`malloc_trim`; a no-op elsewhere).

    A round frees several model-sized buffers (the state sent and received,
    the evaluation's activations) in arenas that glibc would otherwise keep
    resident; the trainer trims after each round so that they do not.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (no `malloc_trim`, `mallopt`)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (AttributeError where absent)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def system_tensor_allocator(enabled: bool) -> Iterator[None]:
    """Within it, the first TensorFlow tensor of this process creates the system allocator.

    Around the code that allocates the first tensor (`experiment.setup`'s
    model check). Where a tensor came earlier, or the caller set the variable
    themselves, nothing changes. The variable is set only inside, so that
    workers and other children keep TensorFlow's default.
    """
    if not enabled or _ALLOCATOR_ENV in os.environ:
        yield
        return
    os.environ[_ALLOCATOR_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(_ALLOCATOR_ENV, None)
