"""Fine-tuning evaluation (--personalize_epochs=k): each client adapts the federated model.

The simplest personalization, and the baseline every personalized-FL paper
compares against: after federated training, each client takes the model it
would receive (the final round's global model; under FedBN and other
algorithms with a model per client, its own), trains it for k passes over its
own training data, and deploys the result. Each fine-tuned model is scored on
the whole test split and on the test examples of its client's classes
(`evaluation.ClientModelsResult`: the mean over clients, and each client).

The passes use the client's round datasets of rounds `rounds + 1 ..
rounds + k` (the run's preprocessing and seed), the client optimizer at the
constant base rate --client_lr, from fresh optimizer state: deterministic, so
a run killed while fine-tuning redoes it with the same result. k = 0 scores
the starting models unchanged. The result is kept in `personalized.json`; a
rerun after it finished reads it back.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tff_vision import baselines, evaluation, fileio, interrupts, selection
from tff_vision.algorithms import keras_model
from tff_vision.config import ExperimentConfig

Printer = Callable[[str], None]
RESULT_FILE = "personalized.json"


def fine_tune_and_score(
    start_weights: Sequence[Any],
    client_datasets: Sequence[Callable[[int], tf.data.Dataset]],
    *,
    epochs: int,
    build_model: Callable[[], tf.keras.Model],
    build_optimizer: Callable[[], tf.keras.optimizers.Optimizer],
    held_out: selection.HeldOut,
    first_round: int,
    description: str = "",
    label_smoothing: float = 0.0,
    printer: Printer = print,
) -> evaluation.ClientModelsResult:
    """Fine-tunes client k's model `start_weights[k]` on its data; scores every one.

    Args:
        start_weights: One `tff.learning.models.ModelWeights` per client.
        client_datasets: Client k's `round -> dataset`; pass e uses round `first_round + e`.
        epochs: Passes over each client's data (0: score the starting models).
        build_model, build_optimizer: A fresh Keras model and optimizer.
        held_out: The test split (and client classes) the models are scored on.
        first_round: Round number of the first pass, minus one.
        description: What the models are, for summary.json.
        label_smoothing: Of the training loss (`keras_model.loss`), as in the run.
    """
    if len(start_weights) != len(client_datasets):
        raise ValueError(f"{len(start_weights)} models for {len(client_datasets)} clients")
    model, optimizer = build_model(), build_optimizer()
    optimizer.build(model.trainable_variables)
    train_epoch = baselines.epoch_trainer(model, optimizer, keras_model.loss(label_smoothing))
    results = []
    for client, (weights, round_dataset) in enumerate(zip(start_weights, client_datasets)):
        weights.assign_weights_to(model)
        baselines.reset_optimizer(optimizer)
        for epoch in range(1, epochs + 1):
            interrupts.raise_if_interrupted()
            train_epoch(round_dataset(first_round + epoch))
        results.append(held_out.evaluate_test(model))
        own = results[-1].per_client_subset_accuracy.get(str(client), float("nan"))
        printer(f"[personalize] client {client}: {epochs} epoch(s), own classes acc {own:.4f}")
    return evaluation.client_models_result(results, description)


def run(
    config: ExperimentConfig,
    start_weights: Sequence[Any],
    data,
    build_model: Callable[[], tf.keras.Model],
    held_out: selection.HeldOut,
    out: pathlib.Path,
    printer: Printer = print,
) -> dict[str, Any]:
    """The experiment's fine-tuning stage: summary.json's "personalized" entry (kept in a file)."""
    path = out / RESULT_FILE
    previous = fileio.read_json(path)
    if previous is not None:
        printer(f"[personalize] finished earlier ({path})")
        return previous
    plain = data.plain()
    result = fine_tune_and_score(
        start_weights,
        [baselines.client_round_datasets(plain, cid) for cid in plain.client_ids],
        epochs=config.personalize_epochs,
        build_model=build_model,
        build_optimizer=lambda: baselines.keras_optimizer(
            config.client_optimizer, config.client_lr, config.client_momentum
        ),
        held_out=held_out,
        first_round=config.rounds,
        description=(
            f"the final round's model of each client, fine-tuned for {config.personalize_epochs} "
            "epoch(s) on that client's training data"
        ),
        label_smoothing=config.label_smoothing,
        printer=printer,
    )
    entry = {
        **result.summary(),
        "ci95": held_out.intervals(result.logits),
        "epochs": config.personalize_epochs,
        "base_round": config.rounds,
    }
    fileio.write_json_atomic(path, entry)
    return entry
