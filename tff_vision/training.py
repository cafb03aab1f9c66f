"""Training loops: federated rounds and plain-Keras baselines, both resumable.

`FederatedTrainer` drives a TFF `LearningProcess` round by round. After each
round it releases a metrics row (`tff.program.CSVFileReleaseManager`, which
rewrites the CSV atomically and drops rows of rounds being redone, plus a
`TensorBoardReleaseManager`) and then saves the whole process state with a
`tff.program.FileProgramStateManager`. A rerun loads the latest saved state
and carries on; since every random choice is derived from (seed, round,
client), the resumed run computes exactly what an uninterrupted one would.

`train_keras_baseline` trains one Keras model round by round on the same
per-round datasets a federated client would see (same preprocessing, same
number of passes), checkpointing model and optimizer with `tf.train`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import evaluation, runtime

EvalFn = Callable[[tf.keras.Model], evaluation.EvalResult]


def write_json_atomic(path: os.PathLike, value: Any) -> None:
    """Writes `value` as strict JSON (NaN -> null) to `path` via a temp file and rename."""
    path = pathlib.Path(path)
    value = _finite(value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2, allow_nan=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


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


def _run_coroutine(coroutine):
    """`asyncio.run`, also from code already inside an event loop (e.g. a Jupyter kernel).

    The `tff.program` managers are async; inside a running loop `asyncio.run`
    refuses, so the coroutine then runs on a fresh loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def format_seconds(seconds: float) -> str:
    """12 -> '12s', 125 -> '2m05s', 3725 -> '1h02m'."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """One terminal line per step: metrics, seconds per step and ETA.

    The ETA uses the mean duration of the steps run in this process, so a
    resumed run gives a sensible estimate from its first step.
    """

    def __init__(
        self, label: str, total: int, unit: str = "round", printer: Callable[[str], None] = print
    ):
        self.label, self.total, self.unit, self._print = label, total, unit, printer
        self._seconds: list[float] = []

    def update(self, step: int, seconds: float, metrics: dict[str, float]) -> str:
        self._seconds.append(seconds)
        mean = float(np.mean(self._seconds[1:] or self._seconds))  # first step includes tracing
        parts = [f"[{self.label}] {self.unit} {step}/{self.total}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and np.isfinite(v)]
        parts.append(f"{seconds:.1f} s/{self.unit}")
        parts.append(f"ETA {format_seconds(mean * (self.total - step))}")
        line = "  ".join(parts)
        self._print(line)
        return line


@dataclasses.dataclass
class FederatedOutcome:
    """What a federated run ended with."""

    state: Any
    final_eval: evaluation.EvalResult
    rounds: int
    resumed_from: int
    seconds: float


class FederatedTrainer:
    """Runs a TFF learning process for `rounds` rounds with checkpoints and metrics.

    Args:
        process: A `tff.learning.templates.LearningProcess`.
        data: A `client_data.FederatedData` providing per-round client datasets.
        rounds: Total number of rounds.
        eval_model: A Keras model with the process's architecture; the global
            weights are assigned to it for evaluation.
        evaluate: Function evaluating `eval_model` on the test set.
        output_dir: Directory for `metrics.csv`, `tb/` and `checkpoints/federated/`.
        initial_weights: `tff.learning.models.ModelWeights` to start from (the
            process's own initialization is replaced, so that baselines and
            the federated model start from identical weights).
        clients_per_round: Clients sampled per round (all when >= clients).
        eval_every: Evaluate every this many rounds (and always at the end).
        keep_checkpoints: How many round checkpoints to keep.
        printer: Where progress lines go.
        restart_workers_every: Replace the TFF workers this process started by
            fresh ones after every this many rounds
            (`runtime.restart_local_workers`; 0 = never): bounds the memory a
            long-running worker accumulates. Results do not change.
    """

    def __init__(
        self,
        process: tff.learning.templates.LearningProcess,
        data,
        rounds: int,
        eval_model: tf.keras.Model,
        evaluate: EvalFn,
        output_dir: os.PathLike,
        initial_weights: tff.learning.models.ModelWeights,
        clients_per_round: int = 0,
        eval_every: int = 1,
        keep_checkpoints: int = 2,
        printer: Callable[[str], None] = print,
        restart_workers_every: int = 0,
    ):
        self.process, self.data, self.rounds = process, data, rounds
        self.restart_workers_every = restart_workers_every
        self.eval_model, self.evaluate = eval_model, evaluate
        self.initial_weights = initial_weights
        self.clients_per_round = clients_per_round or len(data.client_ids)
        self.eval_every = max(1, eval_every)
        self.printer = printer
        output_dir = pathlib.Path(output_dir)
        self.checkpoint_dir = output_dir / "checkpoints" / "federated"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.state_manager = tff.program.FileProgramStateManager(
            self.checkpoint_dir, prefix="round_", keep_total=keep_checkpoints, keep_first=False
        )
        self.csv = tff.program.CSVFileReleaseManager(
            output_dir / "metrics.csv",
            save_mode=tff.program.CSVSaveMode.WRITE,
            key_fieldname="round",
        )
        self.tensorboard = tff.program.TensorBoardReleaseManager(output_dir / "tb" / "federated")

    def initial_state(self):
        state = self.process.initialize()
        return self.process.set_model_weights(state, self.initial_weights)

    def restore(self) -> tuple[Any, int]:
        """The latest saved state and its round, or the initial state and 0."""
        initial = self.initial_state()
        versions = _run_coroutine(self.state_manager.get_versions()) or []
        if not versions:
            return initial, 0
        latest = max(versions)
        return _run_coroutine(self.state_manager.load(latest, initial)), latest

    def evaluate_state(self, state) -> evaluation.EvalResult:
        self.process.get_model_weights(state).assign_weights_to(self.eval_model)
        return self.evaluate(self.eval_model)

    def run(self) -> FederatedOutcome:
        start = time.monotonic()
        state, done = self.restore()
        if done:
            self.printer(f"[federated] resuming after round {done} from {self.checkpoint_dir}")
        progress = Progress("federated", self.rounds, printer=self.printer)
        final_eval = None
        for round_num in range(done + 1, self.rounds + 1):
            runtime.raise_if_interrupted()
            t0 = time.monotonic()
            clients = self.data.sample_clients(round_num, self.clients_per_round)
            datasets = [self.data.round_dataset(c, round_num) for c in clients]
            output = self.process.next(state, datasets)
            state = output.state
            row = _train_row(output.metrics)
            row["round_seconds"] = time.monotonic() - t0
            if round_num % self.eval_every == 0 or round_num == self.rounds:
                final_eval = self.evaluate_state(state)
                row.update(final_eval.as_dict(prefix="eval_"))
            row["seconds"] = time.monotonic() - t0
            _run_coroutine(self._release(row, round_num))
            _run_coroutine(self.state_manager.save(state, round_num))
            progress.update(round_num, row["seconds"], _progress_metrics(row))
            if runtime.restart_workers_after(round_num, self.restart_workers_every, self.rounds):
                self.printer(f"[federated] fresh TFF worker(s) after round {round_num}")
        runtime.raise_if_interrupted()
        if final_eval is None:  # Nothing left to run: evaluate the restored final state.
            final_eval = self.evaluate_state(state)
        return FederatedOutcome(state, final_eval, self.rounds, done, time.monotonic() - start)

    async def _release(self, row: dict[str, float], round_num: int) -> None:
        await self.csv.release(row, key=round_num)
        await self.tensorboard.release(row, key=round_num)


def _train_row(metrics) -> dict[str, float]:
    train = metrics["client_work"]["train"]
    return {
        "train_loss": float(train["loss"]),
        "train_accuracy": float(train["accuracy"]),
        "train_examples": int(train["num_examples"]),
    }


def _progress_metrics(row: dict[str, float]) -> dict[str, float]:
    keys = {
        "train_loss": "loss",
        "train_accuracy": "acc",
        "eval_accuracy": "test_acc",
        "eval_auc": "test_auc",
    }
    return {short: row[k] for k, short in keys.items() if k in row}


def train_keras_baseline(
    name: str,
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    round_dataset: Callable[[int], tf.data.Dataset],
    rounds: int,
    checkpoint_dir: os.PathLike,
    learning_rate_fn: Optional[Callable[[int], Any]] = None,
    printer: Callable[[str], None] = print,
    train_epoch: Optional[Callable[[tf.data.Dataset], tuple[float, float, float]]] = None,
) -> int:
    """Trains `model` on `round_dataset(r)` for r = 1..rounds, resumably.

    Each call of `round_dataset(r)` yields the batches of "round" r (the
    caller builds them with the federated run's preprocessing, so a baseline
    makes as many passes over its data as a federated client). Model and
    optimizer are checkpointed after every round; a rerun continues from the
    last one. With `learning_rate_fn`, round r trains at rate
    `learning_rate_fn(r - 1)`, the schedule the federated clients follow.
    `train_epoch` (from `epoch_trainer(model, optimizer, ...)`) lets baselines
    that share `model` and `optimizer` share one traced step; by default one
    is built here.

    Returns:
        The round the run resumed after (0 for a fresh start).
    """
    from tff_vision.algorithms import keras_model  # pylint: disable=g-import-not-at-top

    optimizer.build(model.trainable_variables)
    if train_epoch is None:
        train_epoch = epoch_trainer(model, optimizer, keras_model.loss())
    done = tf.Variable(0, dtype=tf.int64, name="round")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, round=done)
    manager = tf.train.CheckpointManager(checkpoint, os.fspath(checkpoint_dir), max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        printer(f"[{name}] resuming after round {int(done.numpy())}")
    resumed = int(done.numpy())
    progress = Progress(name, rounds, printer=printer)
    for round_num in range(resumed + 1, rounds + 1):
        runtime.raise_if_interrupted()
        t0 = time.monotonic()
        if learning_rate_fn is not None:
            optimizer.learning_rate = float(learning_rate_fn(round_num - 1))
        loss_sum, correct, count = train_epoch(round_dataset(round_num))
        done.assign(round_num)
        manager.save(checkpoint_number=round_num)
        progress.update(
            round_num,
            time.monotonic() - t0,
            {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)},
        )
    return resumed


def reset_optimizer(optimizer: tf.keras.optimizers.Optimizer) -> None:
    """Zeroes a built Keras optimizer's step count and slots (a fresh start, same trace)."""
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))


