"""The benchmark suites; each takes a `BenchmarkConfig` and returns its `Row`s.

Each suite starts the TFF workers it needs and stops every worker of this
process (`runtime.shutdown()`) when done. Settings compared in one suite run
interleaved (a round of each in turn), so that load changes on a shared
machine hit them alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from experiments.benchmarking import measure, runs
from experiments.benchmarking.config import BenchmarkConfig, Row, yes_no
from experiments.benchmarking.measure import Clock, mib, process_tree_rss, ratio, steady_seconds
from experiments.benchmarking.run_memory import suite_run_memory
from experiments.benchmarking.sweep_suite import suite_sweep
from tff_vision import memory, runtime

Printer = Callable[[str], None]


def suite_overhead(config: BenchmarkConfig, printer: Printer) -> list[Row]:
    """FedAvg round vs plain Keras epoch, per model and client count (real data).

    Keras epochs and the rounds of every client count are interleaved (epoch
    1, round 1 of each setting, epoch 2, ...).
    """
    images, labels, num_classes = runs.real(config, config.overhead_examples)
    runs.single_worker(config)
    clock = Clock()
    rows = []
    for model_name in config.overhead_models:
        keras = runs.KerasEpochs(images, labels, model_name, num_classes, config)
        element_spec = runs.federated_data(images, labels, 1, config).element_spec
        built = runs.build_fedavg_process(
            model_name, images.shape[1:], num_classes, element_spec, config
        )
        by_clients = {
            n: runs.Run(built, runs.federated_data(images, labels, n, config))
            for n in config.overhead_clients
        }
        for _ in range(config.overhead_rounds):
            clock.measure(f"{model_name}/keras", keras.run_epoch)
            for n, run in by_clients.items():
                clock.measure(f"{model_name}/{n}", run.run_round)
        epochs = clock.wall[f"{model_name}/keras"]
        printer(
            f"  overhead {model_name}: keras epoch {steady_seconds(epochs):.2f}s "
            f"(first {epochs[0]:.2f}s)"
        )
        for n, run in by_clients.items():
            row = _overhead_row(config, clock, model_name, run, keras, built, len(labels))
            printer(
                f"  overhead {model_name} x{n}: round {row.details['steady_round_seconds']:.2f}s "
                f"(first {row.details['first_round_seconds']:.2f}s) ratio {row.ratio:.2f}"
            )
            rows.append(row)
    runtime.shutdown()
    return rows


def _overhead_row(
    config: BenchmarkConfig,
    clock: Clock,
    model_name: str,
    run: runs.Run,
    keras: runs.KerasEpochs,
    built: runs.BuiltProcess,
    num_examples: int,
) -> Row:
    """The overhead row of one model and client count, from the timings in `clock`."""
    n = len(run.fed.client_ids)
    rounds, epochs = clock.wall[f"{model_name}/{n}"], clock.wall[f"{model_name}/keras"]
    round_s, round_cpu = clock.steady(f"{model_name}/{n}")
    epoch, epoch_cpu = clock.steady(f"{model_name}/keras")
    steps = sum(-(-run.fed.num_examples(c) // config.batch_size) for c in run.fed.client_ids)
    overhead = ratio(round_s, epoch)
    return Row.ratio_at_most(
        1.15,
        suite="overhead",
        setting=f"{model_name}, {n} clients, {num_examples} ex",
        data="real",
        values=(
            f"round {round_s:.2f}s (first {rounds[0]:.1f}s) vs epoch {epoch:.2f}s; "
            f"cpu {round_cpu:.2f} vs {epoch_cpu:.2f}s; steps {steps} vs {keras.steps}"
        ),
        ratio=overhead,
        details={
            "model": model_name,
            "num_clients": n,
            "num_examples": num_examples,
            "batch_size": config.batch_size,
            "round_seconds": rounds,
            "epoch_seconds": epochs,
            "round_cpu_seconds": clock.cpu[f"{model_name}/{n}"],
            "epoch_cpu_seconds": clock.cpu[f"{model_name}/keras"],
            "steady_round_seconds": round_s,
            "steady_epoch_seconds": epoch,
            "cpu_ratio": ratio(round_cpu, epoch_cpu),
            "first_round_seconds": rounds[0],
            "process_build_seconds": built.build_seconds,
            "federated_steps_per_round": steps,
            "keras_steps_per_epoch": keras.steps,
        },
    )


def suite_memory(config: BenchmarkConfig, printer: Printer) -> list[Row]:
    """RSS (this process + TFF workers) at two rounds of one small-model run.

    The worker is replaced every `memory_restart_every` rounds, as in the
    runner (`runtime.restart_local_workers`); the row also gives the peak RSS
    seen after any round, and the worker's own growth per round between
    restarts. A second row builds the same round datasets for as many rounds
    without running anything (no TFF): the growth of this process there is
    what the input pipeline alone accounts for.
    """
    images, labels = runs.synthetic(config.memory_clients * config.examples_per_client, config.seed)
    fed = runs.federated_data(images, labels, config.memory_clients, config)
    trace = _memory_trace(config, fed, printer)
    datasets_only = _datasets_only_rss(config, fed, printer)
    return [_memory_row(config, trace), _datasets_only_row(config, datasets_only)]


@dataclasses.dataclass
class _MemoryTrace:
    """What the memory run saw: RSS at both rounds, peak RSS, restarts, round seconds."""

    samples: dict[int, dict[str, int]]
    peak: int
    restarts: list[int]
    seconds: list[float]


def _memory_trace(config: BenchmarkConfig, fed, printer: Printer) -> _MemoryTrace:
    """Runs the memory experiment, sampling RSS after every round."""
    early, late = config.memory_rounds
    runs.single_worker(config)
    clock = Clock()
    built = runs.build_fedavg_process(
        config.memory_model,
        fed.input_shape,
        runs.NUM_CLASSES_SYNTHETIC,
        fed.element_spec,
        config,
    )
    run = runs.Run(built, fed)
    samples, peak, restarts = {}, 0, []
    for round_num in range(1, late + 1):
        clock.measure("round", run.run_round)
        peak = max(peak, process_tree_rss()["total"])
        if round_num in (early, late):
            memory.release_free_memory()
            samples[round_num] = process_tree_rss()
            printer(
                f"  memory round {round_num}: {mib(samples[round_num]['total']):.0f} MiB "
                f"(workers {mib(samples[round_num]['workers']):.0f} MiB)"
            )
        if runtime.restart_workers_after(round_num, config.memory_restart_every, late):
            restarts.append(round_num)
    runtime.shutdown()
    return _MemoryTrace(samples, peak, restarts, clock.wall["round"])


def _datasets_only_rss(config: BenchmarkConfig, fed, printer: Printer) -> dict[int, int]:
    """RSS of this process at both rounds of building every client's round datasets, no TFF."""
    early, late = config.memory_rounds
    rss = {}
    for round_num in range(1, late + 1):
        for client in fed.client_ids:
            fed.round_dataset(client, late + round_num)
        if round_num in (early, late):
            memory.release_free_memory()
            rss[round_num] = process_tree_rss()["self"]
    printer(f"  memory, round datasets only: {mib(rss[early]):.0f} -> {mib(rss[late]):.0f} MiB")
    return rss


