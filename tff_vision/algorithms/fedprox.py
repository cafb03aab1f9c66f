"""FedProx (Li et al., 2020): FedAvg whose clients stay near the global model.

Client k minimizes its local loss plus a proximal term,

    h_k(w) = F_k(w) + mu/2 * ||w - w_g||^2,

where w_g are the global weights broadcast at the start of the round, so each
local step is `w <- w - lr * (grad F_k(w) + mu * (w - w_g))` (through the
client optimizer). The server then proceeds as in FedAvg: example-weighted
mean of the client deltas, applied with the server optimizer.

Why not `tff.learning.algorithms.build_weighted_fed_prox`: in TFF 0.87 its
client work adds `mu * (w_g - w)` to the gradient (`proximal_client_work.py`:
`lambda x, y: delta_l2_regularizer * (y - x)` over (current, initial)), the
gradient of -mu/2 * ||w - w_g||^2: it pushes clients *away* from the global
model. `tests/fedprox_test.py` checks that this is still so. The client work
here is written with TFF's public building blocks instead
(`tff.learning.templates.ClientWorkProcess` composed with TFF's broadcast,
aggregator and optimizer finalizer), with the paper's sign; it also takes a
per-round client learning-rate schedule (TFF has no scheduled FedProx), kept
as a round counter in the process state so that a resumed run stays exact.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _compose

OptimizerArg = (
    tff.learning.optimizers.Optimizer | Callable[[Any], tff.learning.optimizers.Optimizer]
)


def build_fedprox(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: OptimizerArg,
    proximal_strength: float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    client_learning_rate_fn: Callable[[Any], Any] | None = None,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.NUM_EXAMPLES,
) -> tff.learning.templates.LearningProcess:
    """Builds the FedProx learning process.

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_optimizer: The client optimizer; with `client_learning_rate_fn`,
            a callable `learning_rate -> Optimizer`.
        proximal_strength: mu >= 0 (0 gives FedAvg).
        server_optimizer: Applied to the averaged client delta; defaults to SGD
            with learning rate 1.0.
        model_aggregator: Weighted aggregation of the client deltas; defaults
            to TFF's weighted mean.
        client_learning_rate_fn: Optional `round_index -> learning rate`
            (0-based, as in `build_weighted_fed_avg_with_optimizer_schedule`).
        client_weighting: `NUM_EXAMPLES` (examples trained on, FedAvg's
            weighting) or `UNIFORM`.

    Returns:
        A `tff.learning.templates.LearningProcess`.
    """
    if not proximal_strength >= 0:
        raise ValueError(f"proximal_strength must be >= 0, got {proximal_strength}")
    return _compose.compose_process(
        model_fn,
        lambda: build_proximal_client_work(
            model_fn,
            client_optimizer,
            float(proximal_strength),
            client_learning_rate_fn=client_learning_rate_fn,
            client_weighting=client_weighting,
        ),
        model_aggregator,
        server_optimizer,
    )


def build_proximal_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: OptimizerArg,
    proximal_strength: float,
    client_learning_rate_fn: Callable[[Any], Any] | None = None,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.NUM_EXAMPLES,
) -> tff.learning.templates.ClientWorkProcess:
    """Client work of FedProx: local training on the proximal objective, model deltas out.

    The state is the 0-based round index (int32 at the server), which feeds
    `client_learning_rate_fn`. Each client returns `w_g - w` (TFF's sign
    convention: the delta is a pseudo-gradient) weighted per
    `client_weighting`; a client whose delta has a non-finite value sends
    zeros with weight 0. Measurements: `train` (the model's metrics summed
    over clients, then finalized; the loss is the data loss without the
    proximal term, as in TFF) and, with a schedule, `client_learning_rate`.
    """
    if client_learning_rate_fn is None and not isinstance(
        client_optimizer, tff.learning.optimizers.Optimizer
    ):
        raise TypeError("without client_learning_rate_fn, pass a tff.learning Optimizer")
    if client_learning_rate_fn is not None and isinstance(
        client_optimizer, tff.learning.optimizers.Optimizer
    ):
        raise TypeError("with client_learning_rate_fn, pass client_optimizer as lr -> Optimizer")
    mu = float(proximal_strength)

    traced = _client_loops.trace_model(model_fn)
    weights_type = traced.weights_type
    data_type = tff.SequenceType(traced.element_type)

    @tff.tensorflow.computation(weights_type, data_type, np.int32)
    def client_update(initial_weights, dataset, round_index):
        model = model_fn()
        if client_learning_rate_fn is None:
            optimizer = client_optimizer
        else:
            optimizer = client_optimizer(client_learning_rate_fn(round_index))
        return _train(model, optimizer, mu, client_weighting, initial_weights, dataset)

    @tff.tensorflow.computation(np.int32)
    def server_learning_rate(round_index):
        if client_learning_rate_fn is None:  # Reported for schedules only.
            return tf.constant(0.0, tf.float32)
        return tf.cast(client_learning_rate_fn(round_index), tf.float32)

    @tff.tensorflow.computation(np.int32)
    def add_one(round_index):
        return round_index + 1

    @tff.federated_computation
    def init_fn():
        return tff.federated_value(0, tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        round_at_clients = tff.federated_broadcast(state)
        client_result, model_outputs = tff.federated_map(
            client_update, (weights, client_data, round_at_clients)
        )
        measurements = collections.OrderedDict(train=traced.metrics_aggregation_fn(model_outputs))
        if client_learning_rate_fn is not None:
            measurements["client_learning_rate"] = tff.federated_map(server_learning_rate, state)
        measurements = tff.federated_zip(measurements)
        return tff.templates.MeasuredProcessOutput(
            tff.federated_map(add_one, state), client_result, measurements
        )

    return _client_loops.client_work_process(init_fn, next_fn)


def _train(model, optimizer, mu, client_weighting, initial_weights, dataset):
    """Local proximal training of `model` from `initial_weights` over `dataset`."""
    weights = tff.learning.models.ModelWeights.from_model(model)

    @tf.function
    def run():
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial_weights)
        trainable = tuple(weights.trainable)
        anchor = tuple(initial_weights.trainable)

        def proximal(gradients):
            # Gradient of mu/2 * ||w - w_g||^2 (Li et al., 2020, Algorithm 2).
            return [g + mu * (w - a) for g, w, a in zip(gradients, trainable, anchor)]

        num_examples, _ = _client_loops.train_locally(
            model, optimizer, dataset, gradient_correction=proximal if mu > 0 else None
        )
        delta = [tf.subtract(a, w) for a, w in zip(anchor, trainable)]
        delta, is_finite = _client_loops.zero_if_non_finite(delta)
        update = tf.nest.pack_sequence_as(initial_weights.trainable, delta)
        return (
            tff.learning.templates.ClientResult(
                update=update,
                update_weight=_client_loops.client_weight(
                    client_weighting, num_examples, is_finite
                ),
            ),
            model.report_local_unfinalized_metrics(),
        )

    return run()