def epoch_trainer(model: tf.keras.Model, optimizer, loss_fn: tf.keras.losses.Loss):
    """A function running one pass of `model` over a dataset of `(images, labels)` batches.

    Each batch takes one optimizer step on the batch-mean loss, as `keras.Model.fit` would
    (and as TFF clients do), through one traced step function reused for every batch and
    round: no per-call set-up as in `fit` and no retracing. (A whole pass traced as one
    `tf.function` loop over the dataset ran ~2x slower on CPU here.) Returns
    `(sum of example losses, correct predictions, examples)` as Python floats.
    """

    # Any batch size, so that the short last batch of each client's pass reuses the one trace.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
            tf.TensorSpec([None], tf.int64),
        ]
    )
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        n = tf.cast(tf.shape(labels)[0], tf.float64)
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        return tf.cast(loss, tf.float64) * n, tf.reduce_sum(tf.cast(hits, tf.float64)), n

    def train_epoch(dataset: tf.data.Dataset) -> tuple[float, float, float]:
        totals = np.zeros(3)
        for images, labels in dataset:
            totals += [float(v) for v in train_step(images, labels)]
        return tuple(totals)

    return train_epoch


def keras_optimizer(name: str, learning_rate: float, momentum: float = 0.0):
    """The Keras optimizer matching a `tff_vision.algorithms.build_optimizer` choice."""
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate)
    if name == "yogi":
        raise ValueError("Keras has no Yogi optimizer; use sgd, adam or adagrad for baselines")
    raise ValueError(f"Unknown optimizer {name!r}")


def client_round_datasets(data, client_id: str) -> Callable[[int], tf.data.Dataset]:
    """`round -> dataset` for a local-only baseline of `client_id`."""
    return lambda round_num: data.round_dataset(client_id, round_num)