def _memory_row(config: BenchmarkConfig, trace: _MemoryTrace) -> Row:
    early, late = config.memory_rounds
    every = config.memory_restart_every
    samples, peak, restarts = trace.samples, trace.peak, trace.restarts
    first, last = samples[early]["total"], samples[late]["total"]
    growth = (last - first) / first
    self_kib = (samples[late]["self"] - samples[early]["self"]) / (late - early) / 1024
    # The worker at round `late` started after the last restart before it (or with the run).
    worker_start = max([r for r in restarts if r < late], default=0)
    workers_kib = (
        (samples[late]["workers"] - samples[early]["workers"]) / (late - early) / 1024
        if worker_start < early
        else None
    )
    restart_text = f"worker restarted every {every} rounds" if every else "no worker restarts"
    workers_text = (
        "n/a (restarted in between)" if workers_kib is None else f"{workers_kib:+.0f} KiB"
    )
    round_s = steady_seconds(trace.seconds)
    return Row.growth_below_5_percent(
        first,
        last,
        suite="memory",
        setting=f"{config.memory_model}, {config.memory_clients} clients, round {early} vs {late}",
        data="synthetic",
        values=(
            f"RSS {mib(first):.0f} -> {mib(last):.0f} MiB ({growth:+.1%}), peak "
            f"{mib(peak):.0f} MiB ({(peak - first) / first:+.1%}); per round: self "
            f"{self_kib:+.0f} KiB, workers {workers_text}; round {round_s:.2f}s; {restart_text}"
        ),
        details={
            "rounds": [early, late],
            "rss_bytes": {str(k): v for k, v in samples.items()},
            "peak_rss_bytes": peak,
            "growth": growth,
            "peak_growth": (peak - first) / first,
            "restart_every": every,
            "restarts_after_rounds": restarts,
            "worker_rounds_at_late": late - worker_start,
            "self_bytes_per_round": self_kib * 1024,
            "workers_bytes_per_round": None if workers_kib is None else workers_kib * 1024,
            "round_seconds": trace.seconds,
            "examples_per_client": config.examples_per_client,
        },
    )


