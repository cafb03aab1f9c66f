"""The grid of a sweep: its cells, their names and run commands, validated before anything runs.

A cell is one `python -m experiments.run` with its own output directory. Its
name is stable, unique and filesystem-safe, so a rerun of the sweep finds the
directory of every cell again. No TensorFlow is imported (the class count for
a derived exclusion comes from the MedMNIST INFO table).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tff_vision import partition as partition_lib

# Flags the sweep sets per cell; every other run flag is fixed for the whole sweep.
SWEPT_FLAGS = ("partition", "algorithm", "model", "seed", "output_dir")
CELLS_DIR = "cells"
RUN_MODULE = "experiments.run"

# Characters kept as they are in a cell name component.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class SweepError(ValueError):
    """A sweep that cannot run; the message is one line naming the problem and the fix."""


def name_component(value: str, partition: bool = False) -> str:
    """A filesystem-safe, injective rendering of one cell-name component.

    Values made of ``[A-Za-z0-9._+-]`` stay as they are; any other value gets
    its unsafe characters replaced by ``-`` and a short hash of the original
    appended, so distinct values never collide. For a canonical partition spec
    the ``:`` becomes ``-`` (``dirichlet:0.5`` -> ``dirichlet-0.5``), which is
    still injective because no spec name contains ``-``.
    """
    text = value.replace(":", "-", 1) if partition else value
    if _UNSAFE.search(text) or not text:
        digest = hashlib.sha1(value.encode()).hexdigest()[:8]
        text = f"{_UNSAFE.sub('-', text)}-{digest}"
    return text


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
        partition: Canonical partition spec, e.g. ``dirichlet:0.5``.
        algorithm: Federated algorithm name (passed through to the run).
        model: Model name (passed through to the run).
        seed: Seed of the run.
        flags: ``(name, value)`` pairs of every other flag of the run, sorted by
            name: the sweep's fixed flags plus, for label_exclusion without a
            fixed ``--exclude``, the derived ``exclude``.
    """

    partition: str
    algorithm: str
    model: str
    seed: int
    flags: tuple[tuple[str, str], ...] = ()

    def _swept(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("partition", self.partition),
            ("algorithm", self.algorithm),
            ("model", self.model),
            ("seed", self.seed),
        )

    @property
    def name(self) -> str:
        """Stable, unique, filesystem-safe name (no ':', ';' or '/').

        Example: ``partition=dirichlet-0.5__algorithm=fedavg__model=cnn__seed=0``.
        The fixed flags are not part of it: they are the same for every cell.
        """
        return "__".join(
            f"{key}={name_component(str(value), partition=key == 'partition')}"
            for key, value in self._swept()
        )

    def output_dir(self, sweep_dir: os.PathLike | str) -> pathlib.Path:
        """The run's ``--output_dir``: ``<sweep_dir>/cells/<name>``."""
        return pathlib.Path(sweep_dir) / CELLS_DIR / self.name

    def command(self, sweep_dir: os.PathLike | str, python: str = sys.executable) -> list[str]:
        """The argv of this cell's run (no shell involved, so no quoting)."""
        argv = [python, "-m", RUN_MODULE]
        argv += [f"--{key}={value}" for key, value in self._swept()]
        argv += [f"--{key}={value}" for key, value in self.flags]
        argv.append(f"--output_dir={self.output_dir(sweep_dir)}")
        return argv

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self._swept()), "flags": dict(self.flags)}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Cell:
        return cls(
            partition=str(value["partition"]),
            algorithm=str(value["algorithm"]),
            model=str(value["model"]),
            seed=int(value["seed"]),
            flags=tuple(sorted((str(k), str(v)) for k, v in dict(value.get("flags", {})).items())),
        )


def canonical_partition(spec: str) -> str:
    """The canonical form of a partition spec (``'Dirichlet: 0.50'`` -> ``'dirichlet:0.5'``).

    Raises:
        SweepError: For an invalid spec (the message lists the valid forms).
    """
    try:
        name, param = partition_lib.parse_spec(spec)
    except partition_lib.PartitionError as e:
        raise SweepError(f"--partitions: {e}") from None
    if param is None:
        return name
    return f"{name}:{param:g}" if isinstance(param, float) else f"{name}:{param}"


