"""The experiment's federated stage: the parts of the algorithm's process, then its run.

`build_parts` turns a validated config into what the TFF process is built
from (client data per round, client and server optimizers, the aggregator,
the privacy accountant) and prints what was chosen; `run_federated` starts
TFF's execution context, builds the process (or reuses an equal build, where
a caller turned `process_cache` on) and runs the resumable
`training.FederatedTrainer`, shutting TFF's workers down however it ends.
Results depend on the order of the TF calls here (seeded model builds,
traced functions): it is the order the experiment has always used.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import (
    aggregators,
    algorithms,
    client_data,
    communication,
    devices,
    evaluation,
    fresh_process,
    memory,
    privacy,
    process_cache,
    runtime,
    selection,
    training,
)
from tff_vision.algorithms import keras_model
from tff_vision.availability import Availability
from tff_vision.config import ConfigError, ExperimentConfig
from tff_vision.data import ImageDataset
from tff_vision.partition import Partition

Printer = Callable[[str], None]
EvalFn = Callable[[tf.keras.Model], evaluation.EvalResult]


@dataclasses.dataclass(frozen=True)
class FederatedParts:
    """What the federated process is built from, and what it reports about itself.

    Attributes:
        data: The clients' per-round datasets.
        schedule: Client learning rate per round index, or None for a constant one.
        client_optimizer: A TFF optimizer, or `learning_rate -> optimizer` with a schedule.
        server: The server optimizer (`algorithms.ServerOptimizerSpec`).
        aggregator: The model update aggregator (`aggregators.Aggregator`).
        accounting: The privacy accountant of --aggregator=dp, else None.
        settings: summary.json's "algorithm" entry (`algorithm_settings`).
    """

    data: client_data.RoundData
    schedule: Callable[[int], Any] | None
    client_optimizer: Any
    server: algorithms.ServerOptimizerSpec
    aggregator: aggregators.Aggregator
    accounting: privacy.PrivacyAccounting | None
    settings: dict[str, Any]


def round_data(
    config: ExperimentConfig, dataset: ImageDataset, partition: Partition
) -> client_data.RoundData:
    """The clients' training data, one dataset per client and round."""
    preprocessing = client_data.Preprocessing(
        batch_size=config.batch_size,
        # With --local_steps, round datasets are one shuffled pass repeated and cut to length.
        local_epochs=1 if config.local_steps else config.local_epochs,
        augment=config.augment,
        seed=config.seed,
    )
    return client_data.RoundData(
        client_data.FederatedData(
            dataset.train.images, dataset.train.labels, partition, preprocessing
        ),
        client_data.client_steps(config.local_steps, config.step_heterogeneity, partition.sizes),
        config.batch_size,
        indexed=algorithms.ALGORITHM_INFO[config.algorithm].indexed_clients,
    )