def _datasets_only_row(config: BenchmarkConfig, rss: dict[int, int]) -> Row:
    early, late = config.memory_rounds
    first, last = rss[early], rss[late]
    growth = (last - first) / first
    per_round = (last - first) / (late - early)
    return Row.growth_below_5_percent(
        first,
        last,
        suite="memory",
        setting=(
            f"round datasets only (no TFF), {config.memory_clients} clients, "
            f"round {early} vs {late}"
        ),
        data="synthetic",
        values=(
            f"RSS self {mib(first):.0f} -> {mib(last):.0f} MiB "
            f"({growth:+.1%}); {per_round / 1024:+.0f} KiB/round"
        ),
        details={
            "rounds": [early, late],
            "rss_bytes": {str(early): first, str(late): last},
            "growth": growth,
            "bytes_per_round": per_round,
        },
    )


def suite_clients(config: BenchmarkConfig, printer: Printer) -> list[Row]:
    """Many registered clients, a few sampled, vs as many clients as are sampled.

    Both settings share one process and their rounds are interleaved.
    """
    per_client = config.examples_per_client
    dense_n, sparse_n = config.clients_sampled, config.clients_registered
    runs.single_worker(config)
    clock = Clock()
    feds, data_bytes = {}, {}
    for registered in (dense_n, sparse_n):
        images, labels = runs.synthetic(registered * per_client, config.seed)
        memory.release_free_memory()
        before = process_tree_rss()["total"]
        feds[registered] = runs.federated_data(images, labels, registered, config)
        memory.release_free_memory()
        data_bytes[registered] = process_tree_rss()["total"] - before
    first = feds[dense_n]
    built = runs.build_fedavg_process(
        config.memory_model,
        first.input_shape,
        runs.NUM_CLASSES_SYNTHETIC,
        first.element_spec,
        config,
    )
    by_registered = {
        n: runs.Run(built, feds[n], config.clients_sampled) for n in (dense_n, sparse_n)
    }
    for _ in range(config.clients_rounds):
        for n, run in by_registered.items():
            clock.measure(str(n), run.run_round)
    runtime.shutdown()
    dense, dense_cpu = clock.steady(str(dense_n))
    sparse, sparse_cpu = clock.steady(str(sparse_n))
    printer(f"  clients {sparse_n} registered: round {sparse:.2f}s vs {dense:.2f}s")
    extra = sparse_n - dense_n
    per_registered = (data_bytes[sparse_n] - data_bytes[dense_n]) / extra if extra else float("nan")
    row = Row.ratio_at_most(
        1.2,
        suite="clients",
        setting=(
            f"{sparse_n} clients, {dense_n}/round vs {dense_n} clients; {per_client} ex/client"
        ),
        data="synthetic",
        values=(
            f"round {sparse:.2f}s vs {dense:.2f}s; cpu {sparse_cpu:.2f} vs {dense_cpu:.2f}s; "
            f"{per_registered / 1024:.0f} KiB RSS/registered client"
        ),
        ratio=ratio(sparse, dense),
        details={
            "round_seconds": dict(clock.wall),
            "round_cpu_seconds": dict(clock.cpu),
            "data_rss_bytes": {str(k): v for k, v in data_bytes.items()},
            "rss_bytes_per_registered_client": per_registered,
            "raw_image_bytes_per_client": per_client * int(np.prod(runs.INPUT_SHAPE_SYNTHETIC)),
        },
    )
    return [row]


