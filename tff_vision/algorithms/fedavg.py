"""Federated averaging (McMahan et al., 2017) over a Keras model.

A thin, typed entry to `tff.learning.algorithms.build_weighted_fed_avg`: the
clients run `client_optimizer` over their local data starting from the
broadcast global weights; the server averages the model deltas weighted by
the number of examples each client trained on and applies the average as a
pseudo-gradient with `server_optimizer` (SGD with learning rate 1.0 recovers
plain FedAvg: new weights = example-weighted mean of the client weights).

TFF's builder averages only the trainable weights; for a BatchNorm model,
whose global moving statistics would stay at their initial values, each
round ends by recomputing them over the round's clients (`_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow_federated as tff

from tff_vision.algorithms import _batchnorm, keras_model, optimizers

# The clients' training loop: an iterator loop inside the client computation, not
# `Dataset.reduce`, whose body (the whole training step) TF instantiates and optimizes anew
# for every client of every round; the iterator loop is built once per worker session. Same
# batches, same updates. (TFF's default DATASET_REDUCE is what TPUs need; its docs name
# DATASET_ITERATOR for GPUs.)
LOOP_IMPLEMENTATION = tff.learning.LoopImplementation.DATASET_ITERATOR


def build_fedavg(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer
    | Callable[[Any], tff.learning.optimizers.Optimizer],
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    client_learning_rate_fn: Callable[[Any], Any] | None = None,
) -> tff.learning.templates.LearningProcess:
    """Builds the FedAvg learning process.

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_optimizer: Optimizer each client uses for local training; with
            `client_learning_rate_fn`, a callable `learning_rate -> Optimizer`.
        server_optimizer: Optimizer applied to the averaged client delta;
            defaults to SGD with learning rate 1.0.
        model_aggregator: Weighted aggregation of client deltas; defaults to
            TFF's weighted mean.
        client_learning_rate_fn: Optional `round_index -> learning rate`
            (0-based); the process is then built with TFF's
            `build_weighted_fed_avg_with_optimizer_schedule`, which keeps the
            round counter in the process state (so resume stays exact).

    Returns:
        A `tff.learning.templates.LearningProcess` whose `next` runs one round.
    """
    if server_optimizer is None:
        server_optimizer = optimizers.build_optimizer("sgd", 1.0)
    if client_learning_rate_fn is None:
        process = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn,
            client_optimizer_fn=client_optimizer,
            server_optimizer_fn=server_optimizer,
            client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
            model_aggregator=model_aggregator,
            loop_implementation=LOOP_IMPLEMENTATION,
        )
    else:
        if isinstance(client_optimizer, tff.learning.optimizers.Optimizer):
            raise TypeError(
                "with client_learning_rate_fn, pass client_optimizer as lr -> Optimizer"
            )
        process = tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
            model_fn,
            client_learning_rate_fn=client_learning_rate_fn,
            client_optimizer_fn=client_optimizer,
            server_optimizer_fn=server_optimizer,
            model_aggregator=model_aggregator,
            loop_implementation=LOOP_IMPLEMENTATION,
        )
    process = _batchnorm.with_recomputed_statistics(process, model_fn)
    keras_model.restore_eager_keras_classes()
    return process
