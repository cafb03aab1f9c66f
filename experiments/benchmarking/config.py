"""The benchmark's settings (`BenchmarkConfig`) and its results (`Row`, `BenchmarkResult`).

A result is one table with the columns `COLUMNS`, one row per measured
setting, plus the raw numbers of every row and what the run was measured on
(`meta`), all of which `write_json` saves.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tff_vision import devices, fileio

# Memory first by default: RSS is steadiest before other suites have come and gone.
SUITES = ("memory", "overhead", "clients", "workers", "run_memory", "sweep")
COLUMNS = ("suite", "setting", "data", "values", "ratio", "target", "met")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What the harness runs. `BenchmarkConfig.full()` / `.quick()` are the presets.

    Attributes:
        suites: Which of `SUITES` to run, in this order.
        dataset: MedMNIST dataset of the real-data suites (overhead, workers).
        data_dir: Where its `.npz` lives (see `data.load`).
        allow_download: Download the dataset when missing.
        batch_size: Batch size of clients and of the Keras baseline.
        client_lr: Client (and Keras baseline) SGD learning rate.
        seed: Seed of partitions, preprocessing, synthetic data and weights.
        overhead_models: Models of the overhead suite (`models.MODEL_NAMES`).
        overhead_clients: Client counts of the overhead suite.
        overhead_rounds: Rounds (and Keras epochs) per overhead setting, >= 1.
        overhead_examples: Use only the first this many training examples
            (None: the whole training split, 1080 for RetinaMNIST).
        memory_model: Model of the memory suite.
        memory_rounds: The two rounds at which RSS is compared.
        memory_clients: Clients of the memory run (all take part every round).
        memory_restart_every: Fresh TFF worker after every this many rounds of
            the memory run, as the runner's --restart_workers_every does
            (0 = never: shows the worker's own growth).
        memory_run_rounds: Rounds of the run_memory suite's reference run.
        memory_run_flags: Further `experiments.run` flags of that run.
        memory_baseline_tree: A checkout of older code whose reference run
            the run_memory suite measures too, for a before/after row.
        sweep_quick: The sweep suite runs its 4-cell grid instead of the
            README's 20-cell one.
        examples_per_client: Synthetic examples per client (memory, clients).
        clients_registered: Registered clients of the sampled setting.
        clients_sampled: Clients per round (and clients of the dense setting).
        clients_rounds: Rounds per clients setting.
        workers_counts: Worker counts compared against 1 worker.
        workers_clients: Clients of the workers experiment.
        workers_rounds: Rounds of the workers experiment.
        workers_examples: Real training examples of the workers experiment
            (None: all).
        workers_model: Model of the workers experiment.
        max_concurrent_computation_calls: Passed to every TFF worker.
        worker_threads: If set, `TF_NUM_INTRAOP_THREADS` and
            `TF_NUM_INTEROP_THREADS` of the TFF workers.
        op_determinism: `devices.set_op_determinism` mode, applied alike to
            this process (the Keras baseline) and the TFF workers, as the
            experiment runner does.
        mixed_precision: Build every model (Keras baseline and TFF clients
            alike) under `devices.set_mixed_precision`.
    """

    suites: tuple[str, ...] = SUITES
    dataset: str = "retinamnist"
    data_dir: str | None = None
    allow_download: bool = False
    batch_size: int = 32
    client_lr: float = 0.05
    seed: int = 0
    overhead_models: tuple[str, ...] = ("cnn", "resnet18")
    overhead_clients: tuple[int, ...] = (3, 10)
    overhead_rounds: int = 6
    overhead_examples: int | None = None
    memory_model: str = "cnn"
    memory_rounds: tuple[int, int] = (20, 200)
    memory_clients: int = 10
    memory_restart_every: int = 50
    memory_run_rounds: int = 20
    memory_run_flags: tuple[str, ...] = ()
    memory_baseline_tree: str | None = None
    sweep_quick: bool = False
    examples_per_client: int = 32
    clients_registered: int = 100
    clients_sampled: int = 10
    clients_rounds: int = 8
    workers_counts: tuple[int, ...] = (2, 3, 4)
    workers_clients: int = 8
    workers_rounds: int = 5
    workers_examples: int | None = None
    workers_model: str = "cnn"
    max_concurrent_computation_calls: int = -1
    worker_threads: int | None = None
    op_determinism: str = "auto"
    mixed_precision: bool = False

    @classmethod
    def full(cls, **overrides) -> BenchmarkConfig:
        """The full benchmark (roughly 10-20 minutes on 2 idle cores)."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> BenchmarkConfig:
        """A reduced run, meant to finish in under 10 minutes on 2 idle cores."""
        values = dict(
            overhead_rounds=3,
            memory_rounds=(10, 50),
            memory_restart_every=20,
            memory_run_rounds=4,
            sweep_quick=True,
            clients_rounds=4,
            workers_counts=(2,),
            workers_clients=4,
            workers_rounds=3,
        )
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        """Raises ValueError for settings the harness cannot run."""
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; use some of {', '.join(SUITES)}")
        rounds = (self.overhead_rounds, self.clients_rounds, self.workers_rounds)
        if min(*rounds, self.memory_run_rounds) < 1:
            raise ValueError("every *_rounds must be >= 1")
        early, late = self.memory_rounds
        if not 1 <= early < late:
            raise ValueError(f"memory_rounds must be 1 <= early < late, got {self.memory_rounds}")
        if self.memory_restart_every < 0:
            raise ValueError("memory_restart_every must be >= 0 (0 = never)")
        if self.clients_sampled > self.clients_registered:
            raise ValueError("clients_sampled must be <= clients_registered")
        if self.workers_counts and max(self.workers_counts) > self.workers_clients:
            raise ValueError("workers_clients must be >= the largest worker count")
        if any(n < 1 for n in self.overhead_clients):
            raise ValueError("client counts must be >= 1")
        if any(n < 1 for n in self.workers_counts):
            raise ValueError("worker counts must be >= 1")
        if self.op_determinism not in devices.OP_DETERMINISM_MODES:
            raise ValueError(
                f"op_determinism must be one of {', '.join(devices.OP_DETERMINISM_MODES)}"
            )

    def worker_env(self) -> dict[str, str]:
        """Environment of the TFF workers (thread settings)."""
        if self.worker_threads is None:
            return {}
        threads = str(self.worker_threads)
        return {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}


@dataclasses.dataclass
class Row:
    """One line of the result table; `details` holds the raw numbers (JSON only)."""

    suite: str
    setting: str
    data: str
    values: str
    ratio: float | None
    target: str
    met: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def ratio_at_most(cls, limit: float, **fields) -> Row:
        """A row whose target is `ratio <= limit` (not met without a ratio); `fields`: the rest."""
        ratio = fields["ratio"]
        met = ratio is not None and ratio <= limit
        return cls(target=f"<= {limit:g}", met=yes_no(met), **fields)

    @classmethod
    def growth_below_5_percent(cls, first: float, last: float, **fields) -> Row:
        """A row whose target is growth from `first` to `last` below 5%; ratio: last / first."""
        growth = (last - first) / first
        ratio = last / first if first > 0 else None
        return cls(ratio=ratio, target="growth < 5%", met=yes_no(growth < 0.05), **fields)


def yes_no(ok: bool) -> str:
    """The `met` column: "yes" or "no"."""
    return "yes" if ok else "no"


@dataclasses.dataclass
class BenchmarkResult:
    """All rows plus what they were measured on."""

    rows: list[Row]
    meta: dict[str, Any]
    config: BenchmarkConfig

    def frame(self):
        """The table as a pandas DataFrame with `COLUMNS`."""
        import pandas as pd  # pylint: disable=g-import-not-at-top

        return pd.DataFrame([{c: getattr(r, c) for c in COLUMNS} for r in self.rows])

    def table(self) -> str:
        """The table as text (pandas `to_string`)."""
        frame = self.frame()
        if frame.empty:
            return "(no rows)"
        return frame.to_string(index=False, float_format=lambda v: f"{v:.3g}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "config": dataclasses.asdict(self.config),
            "columns": list(COLUMNS),
            "rows": [r.as_dict() for r in self.rows],
        }

    def write_json(self, path: os.PathLike) -> None:
        fileio.write_json_atomic(path, self.as_dict())