def build_parts(
    config: ExperimentConfig, dataset: ImageDataset, partition: Partition, printer: Printer
) -> FederatedParts:
    """Everything the process is built from; prints the steps, algorithm and DP settings."""
    data = round_data(config, dataset, partition)
    if data.steps:
        printer(f"local steps per round: {data.steps}")
    inputs = _ProcessInputs.of(config)
    settings = algorithm_settings(config, inputs.server, data.steps)
    printer("algorithm: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "steps"))
    accounting = _accounting(config, printer)
    return FederatedParts(
        data,
        inputs.schedule,
        inputs.client_optimizer,
        inputs.server,
        inputs.aggregator,
        accounting,
        settings,
    )


@dataclasses.dataclass(frozen=True)
class _ProcessInputs:
    """The optimizers, schedule and aggregator of `config`'s process: a function of it alone."""

    schedule: Callable[[int], Any] | None
    client_optimizer: Any
    server: algorithms.ServerOptimizerSpec
    aggregator: aggregators.Aggregator

    @classmethod
    def of(cls, config: ExperimentConfig) -> _ProcessInputs:
        schedule = algorithms.learning_rate_schedule(
            config.client_lr_schedule, config.client_lr, config.rounds
        )
        clients_per_round = min(config.clients_per_round or config.num_clients, config.num_clients)
        aggregator = aggregators.build_aggregator(
            config.aggregator,
            clients_per_round=clients_per_round,
            dp_noise_multiplier=config.dp_noise_multiplier,
            dp_clip=config.dp_clip,
            dp_target_quantile=config.dp_target_quantile,
            noise_seed=client_data.derive_seed(config.seed, "dp-noise"),
        )
        return cls(
            schedule,
            _client_optimizer(config, schedule),
            config.server_optimizer_spec(),
            aggregator,
        )


def _client_optimizer(config: ExperimentConfig, schedule) -> Any:
    """The clients' optimizer; with a schedule, a function of the round's learning rate."""
    if schedule is None:
        return algorithms.build_optimizer(
            config.client_optimizer, config.client_lr, config.client_momentum
        )

    def client_optimizer(learning_rate):
        return algorithms.build_optimizer(
            config.client_optimizer, learning_rate, config.client_momentum
        )

    return client_optimizer


def _accounting(config: ExperimentConfig, printer: Printer) -> privacy.PrivacyAccounting | None:
    """The privacy accountant of --aggregator=dp (None otherwise); prints the planned epsilon."""
    if config.aggregator != "dp":
        return None
    accounting = privacy.PrivacyAccounting(
        noise_multiplier=config.dp_noise_multiplier,
        num_clients=config.num_clients,
        clients_per_round=config.clients_per_round,
        delta=config.dp_delta or None,  # None: the client-level default.
        accountant=config.dp_accountant,
    )
    printer(accounting.describe(config.rounds, config.dp_clip))
    return accounting


def algorithm_settings(
    config: ExperimentConfig, server: algorithms.ServerOptimizerSpec, steps: dict[str, int] | None
) -> dict[str, Any]:
    """summary.json's "algorithm" entry: what the federated run actually used."""
    out: dict[str, Any] = {"name": config.algorithm, "aggregator": config.aggregator}
    if config.algorithm == "fedprox":
        out["proximal_strength"] = config.proximal_strength
    if config.algorithm == "ditto":
        out["ditto_lambda"] = config.ditto_lambda
    if config.algorithm == "fedrep":
        out["fedrep_head_epochs"] = config.fedrep_head_epochs
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


def run_federated(
    config: ExperimentConfig,
    parts: FederatedParts,
    build_model: Callable[[], tf.keras.Model],
    held_out: selection.HeldOut,
    out: pathlib.Path,
    printer: Printer,
    *,
    lean_memory: bool = False,
) -> training.FederatedOutcome:
    """Builds the process and trains it for --rounds (resuming), on the configured workers.

    `build_model` returns the experiment's freshly initialized Keras model
    (picklable, for a lean build); each evaluation scores it on `held_out`'s
    test and val splits (with DP, the test evaluation also records epsilon
    after its round) and the round reported is chosen by --select. With
    `lean_memory`, the process is built in a fresh process and the workers are
    lean (`tff_vision.memory`).
    """
    evaluate: EvalFn = held_out.evaluate_test
    if parts.accounting is not None:
        evaluate = with_epsilon(evaluate, parts.accounting, parts.data, config.rounds)
    # Built before the workers start, so that a fresh process forks before gRPC has threads.
    process, client_bytes = _get_process(config, parts, build_model, lean_memory, printer)
    _start_execution_context(config, out, printer, lean_memory)
    try:
        with memory.large_blocks_returned(lean_memory):
            eval_model = build_model()
            trainer = training.FederatedTrainer(
                process,
                parts.data,
                rounds=config.rounds,
                eval_model=eval_model,
                evaluate=evaluate,
                output_dir=out,
                initial_weights=keras_model.initial_weights(eval_model),
                clients_per_round=config.clients_per_round,
                eval_every=config.eval_every,
                printer=printer,
                restart_workers_every=config.restart_workers_every,
                selection=selection.Selection(
                    config.select, held_out, out / "checkpoints" / "selected" / "federated.npz"
                ),
                client_bytes=client_bytes,
                ema_decay=config.ema_decay,
                availability=Availability(
                    config.client_dropout,
                    config.partial_work,
                    client_data.derive_seed(config.seed, "availability"),
                ),
            )
            outcome = trainer.run()
            if config.personalize_epochs:  # While TFF's context still runs.
                outcome.client_weights = trainer.client_weights(outcome.state)
            return outcome
    finally:
        runtime.shutdown()


def _get_process(
    config: ExperimentConfig,
    parts: FederatedParts,
    build_model: Callable[[], tf.keras.Model],
    lean_memory: bool,
    printer: Printer,
) -> tuple[Any, communication.RoundBytes]:
    """The run's process from `process_cache`, built here or (lean memory) in a fresh process."""
    spec = parts.data.element_spec
    build = functools.partial(build_process, config, spec, build_model)
    if lean_memory:
        workers = (
            "remote workers keep their own settings"
            if config.workers
            else f"a worker trains {config.worker_concurrency or 1} client(s) at a time"
        )
        printer(
            f"lean memory: the process is built in a fresh one, {workers} "
            "(--lean_memory=off: faster)"
        )
        build = functools.partial(
            fresh_process.call, functools.partial(_build_fresh, config, spec, build_model)
        )
    return process_cache.get_or_build(process_key(config, spec), build)


# Settings that reach the federated process only through its data, its initial weights
# (`training.RoundStep` sets them from the run's own model; the model inside the process is
# built with `skip_random_init`, so --seed draws nothing there) or its outputs: processes
# built for settings that differ only in these are the same computations (their serialized
# protos were compared byte for byte across seeds and partitions).
_NOT_IN_PROCESS = frozenset({"seed", "partition", "exclude", "output_dir"})


def process_key(config: ExperimentConfig, element_spec) -> tuple:
    """What the process of `config` is built from, for `process_cache`.

    Every setting but `_NOT_IN_PROCESS`, the client data's element spec and
    the DP noise seed (derived from --seed, and part of the aggregator's state).
    """
    settings = tuple(
        (field.name, getattr(config, field.name))
        for field in dataclasses.fields(config)
        if field.name not in _NOT_IN_PROCESS
    )
    noise_seed = (
        client_data.derive_seed(config.seed, "dp-noise") if config.aggregator == "dp" else None
    )
    return settings, repr(element_spec), noise_seed


def build_process(
    config: ExperimentConfig, element_spec, build_model: Callable[[], tf.keras.Model]
) -> tuple[Any, communication.RoundBytes]:
    """The algorithm's learning process and what a client moves per round in it."""
    inputs = _ProcessInputs.of(config)
    process = algorithms.build_process(
        config.algorithm,
        keras_model.model_fn(
            build_model,
            element_spec,
            skip_random_init=True,
            label_smoothing=config.label_smoothing,
        ),
        client_optimizer=inputs.client_optimizer,
        server_optimizer=inputs.server,
        client_learning_rate_fn=inputs.schedule,
        model_aggregator=None if config.aggregator == "mean" else inputs.aggregator,
        proximal_strength=config.proximal_strength,
        client_learning_rate=config.client_lr,
        client_momentum=config.client_momentum,
        num_clients=config.num_clients,
        ditto_lambda=config.ditto_lambda,
        fedrep_head_epochs=config.fedrep_head_epochs,
    )
    if config.workers or config.local_workers:
        _check_mergeable(config.algorithm, process.next)
    return process, communication.client_bytes(process)


def _build_fresh(
    config: ExperimentConfig, element_spec, build_model: Callable[[], tf.keras.Model]
) -> tuple[Any, communication.RoundBytes]:
    """`build_process` in a fresh process, with TensorFlow set as `experiment` sets it for a run."""
    devices.configure(config.op_determinism, config.mixed_precision)
    return build_process(config, element_spec, build_model)


def _start_execution_context(
    config: ExperimentConfig, out: pathlib.Path, printer: Printer, lean_memory: bool
) -> None:
    """TFF's execution context for the run: one local worker, or several (--workers...)."""
    # The worker's flag: nonpositive = no limit.
    concurrency = config.worker_concurrency or (1 if lean_memory else -1)
    env = memory.worker_env() if lean_memory else None
    if config.local_workers:
        workers = runtime.start_local_multi_worker_context(
            config.local_workers,
            max_concurrent_computation_calls=concurrency,
            log_dir=out,
            env=env,
        )
        printer(f"TFF workers: {', '.join(w.target for w in workers)} (local, private network)")
    elif config.workers:
        runtime.start_multi_worker_context(config.workers)
        printer(f"TFF workers: {', '.join(config.workers)} (remote, unauthenticated gRPC)")
    else:
        runtime.start_local_context(
            max_concurrent_computation_calls=concurrency, log_path=out / "worker.log", env=env
        )


def _check_mergeable(algorithm: str, computation) -> None:
    """Raises `ConfigError` if `computation` cannot be split over several workers."""
    try:
        tff.backends.native.compile_to_mergeable_comp_form(computation)
    except ValueError as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--algorithm={algorithm} cannot be split over workers ({reason}); "
            "run it without --workers/--local_workers"
        ) from e


@dataclasses.dataclass(frozen=True)
class PrivateEvalResult(evaluation.EvalResult):
    """An evaluation under DP: also epsilon after its round (the eval_epsilon column)."""

    epsilon: float = float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        row = super().as_dict(prefix)
        row[f"{prefix}epsilon"] = float(self.epsilon)
        return row


def with_epsilon(
    evaluate: EvalFn,
    accounting: privacy.PrivacyAccounting,
    data: client_data.RoundData,
    rounds: int,
) -> Callable[[tf.keras.Model], PrivateEvalResult]:
    """`evaluate` whose results carry epsilon after the round `data` is in."""

    def evaluate_private(model: tf.keras.Model) -> PrivateEvalResult:
        result = evaluate(model)
        # Restored final state (nothing left to run): the last round.
        round_num = data.current_round or rounds
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        return PrivateEvalResult(**fields, epsilon=accounting.epsilon(round_num))

    return evaluate_private
