"""Round checkpoints of a federated process's state: one `.npz` file per round, written atomically.

`NpzStateManager` is the `tff.program.ProgramStateManager` the trainer saves
the whole process state with after every round, and loads the latest from on
a rerun. The state's tensors, in `tf.nest` order, go into `round_<N>.npz`
through a temporary file renamed over it (`fileio`): a run killed mid-write
leaves the previous checkpoint, and loading gives back the very arrays saved,
so a resumed run computes what an uninterrupted one would.

Why not TFF's `FileProgramStateManager`: it writes a SavedModel per round,
wrapping every tensor in a `tf.Variable` and tracing an export graph, and
TensorFlow keeps part of that for the life of the process: the run's memory
grew by about the size of the state every round. Directories `round_<N>/` in
TFF's format, left by older runs, are still read.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import fileio

_PREFIX = "round_"
_SUFFIX = ".npz"


class NpzStateManager(tff.program.ProgramStateManager):
    """Saves and loads process states as `<root_dir>/round_<version>.npz`.

    Args:
        root_dir: Directory of the checkpoints (created if missing).
        keep_total: How many of the newest versions to keep (0 = all).
    """

    def __init__(self, root_dir: os.PathLike | str, *, keep_total: int = 2):
        if keep_total < 0:
            raise ValueError(f"keep_total must be >= 0, got {keep_total}")
        self.root = pathlib.Path(root_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_total = keep_total

    async def get_versions(self) -> list[int] | None:
        """The saved versions, oldest first; None when there is none (as TFF's managers)."""
        return sorted(self._paths()) or None

    async def load(self, version: int, structure: Any) -> Any:
        """The state saved as `version`, in the structure (and leaf types) of `structure`."""
        path = self._paths().get(version)
        if path is None:
            raise tff.program.ProgramStateNotFoundError(version)
        if path.is_dir():  # TFF's SavedModel format, written by an older run.
            legacy = tff.program.FileProgramStateManager(self.root, prefix=_PREFIX)
            return await legacy.load(version, structure)
        with np.load(path, allow_pickle=False) as arrays:
            leaves = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        expected = len(tf.nest.flatten(structure))
        if len(leaves) != expected:
            raise ValueError(
                f"{path} holds {len(leaves)} tensors but the process state has {expected}: it "
                "was saved by a different process; use a new output directory"
            )
        return tf.nest.pack_sequence_as(structure, [_from_array(a) for a in leaves])

    async def save(self, program_state: Any, version: int) -> None:
        """Writes `program_state` as `version`, then drops versions beyond `keep_total`."""
        if version in self._paths():
            raise tff.program.ProgramStateExistsError(version=version, path=str(self.root))
        state = await tff.program.materialize_value(program_state)
        leaves = [_to_array(leaf) for leaf in tf.nest.flatten(state)]

        def write(tmp: pathlib.Path) -> None:
            with open(tmp, "wb") as f:  # A file object: np.savez would add ".npz" to a name.
                np.savez(f, *leaves)

        fileio.write_with_atomic(self.root / f"{_PREFIX}{version}{_SUFFIX}", write)
        self._remove_old()

    def _paths(self) -> dict[int, pathlib.Path]:
        """Saved versions and their paths: `round_<N>.npz` files and TFF's `round_<N>/` dirs."""
        paths = {}
        for path in self.root.glob(f"{_PREFIX}*"):
            number = path.name[len(_PREFIX) :]
            if path.is_file() and number.endswith(_SUFFIX):
                number = number[: -len(_SUFFIX)]
            elif not path.is_dir():
                continue
            if number.isdigit():
                paths[int(number)] = path
        return paths

    def _remove_old(self) -> None:
        if not self.keep_total:
            return
        paths = self._paths()
        for version in sorted(paths)[: -self.keep_total]:
            path = paths[version]
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _to_array(leaf: Any) -> np.ndarray:
    """A state leaf as an array; Python scalars get the dtype TF would give them (float32, ...)."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        array = np.asarray(leaf)
    else:
        array = np.asarray(tf.constant(leaf).numpy())
    if array.dtype.hasobject:
        raise TypeError(f"cannot checkpoint a state leaf of type {type(leaf).__name__}")
    return array


def _from_array(array: np.ndarray) -> Any:
    """Strings come back as bytes, as from a TF string tensor; other leaves as arrays."""
    if array.dtype.kind == "S" and array.ndim == 0:
        return array.item()
    return array
