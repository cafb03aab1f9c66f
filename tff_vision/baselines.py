"""Keras baselines trained on the federated run's own data: local-only and pooled.

The experiment's baseline stage: `baseline_jobs` names each baseline of
--baselines with its data per round, `run_baselines` trains them one after
the other (or reads the result of one finished earlier), scores each round on
the validation split (`baselines/<name>.csv`, one row per round), reports the
round --select chooses and writes `baselines/<name>.json`.
`train_keras_baseline` trains one Keras model round by round on the same
per-round datasets a federated client would see (same preprocessing, same
number of passes, same learning-rate schedule), checkpointing model and
optimizer with `tf.train` after every round, so a killed run resumes exactly.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tff_vision import client_data, fileio, interrupts, outputs, selection
from tff_vision.algorithms import keras_model
from tff_vision.config import ExperimentConfig
from tff_vision.data import ImageDataset
from tff_vision.progress import Progress

RoundDatasets = Callable[[int], tf.data.Dataset]
AfterRound = Callable[[int, dict[str, float]], dict[str, float]]


def baseline_jobs(
    config: ExperimentConfig, dataset: ImageDataset, data: client_data.RoundData
) -> list[tuple[str, RoundDatasets]]:
    """`(name, round -> dataset)` of each baseline in --baselines, in training order.

    local_<client>: that client's own round datasets. centralized: all training
    data pooled, through the clients' preprocessing; with --local_steps, as many
    steps per round as all clients together.
    """
    jobs: list[tuple[str, RoundDatasets]] = []
    if "local" in config.baselines:
        for cid in data.client_ids:
            jobs.append((f"local_{cid}", client_round_datasets(data.plain(), cid)))
    if "centralized" in config.baselines:
        pooled = client_data.pooled_dataset(dataset.train.images, dataset.train.labels)
        total_steps = sum(data.steps.values()) if data.steps else 0
        round_datasets = functools.partial(
            _pooled_round, pooled, data.preprocessing, total_steps, config.batch_size
        )
        jobs.append(("centralized", round_datasets))
    return jobs


def _pooled_round(pooled, preprocessing, steps: int, batch_size: int, round_num: int):
    dataset = preprocessing.apply(pooled, round_num, "centralized")
    return client_data.limit_steps(dataset, steps, batch_size)


class _SharedModel:
    """One model and optimizer serving every baseline, reset to the same start before each.

    The traced training step is then built once, not once per baseline.
    """

    def __init__(self, config: ExperimentConfig, build_model: Callable[[], tf.keras.Model]):
        self.learning_rate = config.client_lr
        self.model = build_model()
        self.initial_weights = self.model.get_weights()
        self.optimizer = keras_optimizer(
            config.client_optimizer, config.client_lr, config.client_momentum
        )
        self.train_epoch = epoch_trainer(
            self.model, self.optimizer, keras_model.loss(config.label_smoothing)
        )

    def reset(self) -> _SharedModel:
        self.model.set_weights(self.initial_weights)
        reset_optimizer(self.optimizer)
        self.optimizer.learning_rate = self.learning_rate
        return self


def run_baselines(
    config: ExperimentConfig,
    jobs: list[tuple[str, RoundDatasets]],
    build_model: Callable[[], tf.keras.Model],
    held_out: selection.HeldOut,
    learning_rate_fn: Callable[[int], Any] | None,
    out: pathlib.Path,
    printer: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Trains each job for --rounds (resuming) and scores it; returns name -> summary entry.

    Every round is scored on the validation split and offered to the job's
    `selection.Selection` (--select), which keeps the round reported. A
    baseline whose `baselines/<name>.json` exists finished earlier and is not
    trained again.
    """
    baseline_dir = out / "baselines"
    baseline_dir.mkdir(exist_ok=True)
    results = {}
    shared = None
    for name, round_dataset in jobs:
        result_path = baseline_dir / f"{name}.json"
        previous = fileio.read_json(result_path)
        if previous is not None:
            results[name] = previous
            printer(f"[{name}] finished earlier: {outputs.format_result(previous)}")
            continue
        shared = shared.reset() if shared else _SharedModel(config, build_model)
        results[name], _ = train_and_select(
            name,
            shared.model,
            shared.optimizer,
            round_dataset,
            config.rounds,
            selection.Selection(
                config.select, held_out, out / "checkpoints" / "selected" / f"{name}.npz"
            ),
            checkpoint_dir=out / "checkpoints" / name,
            log=baseline_dir / f"{name}.csv",
            learning_rate_fn=learning_rate_fn,
            printer=printer,
            train_epoch=shared.train_epoch,
        )
        fileio.write_json_atomic(result_path, results[name])
        result = results[name]
        printer(f"[{name}] {outputs.selection_text(result)}: {outputs.format_result(result)}")
    return results


