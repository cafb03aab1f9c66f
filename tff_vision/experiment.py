"""One federated experiment end to end: data, partition, federated training, baselines, outputs.

`ExperimentConfig` holds every setting (the runner's flags map onto it one to
one). `run_experiment` validates all input before it writes anything, then
fills the output directory:

    flags.json            the config (a rerun must match it to resume)
    partition.csv         client x class counts
    metrics.csv           one row per round; eval_* columns on eval rounds (with
                          --aggregator=dp, eval_epsilon: epsilon after that round)
    tb/                   TensorBoard logs
    checkpoints/          federated process state per round, baseline checkpoints
    baselines/*.json      final metrics of each finished baseline
    summary.json          final metrics of everything (written last); "algorithm" holds
                          the settings the algorithm ran with, "privacy" (--aggregator=dp)
                          the (epsilon, delta) guarantee
    curves.png, confusion_matrix.png

Every file is written atomically, so a killed run leaves no half-written
result, and a rerun with the same output directory resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tff_vision import data as data_lib
from tff_vision import partition as partition_lib
from tff_vision.config import (
    _DEFAULTS_BEFORE_CHANGE,
    ConfigError,
    ExperimentConfig,
)


def prepare_output_dir(config: ExperimentConfig) -> pathlib.Path:
    """Creates/checks the output dir; refuses one holding a run with other settings."""
    out = pathlib.Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write to --output_dir={out} ({e.strerror or e}); choose a writable directory"
        ) from None
    flags_path = out / "flags.json"
    if flags_path.exists():
        try:
            previous = json.loads(flags_path.read_text())
        except (OSError, ValueError):
            raise ConfigError(
                f"{flags_path} is unreadable; use a new --output_dir or delete that file"
            ) from None
        current = config.result_fields()
        # A run from before a setting existed ran with its default then.
        defaults = {**ExperimentConfig().result_fields(), **_DEFAULTS_BEFORE_CHANGE}
        previous = {**{k: v for k, v in defaults.items() if k not in previous}, **previous}
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            shown = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
            raise ConfigError(
                f"--output_dir={out} holds a run with other settings ({shown}); "
                "rerun with the same flags to resume, or use a new --output_dir"
            )
    return out


@dataclasses.dataclass
class Setup:
    """Everything validated and loaded, before anything is written."""

    config: ExperimentConfig
    dataset: data_lib.ImageDataset
    partition: partition_lib.Partition
    output_dir: pathlib.Path


def setup(config: ExperimentConfig, allow_download: bool = True) -> Setup:
    """Validates the config, loads the data and partitions it. Writes nothing.

    Raises:
        ConfigError, data.DataError, partition.PartitionError, models.ModelError.
    """
    from tff_vision import models  # pylint: disable=g-import-not-at-top

    config.validate()
    dataset = data_lib.load(
        config.dataset, config.size, data_dir=config.data_dir, allow_download=allow_download
    )
    partition = partition_lib.make_partition(
        config.partition,
        dataset.train.labels,
        num_clients=config.num_clients,
        num_classes=dataset.num_classes,
        seed=config.seed,
        exclude=config.exclude or None,
    )
    if config.clients_per_round > config.num_clients:
        raise ConfigError(
            f"--clients_per_round={config.clients_per_round} exceeds --num_clients="
            f"{config.num_clients}; use 0 for all clients"
        )
    # Building once validates the model against the data (shape, classes).
    models.build_model(
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        norm=config.norm,
        stem=config.stem,
        seed=config.seed,
        weight_standardization=config.weight_standardization,
    )
    return Setup(config, dataset, partition, prepare_output_dir(config))


def run_experiment(
    config: ExperimentConfig,
    printer: Callable[[str], None] = print,
    allow_download: bool = True,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment of `config`; returns the summary dict."""
    return run_setup(setup(config, allow_download=allow_download), printer)