def suite_workers(config: BenchmarkConfig, printer: Printer) -> list[Row]:
    """One small experiment on 1 worker and on n workers: time and weight agreement.

    Two comparisons per worker count: one round from the same start state
    (the single-worker run's state before that round), which isolates what
    the mergeable execution changes (only the order in which client sums are
    added), and the free-running final weights, where training can amplify
    those last-bit differences over the rounds.
    """
    images, labels, num_classes = runs.real(config, config.workers_examples)
    fed = runs.federated_data(images, labels, config.workers_clients, config)
    built = runs.build_fedavg_process(
        config.workers_model, fed.input_shape, num_classes, fed.element_spec, config
    )
    run = runs.Run(built, fed)

    runs.single_worker(config)
    states = []
    base_seconds = _timed_rounds(config, run, "1", states).wall["1"]
    expected = [run.weights(s) for s in states[1:]]
    runtime.shutdown()
    printer(
        f"  workers 1: round {steady_seconds(base_seconds):.2f}s (first {base_seconds[0]:.2f}s)"
    )
    rows = []
    for count in config.workers_counts:
        runtime.start_local_multi_worker_context(
            count,
            max_concurrent_computation_calls=config.max_concurrent_computation_calls,
            env=config.worker_env(),
        )
        try:
            clock = _timed_rounds(config, run, str(count))
            final = run.weights()
            one_round = []
            for round_num in range(1, config.workers_rounds + 1):
                run.state, run.round_num = states[round_num - 1], round_num - 1
                run.run_round()
                one_round.append(measure.max_abs_difference(run.weights(), expected[round_num - 1]))
        finally:
            runtime.shutdown()
        details = {
            "workers": count,
            "round_seconds": clock.wall[str(count)],
            "round_cpu_seconds": clock.cpu[str(count)],
            "single_worker_round_seconds": base_seconds,
            "one_round_max_abs_weight_difference": one_round,
            "final_max_abs_weight_difference": measure.max_abs_difference(final, expected[-1]),
            "max_abs_weight": max(float(np.abs(w).max()) for w in expected[-1]),
            "num_examples": len(labels),
        }
        rows.append(_workers_row(config, details, printer))
    return rows


def _timed_rounds(
    config: BenchmarkConfig, run: runs.Run, key: str, states: list | None = None
) -> Clock:
    """`workers_rounds` rounds of `run` from its initial state, timed under `key`.

    Appends the initial state and the state after each round to `states` when given.
    """
    clock = Clock()
    run.reset()
    if states is not None:
        states.append(run.state)
    for _ in range(config.workers_rounds):
        clock.measure(key, run.run_round)
        if states is not None:
            states.append(run.state)
    return clock


def _workers_row(config: BenchmarkConfig, details: dict, printer: Printer) -> Row:
    """The row of one worker count, from the raw numbers in `details`."""
    count, seconds = details["workers"], details["round_seconds"]
    base_seconds = details["single_worker_round_seconds"]
    steady, base = steady_seconds(seconds), steady_seconds(base_seconds)
    delta_round = max(details["one_round_max_abs_weight_difference"])
    delta_final = details["final_max_abs_weight_difference"]
    printer(
        f"  workers {count}: round {steady:.2f}s, max|dw| one round {delta_round:.2g}, "
        f"final {delta_final:.2g}"
    )
    return Row(
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
        ratio=ratio(steady, base),
        target="one-round max|dw| <= 1e-6 (ratio: time n/1, info)",
        met=yes_no(delta_round <= 1e-6),
        details=details,
    )


SUITE_FNS: dict[str, Callable[[BenchmarkConfig, Printer], list[Row]]] = {
    "overhead": suite_overhead,
    "memory": suite_memory,
    "clients": suite_clients,
    "workers": suite_workers,
    "run_memory": suite_run_memory,
    "sweep": suite_sweep,
}