def _unique(values: Sequence[str], flag: str) -> list[str]:
    out = []
    for value in values:
        value = str(value).strip()
        if not value:
            raise SweepError(f"--{flag} has an empty entry; remove the stray ','")
        if value not in out:
            out.append(value)
    if not out:
        raise SweepError(f"--{flag} is empty, so the grid has no cells; give at least one value")
    return out


def parse_seeds(seeds: Sequence[str | int]) -> list[int]:
    """Seeds as non-negative ints, duplicates dropped, order kept."""
    out = []
    for text in _unique([str(s) for s in seeds], "seeds"):
        try:
            seed = int(text)
        except ValueError:
            raise SweepError(
                f"--seeds entry {text!r} is not an integer; pass e.g. --seeds=0,1,2"
            ) from None
        if seed < 0:
            raise SweepError(f"--seeds entry {seed} is negative; seeds must be >= 0")
        if seed not in out:
            out.append(seed)
    return out


def derived_exclude(fixed_flags: Mapping[str, str]) -> str:
    """Rotating one-class exclusion for label_exclusion cells without a fixed ``--exclude``.

    Uses ``partition.exclude_per_client(num_clients, num_classes, 1)``: client i
    lacks class ``i % num_classes``. ``num_clients`` and the dataset come from
    the fixed flags or the run's defaults; the class count from the MedMNIST
    INFO table (no data is loaded).
    """
    from tff_vision import config  # pylint: disable=g-import-not-at-top
    from tff_vision import data as data_lib  # pylint: disable=g-import-not-at-top

    defaults = config.ExperimentConfig()
    dataset = fixed_flags.get("dataset", defaults.dataset)
    text = fixed_flags.get("num_clients", str(defaults.num_clients))
    try:
        num_clients = int(text)
    except ValueError:
        raise SweepError(
            f"--num_clients={text!r} is not an integer; pass e.g. --num_clients=3"
        ) from None
    try:
        num_classes = len(data_lib.dataset_info(dataset)["label"])
        excluded = partition_lib.exclude_per_client(num_clients, num_classes, 1)
    except (data_lib.DataError, partition_lib.PartitionError) as e:
        raise SweepError(f"cannot derive label_exclusion's --exclude: {e}") from None
    return ";".join(",".join(str(c) for c in group) for group in excluded)


def expand_grid(
    partitions: Sequence[str],
    algorithms: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[str | int],
    fixed_flags: Mapping[str, str],
) -> list[Cell]:
    """All cells of a grid, validated before anything runs.

    Cells are ordered seed-major (all cells of the first seed, then the next),
    so an early report already covers the whole grid; within a seed the order
    is partitions, then algorithms, then models, as given. Duplicates (after
    canonicalising partition specs) are dropped.

    Args:
        partitions: Partition specs (see `tff_vision.partition.parse_spec`).
        algorithms: Algorithm names, passed through (an unknown one fails its cells).
        models: Model names, passed through.
        seeds: Non-negative integer seeds.
        fixed_flags: Every other run flag, name (without ``--``) -> value text.

    Raises:
        SweepError: For an invalid partition spec, seed, an empty axis, or a
            swept flag among ``fixed_flags``.
    """
    fixed = {str(k).lstrip("-"): str(v) for k, v in fixed_flags.items()}
    for name in SWEPT_FLAGS:
        if name in fixed:
            fix = "--sweep_dir" if name == "output_dir" else f"--{name}s (comma-separated)"
            raise SweepError(f"--{name} is set per cell by the sweep; use {fix} instead")
    specs = list(dict.fromkeys(canonical_partition(p) for p in _unique(partitions, "partitions")))
    algorithms = _unique(algorithms, "algorithms")
    models = _unique(models, "models")
    seed_list = parse_seeds(seeds)
    base = tuple(sorted(fixed.items()))
    exclusion = None
    if "label_exclusion" in specs and not fixed.get("exclude", "").strip():
        exclusion = tuple(sorted({**fixed, "exclude": derived_exclude(fixed)}.items()))
    cells = []
    for seed, spec, algorithm, model in itertools.product(seed_list, specs, algorithms, models):
        cell_flags = exclusion if spec == "label_exclusion" and exclusion else base
        cells.append(Cell(spec, algorithm, model, seed, cell_flags))
    return cells


def grid_axes(cells: Sequence[Cell]) -> dict[str, list]:
    """The grid the cells span, as sweep.json records it: each axis's values in first-seen order."""
    return {
        f"{key}s": list(dict.fromkeys(getattr(c, key) for c in cells))
        for key in ("partition", "algorithm", "model", "seed")
    }