def run_setup(s: Setup, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs an experiment whose input `setup` has validated."""
    # Heavy imports here so that bad input fails fast, before TF/TFF load.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from tff_vision import (  # pylint: disable=g-import-not-at-top
        aggregators,
        algorithms,
        baselines,
        client_data,
        devices,
        evaluation,
        fileio,
        interrupts,
        models,
        plots,
        privacy,
        runtime,
        training,
    )
    from tff_vision.algorithms import keras_model  # pylint: disable=g-import-not-at-top

    start = time.monotonic()
    config, dataset, partition, out = s.config, s.dataset, s.partition, s.output_dir
    device = devices.configure_devices(verbose=False)
    determinism = devices.set_op_determinism(config.op_determinism)
    precision = devices.set_mixed_precision(config.mixed_precision)

    fileio.write_json_atomic(out / "flags.json", config.result_fields())
    counts = partition.to_frame(dataset.train.labels, list(dataset.class_names))
    _write_csv_atomic(counts, out / "partition.csv")
    plots.plot_class_counts(counts, out / "partition.png", title=f"{config.partition} partition")
    printer(
        f"{dataset.name} {dataset.size}px ({dataset.source}): {len(dataset.train)} train / "
        f"{len(dataset.test)} test, {dataset.num_classes} classes; {config.model} "
        f"(norm={config.norm}); {device}, op determinism {'on' if determinism else 'off'}"
        + (f", {precision}" if config.mixed_precision else "")
    )
    printer(f"client x class counts ({config.partition}):\n{counts.to_string()}")

    preprocessing = client_data.Preprocessing(
        batch_size=config.batch_size,
        # With --local_steps, round datasets are one shuffled pass repeated and cut to length.
        local_epochs=1 if config.local_steps else config.local_epochs,
        augment=config.augment,
        seed=config.seed,
    )
    fed_data = RoundData(
        client_data.FederatedData(
            dataset.train.images, dataset.train.labels, partition, preprocessing
        ),
        client_steps(config.local_steps, config.step_heterogeneity, partition.sizes),
        config.batch_size,
        indexed=algorithms.ALGORITHM_INFO[config.algorithm].indexed_clients,
    )
    if fed_data.steps:
        printer(f"local steps per round: {fed_data.steps}")

    def build_keras() -> tf.keras.Model:
        return models.build_model(
            config.model,
            dataset.input_shape,
            dataset.num_classes,
            norm=config.norm,
            stem=config.stem,
            seed=config.seed,
            weight_standardization=config.weight_standardization,
        )

    def evaluate(model: tf.keras.Model) -> evaluation.EvalResult:
        return evaluation.evaluate(
            model,
            dataset.test.images,
            dataset.test.labels,
            dataset.num_classes,
            client_classes=partition.client_classes,
        )

    # --- federated ---
    schedule = algorithms.learning_rate_schedule(
        config.client_lr_schedule, config.client_lr, config.rounds
    )
    if schedule is None:
        client_optimizer = algorithms.build_optimizer(
            config.client_optimizer, config.client_lr, config.client_momentum
        )
    else:

        def client_optimizer(learning_rate):
            return algorithms.build_optimizer(
                config.client_optimizer, learning_rate, config.client_momentum
            )

    server = config.server_optimizer_spec()
    clients_per_round = min(config.clients_per_round or config.num_clients, config.num_clients)
    aggregator = aggregators.build_aggregator(
        config.aggregator,
        clients_per_round=clients_per_round,
        dp_noise_multiplier=config.dp_noise_multiplier,
        dp_clip=config.dp_clip,
        dp_target_quantile=config.dp_target_quantile,
        noise_seed=client_data.derive_seed(config.seed, "dp-noise"),
    )
    algorithm_summary = algorithm_settings(config, server, fed_data.steps)
    printer(
        "algorithm: " + ", ".join(f"{k}={v}" for k, v in algorithm_summary.items() if k != "steps")
    )
    accounting = None
    if config.aggregator == "dp":
        accounting = privacy.PrivacyAccounting(
            noise_multiplier=config.dp_noise_multiplier,
            sampling_rate=privacy.sampling_rate(config.clients_per_round, config.num_clients),
            delta=config.dp_delta or privacy.default_delta(len(dataset.train)),
            accountant=config.dp_accountant,
        )
        printer(
            f"DP: noise multiplier {accounting.noise_multiplier}, clip {config.dp_clip}, "
            f"sampling rate {accounting.sampling_rate:.4g}: epsilon after {config.rounds} "
            f"rounds {accounting.epsilon(config.rounds):.4g} at delta {accounting.delta:.3g} "
            f"({accounting.accountant})"
        )
        evaluate_federated = _with_epsilon(evaluate, accounting, fed_data, config.rounds)
    else:
        evaluate_federated = evaluate

    _start_execution_context(config, out, printer)
    try:
        process = algorithms.build_process(
            config.algorithm,
            keras_model.model_fn(build_keras, fed_data.element_spec, skip_random_init=True),
            client_optimizer=client_optimizer,
            server_optimizer=server,
            client_learning_rate_fn=schedule,
            model_aggregator=None if config.aggregator == "mean" else aggregator,
            proximal_strength=config.proximal_strength,
            client_learning_rate=config.client_lr,
            client_momentum=config.client_momentum,
            num_clients=config.num_clients,
        )
        if config.workers or config.local_workers:
            _check_mergeable(config.algorithm, process.next)
        eval_model = build_keras()
        trainer = training.FederatedTrainer(
            process,
            fed_data,
            rounds=config.rounds,
            eval_model=eval_model,
            evaluate=evaluate_federated,
            output_dir=out,
            initial_weights=keras_model.initial_weights(eval_model),
            clients_per_round=config.clients_per_round,
            eval_every=config.eval_every,
            printer=printer,
            restart_workers_every=config.restart_workers_every,
        )
        fed = trainer.run()
    finally:
        runtime.shutdown()

    summary: dict[str, Any] = {"federated": {**fed.final_eval.summary(), "rounds": fed.rounds}}
    summary["algorithm"] = algorithm_summary
    if accounting is not None:
        summary["privacy"] = accounting.report(fed.rounds)

    # --- baselines ---
    baseline_dir = out / "baselines"
    baseline_dir.mkdir(exist_ok=True)
    jobs: list[tuple[str, Callable[[int], Any], str | None]] = []
    if "local" in config.baselines:
        for cid in fed_data.client_ids:
            jobs.append(
                (f"local_{cid}", baselines.client_round_datasets(fed_data.plain(), cid), cid)
            )
    if "centralized" in config.baselines:
        pooled = client_data.pooled_dataset(dataset.train.images, dataset.train.labels)
        # With --local_steps, as many steps per round as all clients together.
        total_steps = sum(fed_data.steps.values()) if fed_data.steps else 0
        jobs.append(
            (
                "centralized",
                lambda r, pooled=pooled: limit_steps(
                    preprocessing.apply(pooled, r, "centralized"), total_steps, config.batch_size
                ),
                None,
            )
        )
    baseline_results = {}
    # One model and optimizer serve every baseline, reset to the same start before each: the
    # traced training step is then built once, not once per baseline.
    model = optimizer = initial_weights = train_epoch = None
    for name, round_dataset, _ in jobs:
        result_path = baseline_dir / f"{name}.json"
        if result_path.exists():
            baseline_results[name] = json.loads(result_path.read_text())
            printer(f"[{name}] finished earlier: {_fmt(baseline_results[name])}")
            continue
        if model is None:
            model = build_keras()
            initial_weights = model.get_weights()
            optimizer = baselines.keras_optimizer(
                config.client_optimizer, config.client_lr, config.client_momentum
            )
            train_epoch = baselines.epoch_trainer(model, optimizer, keras_model.loss())
        else:
            model.set_weights(initial_weights)
            baselines.reset_optimizer(optimizer)
            optimizer.learning_rate = config.client_lr
        baselines.train_keras_baseline(
            name,
            model,
            optimizer,
            round_dataset,
            config.rounds,
            out / "checkpoints" / name,
            learning_rate_fn=schedule,
            printer=printer,
            train_epoch=train_epoch,
        )
        result = evaluate(model).summary()
        fileio.write_json_atomic(result_path, result)
        baseline_results[name] = result
        printer(f"[{name}] final: {_fmt(result)}")
    if "local" in config.baselines:
        summary["local_only"] = {
            cid: baseline_results[f"local_{cid}"] for cid in fed_data.client_ids
        }
    if "centralized" in config.baselines:
        summary["centralized"] = baseline_results["centralized"]

    # --- outputs ---
    import pandas as pd  # pylint: disable=g-import-not-at-top

    metrics = pd.read_csv(out / "metrics.csv")
    lines = {
        ("centralized" if name == "centralized" else name.replace("_", " ")): {
            "accuracy": r["test_accuracy"],
            "loss": r.get("test_loss"),
        }
        for name, r in baseline_results.items()
    }
    plots.plot_curves(metrics, out / "curves.png", baselines=lines, title=_title(config))
    plots.plot_confusion_matrix(
        fed.final_eval.confusion,
        dataset.class_names,
        out / "confusion_matrix.png",
        title=f"{config.algorithm}, round {fed.rounds}",
    )
    summary["wall_seconds"] = time.monotonic() - start
    summary["resumed_from_round"] = fed.resumed_from
    summary["dataset"] = {
        "name": dataset.name,
        "size": dataset.size,
        "source": dataset.source,
        "class_names": list(dataset.class_names),
        "train_examples": len(dataset.train),
        "test_examples": len(dataset.test),
    }
    summary["partition"] = {
        "spec": partition.spec,
        "client_classes": {str(i): c for i, c in enumerate(partition.client_classes)},
        "client_examples": {str(i): int(n) for i, n in enumerate(partition.sizes)},
    }
    summary["confusion_matrix"] = fed.final_eval.confusion.tolist()
    summary["device"] = device
    interrupts.raise_if_interrupted()  # A swallowed Ctrl-C still leaves the run partial.
    fileio.write_json_atomic(out / "summary.json", summary)
    printer(_final_report(summary))
    return summary


def algorithm_settings(
    config: ExperimentConfig, server, steps: dict[str, int] | None
) -> dict[str, Any]:
    """summary.json's "algorithm" entry: what the federated run actually used."""
    out: dict[str, Any] = {"name": config.algorithm, "aggregator": config.aggregator}
    if config.algorithm == "fedprox":
        out["proximal_strength"] = config.proximal_strength
    out.update(server.as_dict())
    if config.aggregator == "dp":
        out.update(
            dp_noise_multiplier=config.dp_noise_multiplier,
            dp_clip=config.dp_clip,
        )
        if config.dp_clip == "adaptive":
            out["dp_target_quantile"] = config.dp_target_quantile
    if steps:
        out["local_steps"] = config.local_steps
        out["step_heterogeneity"] = config.step_heterogeneity
        out["steps"] = dict(steps)
    else:
        out["local_epochs"] = config.local_epochs
    return out


def client_steps(
    local_steps: int, heterogeneity: str, client_sizes: Sequence[int]
) -> dict[str, int] | None:
    """Batches each client trains on per round, or None to use --local_epochs.

    Args:
        local_steps: Steps per client ("none"), or the steps of a client with
            the mean number of examples ("proportional": client k takes
            max(1, round(local_steps * n_k / mean(n))), so the federation's
            total stays about num_clients * local_steps).
        heterogeneity: One of `STEP_HETEROGENEITY`.
        client_sizes: Examples per client, in client-id order.
    """
    if not local_steps:
        return None
    sizes = np.asarray(client_sizes, dtype=np.float64)
    if heterogeneity == "none":
        steps = np.full(len(sizes), local_steps)
    elif heterogeneity == "proportional":
        steps = np.maximum(1, np.round(local_steps * sizes / sizes.mean())).astype(int)
    else:
        raise ConfigError(f"unknown --step_heterogeneity {heterogeneity!r}")
    return {str(i): int(n) for i, n in enumerate(steps)}


def limit_steps(dataset, steps: int, batch_size: int):
    """`dataset` (batched) repeated and re-batched to exactly `steps` full batches; 0: as is."""
    if not steps:
        return dataset
    return dataset.repeat().rebatch(batch_size).take(steps)


class RoundData:
    """A `client_data.FederatedData` whose round datasets take exactly `steps[client]` batches.

    With `steps` None the datasets pass through unchanged. With `indexed`,
    `round_dataset` returns `(client_index, dataset)` pairs, the client data
    that processes with per-client state (SCAFFOLD, FedBN) take. It also
    remembers the round the trainer is in (`FederatedTrainer` calls
    `sample_clients(round, ...)` first in each round), which the per-round
    epsilon needs.
    """

    def __init__(self, data, steps: dict[str, int] | None, batch_size: int, indexed: bool = False):
        self._data = data
        self.steps = steps
        self.batch_size = batch_size
        self.indexed = indexed
        self.current_round: int | None = None

    def plain(self) -> RoundData:
        """The same data without client indices (for Keras baselines)."""
        return RoundData(self._data, self.steps, self.batch_size)

    def __getattr__(self, name):
        if name.startswith("__") or name == "_data":
            raise AttributeError(name)
        return getattr(self._data, name)

    def sample_clients(self, round_num: int, clients_per_round: int) -> list[str]:
        self.current_round = round_num
        return self._data.sample_clients(round_num, clients_per_round)

    def round_dataset(self, client_id: str, round_num: int):
        dataset = self._data.round_dataset(client_id, round_num)
        if self.steps:
            dataset = limit_steps(dataset, self.steps[client_id], self.batch_size)
        if self.indexed:
            return int(client_id), dataset
        return dataset


def _start_execution_context(
    config: ExperimentConfig, out: pathlib.Path, printer: Callable[[str], None]
) -> None:
    """TFF's execution context for the run: one local worker, or several (--workers...)."""
    from tff_vision import runtime  # pylint: disable=g-import-not-at-top

    if config.local_workers:
        workers = runtime.start_local_multi_worker_context(config.local_workers, log_dir=out)
        printer(f"TFF workers: {', '.join(w.target for w in workers)} (local, loopback)")
    elif config.workers:
        runtime.start_multi_worker_context(config.workers)
        printer(f"TFF workers: {', '.join(config.workers)} (remote, unauthenticated gRPC)")
    else:
        runtime.start_local_context(log_path=out / "worker.log")


def _check_mergeable(algorithm: str, computation) -> None:
    """Raises `ConfigError` if `computation` cannot be split over several workers."""
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    try:
        tff.backends.native.compile_to_mergeable_comp_form(computation)
    except ValueError as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--algorithm={algorithm} cannot be split over workers ({reason}); "
            "run it without --workers/--local_workers"
        ) from e


