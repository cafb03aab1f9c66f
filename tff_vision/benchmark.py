"""Performance harness: FedAvg overhead, memory growth, client scaling, multi-worker runs.

Everything is measured inside one Python process (plus the TFF worker
processes it starts), with the package's own pieces: `FederatedData` and its
`Preprocessing` for the per-round datasets, `build_fedavg` for the process and
`runtime` for the TFF workers. Rounds are run the way `FederatedTrainer` runs
them (sample clients, build their round datasets, `process.next`), without
evaluation, checkpoints or metric files.

Suites (each yields rows `suite, setting, data, values, ratio, target, met`):

* overhead: FedAvg round time (steady state: median of rounds 2..n; the first
  round, which includes TFF compilation, is reported separately) against one
  plain `keras.Model.fit` epoch over the same examples (same model, batch size
  and uint8 -> float pipeline), for each model and client count, on real
  RetinaMNIST split iid. Target: round / epoch <= 1.15.
* memory: RSS of this process plus its TFF workers at two rounds of a
  small-model run on synthetic data. Target: growth < 5%. A second row
  builds the same round datasets without TFF, to attribute growth to the
  input pipeline. Runs first by default: earlier suites leave freed memory
  behind that muddles RSS.
* clients: many registered clients with a few sampled per round against as
  many clients as are sampled, same examples per round (synthetic data).
  Target: round-time ratio <= 1.2; also reports RSS per registered client.
* workers: the same small experiment on 1 local worker (the default
  single-worker context) and on n workers (TFF's mergeable context over n
  local workers, see `runtime.start_local_multi_worker_context`): round time,
  the largest weight difference after one round from the same start state
  (target: <= 1e-6; only the order of the client sums differs) and after all
  rounds run freely (reported; training amplifies last-bit differences).

Rows report wall-clock ratios; `values` also gives the CPU seconds of this
process plus its workers, which a loaded machine disturbs much less.

Timings depend on the machine and its load; `meta` records the CPU count and
load averages before and after. `run` owns the TFF runtime while it runs: it
starts its own workers and calls `runtime.shutdown()` (stopping every worker
this process started) after each suite.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tff_vision import devices, interrupts, runtime

# Memory first by default: RSS is steadiest before other suites have come and gone.
SUITES = ("memory", "overhead", "clients", "workers")
COLUMNS = ("suite", "setting", "data", "values", "ratio", "target", "met")

_NUM_CLASSES_SYNTHETIC = 5
_INPUT_SHAPE_SYNTHETIC = (28, 28, 3)


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
        if min(self.overhead_rounds, self.clients_rounds, self.workers_rounds) < 1:
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
        from tff_vision import fileio  # pylint: disable=g-import-not-at-top

        fileio.write_json_atomic(path, self.as_dict())


# ----------------------------------------------------------------------------- measurement helpers


def process_tree_rss(pid: int | None = None) -> dict[str, int]:
    """RSS in bytes of process `pid` (default: this one) and of the TFF workers it started.

    Returns:
        `{"self": ..., "workers": ..., "total": ...}`.
    """
    import psutil  # pylint: disable=g-import-not-at-top

    pid = os.getpid() if pid is None else pid
    own = psutil.Process(pid).memory_info().rss
    workers = 0
    for worker_pid in runtime.find_workers(pid):
        try:
            workers += psutil.Process(worker_pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {"self": own, "workers": workers, "total": own + workers}


class _Clock:
    """Wall time plus CPU time of this process and the TFF workers alive at creation.

    CPU seconds are far less sensitive than wall time to other jobs on a
    loaded machine, so rows report both.
    """

    def __init__(self):
        import psutil  # pylint: disable=g-import-not-at-top

        pids = [os.getpid(), *runtime.find_workers(os.getpid())]
        self._procs = [psutil.Process(p) for p in pids]
        self._gone = psutil.Error
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs:
            try:
                times = proc.cpu_times()
            except self._gone:  # A worker that has exited.
                continue
            total += times.user + times.system
        return total

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        """Runs `fn()`, appending its wall and CPU seconds under `key`; returns its result."""
        interrupts.raise_if_interrupted()
        cpu0, wall0 = self._cpu(), time.perf_counter()
        result = fn()
        self.wall.setdefault(key, []).append(time.perf_counter() - wall0)
        self.cpu.setdefault(key, []).append(self._cpu() - cpu0)
        return result


def _mib(num_bytes: float) -> float:
    return num_bytes / 2**20


def steady_seconds(seconds: Sequence[float]) -> float:
    """Median of all but the first timing (the first alone when there is just one)."""
    seconds = list(seconds)
    if not seconds:
        raise ValueError("no timings")
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _max_abs_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    if len(a) != len(b):
        raise ValueError(f"weight lists differ in length: {len(a)} vs {len(b)}")
    return max((float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a, b)), default=0.0)


# ----------------------------------------------------------------------------- experiment pieces


@dataclasses.dataclass
class _Process:
    """A FedAvg learning process, its seeded initial weights and how long building took."""

    process: Any
    initial: Any
    build_seconds: float


def _build_fedavg(
    model_name: str, input_shape, num_classes: int, element_spec, config: BenchmarkConfig
) -> _Process:
    # pylint: disable=g-import-not-at-top
    from tff_vision import models
    from tff_vision.algorithms import build_fedavg, build_optimizer, keras_model

    def build_keras():
        return models.build_model(model_name, tuple(input_shape), num_classes, seed=config.seed)

    t0 = time.perf_counter()
    process = build_fedavg(
        keras_model.model_fn(build_keras, element_spec, skip_random_init=True),
        build_optimizer("sgd", config.client_lr),
    )
    build_seconds = time.perf_counter() - t0
    return _Process(process, keras_model.initial_weights(build_keras()), build_seconds)


class _Run:
    """One FedAvg run over `FederatedData`, round by round, as `FederatedTrainer` runs it."""

    def __init__(self, built: _Process, fed, clients_per_round: int = 0):
        self.built = built
        self.fed = fed
        self.clients_per_round = clients_per_round or len(fed.client_ids)
        self.state = None
        self.round_num = 0

    def reset(self) -> None:
        process = self.built.process
        self.state = process.set_model_weights(process.initialize(), self.built.initial)
        self.round_num = 0

    def run_round(self) -> None:
        if self.state is None:
            self.reset()
        self.round_num += 1
        clients = self.fed.sample_clients(self.round_num, self.clients_per_round)
        datasets = [self.fed.round_dataset(c, self.round_num) for c in clients]
        self.state = self.built.process.next(self.state, datasets).state

    def weights(self, state=None) -> list[np.ndarray]:
        weights = self.built.process.get_model_weights(self.state if state is None else state)
        return [np.asarray(w) for w in [*weights.trainable, *weights.non_trainable]]


def _federated_data(images, labels, num_clients: int, config: BenchmarkConfig):
    from tff_vision import client_data, partition  # pylint: disable=g-import-not-at-top

    part = partition.iid(labels, num_clients, seed=config.seed)
    prep = client_data.Preprocessing(batch_size=config.batch_size, seed=config.seed)
    return client_data.FederatedData(images, labels, part, prep)


def _synthetic(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, *_INPUT_SHAPE_SYNTHETIC), dtype=np.uint8)
    labels = rng.integers(0, _NUM_CLASSES_SYNTHETIC, num_examples).astype(np.int64)
    return images, labels


def _real(config: BenchmarkConfig, limit: int | None):
    from tff_vision import data  # pylint: disable=g-import-not-at-top

    ds = data.load(config.dataset, 28, config.data_dir, allow_download=config.allow_download)
    images, labels = ds.train.images, ds.train.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, ds.num_classes


def _single_worker(config: BenchmarkConfig) -> None:
    runtime.shutdown()
    runtime.start_local_context(
        max_concurrent_computation_calls=config.max_concurrent_computation_calls,
        env=config.worker_env(),
    )


class _KerasEpochs:
    """Plain `fit` epochs of the same model over all examples, with the clients' pipeline."""

    def __init__(self, images, labels, model_name: str, num_classes: int, config: BenchmarkConfig):
        # pylint: disable=g-import-not-at-top
        import tensorflow as tf

        from tff_vision import client_data, models
        from tff_vision.algorithms import keras_model

        self._prep = client_data.Preprocessing(batch_size=config.batch_size, seed=config.seed)
        self._pooled = client_data.pooled_dataset(images, labels)
        self.model = models.build_model(model_name, images.shape[1:], num_classes, seed=config.seed)
        self.model.compile(
            optimizer=tf.keras.optimizers.SGD(config.client_lr),
            loss=keras_model.loss(),
            metrics=["accuracy"],
        )
        self.steps = -(-len(labels) // config.batch_size)
        self.epoch = 0

    def run_epoch(self) -> None:
        self.epoch += 1
        self.model.fit(self._prep.apply(self._pooled, self.epoch, "pooled"), epochs=1, verbose=0)


# ----------------------------------------------------------------------------- suites


def suite_overhead(config: BenchmarkConfig, printer: Callable[[str], None]) -> list[Row]:
    """FedAvg round vs plain Keras epoch, per model and client count (real data).

    Keras epochs and the rounds of every client count are interleaved (epoch
    1, round 1 of each setting, epoch 2, ...) so that load changes on a shared
    machine hit all of them alike.
    """
    images, labels, num_classes = _real(config, config.overhead_examples)
    _single_worker(config)
    clock = _Clock()
    rows = []
    for model_name in config.overhead_models:
        keras = _KerasEpochs(images, labels, model_name, num_classes, config)
        element_spec = _federated_data(images, labels, 1, config).element_spec
        built = _build_fedavg(model_name, images.shape[1:], num_classes, element_spec, config)
        runs = {
            n: _Run(built, _federated_data(images, labels, n, config))
            for n in config.overhead_clients
        }
        for _ in range(config.overhead_rounds):
            clock.measure(f"{model_name}/keras", keras.run_epoch)
            for n, run in runs.items():
                clock.measure(f"{model_name}/{n}", run.run_round)
        epochs, epochs_cpu = clock.wall[f"{model_name}/keras"], clock.cpu[f"{model_name}/keras"]
        epoch, epoch_cpu = steady_seconds(epochs), steady_seconds(epochs_cpu)
        printer(f"  overhead {model_name}: keras epoch {epoch:.2f}s (first {epochs[0]:.2f}s)")
        for n, run in runs.items():
            rounds, rounds_cpu = clock.wall[f"{model_name}/{n}"], clock.cpu[f"{model_name}/{n}"]
            round_s, round_cpu = steady_seconds(rounds), steady_seconds(rounds_cpu)
            steps = sum(
                -(-run.fed.num_examples(c) // config.batch_size) for c in run.fed.client_ids
            )
            ratio = _ratio(round_s, epoch)
            printer(
                f"  overhead {model_name} x{n}: round {round_s:.2f}s "
                f"(first {rounds[0]:.2f}s) ratio {ratio:.2f}"
            )
            rows.append(
                Row(
                    suite="overhead",
                    setting=f"{model_name}, {n} clients, {len(labels)} ex",
                    data="real",
                    values=(
                        f"round {round_s:.2f}s (first {rounds[0]:.1f}s) vs epoch {epoch:.2f}s; "
                        f"cpu {round_cpu:.2f} vs {epoch_cpu:.2f}s; steps {steps} vs {keras.steps}"
                    ),
                    ratio=ratio,
                    target="<= 1.15",
                    met=_yes(ratio is not None and ratio <= 1.15),
                    details={
                        "model": model_name,
                        "num_clients": n,
                        "num_examples": len(labels),
                        "batch_size": config.batch_size,
                        "round_seconds": rounds,
                        "epoch_seconds": epochs,
                        "round_cpu_seconds": rounds_cpu,
                        "epoch_cpu_seconds": epochs_cpu,
                        "steady_round_seconds": round_s,
                        "steady_epoch_seconds": epoch,
                        "cpu_ratio": _ratio(round_cpu, epoch_cpu),
                        "first_round_seconds": rounds[0],
                        "process_build_seconds": built.build_seconds,
                        "federated_steps_per_round": steps,
                        "keras_steps_per_epoch": keras.steps,
                    },
                )
            )
    runtime.shutdown()
    return rows


def suite_memory(config: BenchmarkConfig, printer: Callable[[str], None]) -> list[Row]:
    """RSS (this process + TFF workers) at two rounds of one small-model run.

    The worker is replaced every `memory_restart_every` rounds, as in the
    runner (`runtime.restart_local_workers`); the row also gives the peak RSS
    seen after any round, and the worker's own growth per round between
    restarts. A second row builds the same round datasets for as many rounds without
    running anything (no TFF): the growth of this process there is what the
    input pipeline alone accounts for.
    """
    early, late = config.memory_rounds
    images, labels = _synthetic(config.memory_clients * config.examples_per_client, config.seed)
    fed = _federated_data(images, labels, config.memory_clients, config)
    _single_worker(config)
    clock = _Clock()
    built = _build_fedavg(
        config.memory_model, fed.input_shape, _NUM_CLASSES_SYNTHETIC, fed.element_spec, config
    )
    run = _Run(built, fed)
    samples, peak, restarts = {}, 0, []
    every = config.memory_restart_every
    for round_num in range(1, late + 1):
        clock.measure("round", run.run_round)
        peak = max(peak, process_tree_rss()["total"])
        if round_num in (early, late):
            runtime.release_free_memory()
            samples[round_num] = process_tree_rss()
            printer(
                f"  memory round {round_num}: {_mib(samples[round_num]['total']):.0f} MiB "
                f"(workers {_mib(samples[round_num]['workers']):.0f} MiB)"
            )
        if runtime.restart_workers_after(round_num, every, late):
            restarts.append(round_num)
    runtime.shutdown()

    datasets_only = {}
    for round_num in range(1, late + 1):
        for client in fed.client_ids:
            fed.round_dataset(client, late + round_num)
        if round_num in (early, late):
            runtime.release_free_memory()
            datasets_only[round_num] = process_tree_rss()["self"]
    printer(
        f"  memory, round datasets only: {_mib(datasets_only[early]):.0f} -> "
        f"{_mib(datasets_only[late]):.0f} MiB"
    )

    def per_round(a: float, b: float) -> float:
        return (b - a) / (late - early)

    round_s = steady_seconds(clock.wall["round"])
    first, last = samples[early]["total"], samples[late]["total"]
    growth = (last - first) / first
    self_kib = per_round(samples[early]["self"], samples[late]["self"]) / 1024
    # The worker at round `late` started after the last restart before it (or with the run).
    worker_start = max([r for r in restarts if r < late], default=0)
    worker_rounds = late - worker_start
    worker_base = samples[early]["workers"] if worker_start < early else None
    workers_kib = (
        (samples[late]["workers"] - worker_base) / (late - early) / 1024
        if worker_base is not None
        else None
    )
    restart_text = f"worker restarted every {every} rounds" if every else "no worker restarts"
    workers_text = (
        "n/a (restarted in between)" if workers_kib is None else f"{workers_kib:+.0f} KiB"
    )
    data_first, data_last = datasets_only[early], datasets_only[late]
    data_growth = (data_last - data_first) / data_first
    return [
        Row(
            suite="memory",
            setting=(
                f"{config.memory_model}, {config.memory_clients} clients, round {early} vs {late}"
            ),
            data="synthetic",
            values=(
                f"RSS {_mib(first):.0f} -> {_mib(last):.0f} MiB ({growth:+.1%}), peak "
                f"{_mib(peak):.0f} MiB ({(peak - first) / first:+.1%}); per round: self "
                f"{self_kib:+.0f} KiB, workers {workers_text}; round {round_s:.2f}s; {restart_text}"
            ),
            ratio=_ratio(last, first),
            target="growth < 5%",
            met=_yes(growth < 0.05),
            details={
                "rounds": [early, late],
                "rss_bytes": {str(k): v for k, v in samples.items()},
                "peak_rss_bytes": peak,
                "growth": growth,
                "peak_growth": (peak - first) / first,
                "restart_every": every,
                "restarts_after_rounds": restarts,
                "worker_rounds_at_late": worker_rounds,
                "self_bytes_per_round": self_kib * 1024,
                "workers_bytes_per_round": None if workers_kib is None else workers_kib * 1024,
                "round_seconds": clock.wall["round"],
                "examples_per_client": config.examples_per_client,
            },
        ),
        Row(
            suite="memory",
            setting=(
                f"round datasets only (no TFF), {config.memory_clients} clients, "
                f"round {early} vs {late}"
            ),
            data="synthetic",
            values=(
                f"RSS self {_mib(data_first):.0f} -> {_mib(data_last):.0f} MiB "
                f"({data_growth:+.1%}); {per_round(data_first, data_last) / 1024:+.0f} KiB/round"
            ),
            ratio=_ratio(data_last, data_first),
            target="growth < 5%",
            met=_yes(data_growth < 0.05),
            details={
                "rounds": [early, late],
                "rss_bytes": {str(early): data_first, str(late): data_last},
                "growth": data_growth,
                "bytes_per_round": per_round(data_first, data_last),
            },
        ),
    ]


def suite_clients(config: BenchmarkConfig, printer: Callable[[str], None]) -> list[Row]:
    """Many registered clients, a few sampled, vs as many clients as are sampled.

    Both settings share one process and their rounds are interleaved.
    """
    per_client = config.examples_per_client
    dense_n, sparse_n = config.clients_sampled, config.clients_registered
    _single_worker(config)
    clock = _Clock()
    feds, data_bytes = {}, {}
    for registered in (dense_n, sparse_n):
        images, labels = _synthetic(registered * per_client, config.seed)
        runtime.release_free_memory()
        before = process_tree_rss()["total"]
        feds[registered] = _federated_data(images, labels, registered, config)
        runtime.release_free_memory()
        data_bytes[registered] = process_tree_rss()["total"] - before
    first = feds[dense_n]
    built = _build_fedavg(
        config.memory_model, first.input_shape, _NUM_CLASSES_SYNTHETIC, first.element_spec, config
    )
    runs = {n: _Run(built, feds[n], config.clients_sampled) for n in (dense_n, sparse_n)}
    for _ in range(config.clients_rounds):
        for n, run in runs.items():
            clock.measure(str(n), run.run_round)
    runtime.shutdown()
    dense, sparse = (
        steady_seconds(clock.wall[str(dense_n)]),
        steady_seconds(clock.wall[str(sparse_n)]),
    )
    dense_cpu = steady_seconds(clock.cpu[str(dense_n)])
    sparse_cpu = steady_seconds(clock.cpu[str(sparse_n)])
    printer(f"  clients {sparse_n} registered: round {sparse:.2f}s vs {dense:.2f}s")
    ratio = _ratio(sparse, dense)
    extra = sparse_n - dense_n
    per_registered = (data_bytes[sparse_n] - data_bytes[dense_n]) / extra if extra else float("nan")
    return [
        Row(
            suite="clients",
            setting=(
                f"{sparse_n} clients, {dense_n}/round vs {dense_n} clients; {per_client} ex/client"
            ),
            data="synthetic",
            values=(
                f"round {sparse:.2f}s vs {dense:.2f}s; cpu {sparse_cpu:.2f} vs {dense_cpu:.2f}s; "
                f"{per_registered / 1024:.0f} KiB RSS/registered client"
            ),
            ratio=ratio,
            target="<= 1.2",
            met=_yes(ratio is not None and ratio <= 1.2),
            details={
                "round_seconds": {k: v for k, v in clock.wall.items()},
                "round_cpu_seconds": {k: v for k, v in clock.cpu.items()},
                "data_rss_bytes": {str(k): v for k, v in data_bytes.items()},
                "rss_bytes_per_registered_client": per_registered,
                "raw_image_bytes_per_client": per_client * int(np.prod(_INPUT_SHAPE_SYNTHETIC)),
            },
        )
    ]


def suite_workers(config: BenchmarkConfig, printer: Callable[[str], None]) -> list[Row]:
    """One small experiment on 1 worker and on n workers: time and weight agreement.

    Two comparisons per worker count: one round from the same start state
    (the single-worker run's state before that round), which isolates what
    the mergeable execution changes (only the order in which client sums are
    added), and the free-running final weights, where training can amplify
    those last-bit differences over the rounds.
    """
    images, labels, num_classes = _real(config, config.workers_examples)
    fed = _federated_data(images, labels, config.workers_clients, config)
    built = _build_fedavg(
        config.workers_model, fed.input_shape, num_classes, fed.element_spec, config
    )
    run = _Run(built, fed)

    _single_worker(config)
    clock = _Clock()
    run.reset()
    states = [run.state]
    for _ in range(config.workers_rounds):
        clock.measure("1", run.run_round)
        states.append(run.state)
    expected = [run.weights(s) for s in states[1:]]
    runtime.shutdown()
    base_seconds = clock.wall["1"]
    base = steady_seconds(base_seconds)
    printer(f"  workers 1: round {base:.2f}s (first {base_seconds[0]:.2f}s)")
    rows = []
    for count in config.workers_counts:
        runtime.start_local_multi_worker_context(
            count,
            max_concurrent_computation_calls=config.max_concurrent_computation_calls,
            env=config.worker_env(),
        )
        try:
            clock = _Clock()
            run.reset()
            for _ in range(config.workers_rounds):
                clock.measure(str(count), run.run_round)
            final = run.weights()
            one_round = []
            for round_num in range(1, config.workers_rounds + 1):
                run.state, run.round_num = states[round_num - 1], round_num - 1
                run.run_round()
                one_round.append(_max_abs_difference(run.weights(), expected[round_num - 1]))
        finally:
            runtime.shutdown()
        seconds = clock.wall[str(count)]
        delta_final = _max_abs_difference(final, expected[-1])
        delta_round = max(one_round)
        steady = steady_seconds(seconds)
        ratio = _ratio(steady, base)
        printer(
            f"  workers {count}: round {steady:.2f}s, max|dw| one round {delta_round:.2g}, "
            f"final {delta_final:.2g}"
        )
        rows.append(
            Row(
                suite="workers",
                setting=(
                    f"{config.workers_model}, {config.workers_clients} clients, "
                    f"{config.workers_rounds} rounds: {count} workers vs 1"
                ),
                data="real",
                values=(
                    f"round {steady:.2f}s vs {base:.2f}s (first {seconds[0]:.1f}s vs "
                    f"{base_seconds[0]:.1f}s); max|dw| one round {delta_round:.2g}, "
                    f"after {config.workers_rounds} rounds {delta_final:.2g}"
                ),
                ratio=ratio,
                target="one-round max|dw| <= 1e-6 (ratio: time n/1, info)",
                met=_yes(delta_round <= 1e-6),
                details={
                    "workers": count,
                    "round_seconds": seconds,
                    "round_cpu_seconds": clock.cpu[str(count)],
                    "single_worker_round_seconds": base_seconds,
                    "one_round_max_abs_weight_difference": one_round,
                    "final_max_abs_weight_difference": delta_final,
                    "max_abs_weight": max(float(np.abs(w).max()) for w in expected[-1]),
                    "num_examples": len(labels),
                },
            )
        )
    return rows


_SUITE_FNS = {
    "overhead": suite_overhead,
    "memory": suite_memory,
    "clients": suite_clients,
    "workers": suite_workers,
}


def run(config: BenchmarkConfig, printer: Callable[[str], None] = print) -> BenchmarkResult:
    """Runs the suites of `config` in this process and returns their rows.

    Starts and stops its own TFF workers (`runtime.shutdown()` after each
    suite, which also stops workers this process started before).
    """
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    import tensorflow_federated as tff

    config.validate()
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "load_average_start": _load_average(),
        "devices": devices.configure_devices(verbose=False),
        "op_determinism": devices.set_op_determinism(config.op_determinism),
        "precision": devices.set_mixed_precision(config.mixed_precision),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_federated": tff.__version__,
        "suite_seconds": {},
    }
    rows: list[Row] = []
    t_start = time.perf_counter()
    try:
        for suite in config.suites:
            printer(f"[benchmark] {suite} ...")
            t0 = time.perf_counter()
            rows.extend(_SUITE_FNS[suite](config, printer))
            meta["suite_seconds"][suite] = time.perf_counter() - t0
    finally:
        runtime.shutdown()
    meta["seconds"] = time.perf_counter() - t_start
    meta["load_average_end"] = _load_average()
    return BenchmarkResult(rows=rows, meta=meta, config=config)