def train_and_select(
    name: str,
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    round_dataset: Callable[[int], tf.data.Dataset],
    rounds: int,
    chosen: selection.Selection,
    *,
    checkpoint_dir: pathlib.Path,
    log: pathlib.Path,
    learning_rate_fn: Callable[[int], Any] | None = None,
    printer: Callable[[str], None] = print,
    train_epoch: Callable[[tf.data.Dataset], tuple[float, float, float]] | None = None,
) -> tuple[dict[str, Any], int]:
    """Trains `model` for `rounds` (resumably), offering every round to `chosen`; reports it.

    The one recipe of every centralized-style arm (local-only, pooled, the
    MedMNIST v2 reproduction): `train_keras_baseline` with each round scored
    on val (`score_each_round`, logged to `log`), then `chosen.report` with
    the last round's test and val metrics.

    Returns:
        The report (`selection.Selection.report`'s summary entry) and the round
        the training resumed after (0 for a fresh start).
    """
    held_out = chosen.held_out
    resumed = train_keras_baseline(
        name,
        model,
        optimizer,
        round_dataset,
        rounds,
        checkpoint_dir,
        learning_rate_fn=learning_rate_fn,
        printer=printer,
        train_epoch=train_epoch,
        after_round=score_each_round(model, held_out, chosen, log),
    )
    report, _ = chosen.report(rounds, held_out.evaluate_test(model), held_out.evaluate_val(model))
    return report, resumed


def score_each_round(
    model: tf.keras.Model,
    held_out: selection.HeldOut,
    chosen: selection.Selection,
    log: pathlib.Path,
) -> AfterRound:
    """Scores `model` on val after each round, offers the round to `chosen` and logs it to `log`.

    `log` (CSV) gets one row per round: the round's training loss and
    accuracy and its val metrics; a resumed run rewrites the rounds it redoes.
    """
    rows = pd.read_csv(log, float_precision="round_trip").to_dict("records") if log.exists() else []

    def after_round(round_num: int, train: dict[str, float]) -> dict[str, float]:
        val = held_out.evaluate_val(model)
        chosen.offer(round_num, val, lambda: held_out.evaluate_test(model))
        rows[:] = [r for r in rows if r["round"] < round_num]
        rows.append({"round": round_num, **train, **val.as_dict(prefix="val_")})
        frame = pd.DataFrame(rows)
        fileio.write_with_atomic(log, lambda tmp: frame.to_csv(tmp, index=False))
        return {"val_auc": val.auc}

    return after_round


def train_keras_baseline(
    name: str,
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    round_dataset: Callable[[int], tf.data.Dataset],
    rounds: int,
    checkpoint_dir: os.PathLike,
    learning_rate_fn: Callable[[int], Any] | None = None,
    printer: Callable[[str], None] = print,
    train_epoch: Callable[[tf.data.Dataset], tuple[float, float, float]] | None = None,
    after_round: AfterRound | None = None,
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
    is built here. `after_round(r, {"train_loss": ..., "train_accuracy": ...})`
    runs after round r's training, before its checkpoint (so that a resumed
    run calls it for every round it did not checkpoint); the metrics it
    returns join the round's progress line.

    Returns:
        The round the run resumed after (0 for a fresh start).
    """
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
        interrupts.raise_if_interrupted()
        t0 = time.monotonic()
        if learning_rate_fn is not None:
            optimizer.learning_rate = float(learning_rate_fn(round_num - 1))
        loss_sum, correct, count = train_epoch(round_dataset(round_num))
        train = {"train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1)}
        shown = {"loss": train["train_loss"], "acc": train["train_accuracy"]}
        if after_round is not None:
            shown.update(after_round(round_num, train))
        done.assign(round_num)
        manager.save(checkpoint_number=round_num)
        progress.update(round_num, time.monotonic() - t0, shown)
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