def _with_epsilon(evaluate, accounting, data: RoundData, rounds: int):
    """`evaluate` whose results carry epsilon after the current round (eval_epsilon column)."""
    from tff_vision import evaluation  # pylint: disable=g-import-not-at-top

    @dataclasses.dataclass(frozen=True)
    class PrivateEvalResult(evaluation.EvalResult):
        epsilon: float = float("nan")

        def as_dict(self, prefix: str = "") -> dict[str, float]:
            row = super().as_dict(prefix)
            row[f"{prefix}epsilon"] = float(self.epsilon)
            return row

    def wrapped(model):
        result = evaluate(model)
        # Restored final state (nothing left to run): the last round.
        round_num = data.current_round or rounds
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        return PrivateEvalResult(**fields, epsilon=accounting.epsilon(round_num))

    return wrapped


def _write_csv_atomic(frame, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp)
    os.replace(tmp, path)


def _fmt(result: dict[str, Any]) -> str:
    return f"test_acc {result['test_accuracy']:.4f}  test_auc {result['test_auc']:.4f}"


def _title(config: ExperimentConfig) -> str:
    return (
        f"{config.dataset} {config.size}px, {config.model}, {config.partition} "
        f"{config.exclude}, {config.num_clients} clients".replace("  ", " ")
    )


def _final_report(summary: dict[str, Any]) -> str:
    lines = [f"federated ({summary['federated']['rounds']} rounds): {_fmt(summary['federated'])}"]
    for cid, r in summary.get("local_only", {}).items():
        lines.append(f"local-only client {cid}: {_fmt(r)}")
    if "centralized" in summary:
        lines.append(f"centralized: {_fmt(summary['centralized'])}")
    if "privacy" in summary:
        p = summary["privacy"]
        lines.append(
            f"privacy: epsilon {p['epsilon']:.4g} at delta {p['delta']:.3g} after "
            f"{p['rounds']} rounds (noise multiplier {p['noise_multiplier']}, "
            f"sampling rate {p['sampling_rate']:.4g}, {p['accountant']})"
        )
    lines.append(f"wall time {summary['wall_seconds']:.0f} s")
    return "\n".join(lines)
