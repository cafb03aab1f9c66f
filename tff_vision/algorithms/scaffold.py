"""SCAFFOLD (Karimireddy et al., 2020, https://arxiv.org/abs/1910.06378) as a TFF process.

Algorithm 1 with control variate option II. With global weights `x`, server
control variate `c`, client `i`'s control variate `c_i`, `N` clients of which
the set `S` takes part, client learning rate `eta_l`, server learning rate `eta_g`:

    every client i in S, from y = x, for each of its K_i batches (plain SGD):
        y <- y - eta_l * (g_i(y) - c_i + c)
    then  c_i+ = c_i - c + (x - y) / (K_i * eta_l),  dy_i = y - x,  c_i <- c_i+
    server:  x <- x + eta_g * mean_{i in S} dy_i
             c <- c + sum_{i in S} (c_i+ - c_i) / N

`c = c_i = 0` initially, so a client's first round is plain local SGD. The
process is `_compose.compose_process` with `build_scaffold_client_work`; the
server optimizer applies `mean (x - y)` as a pseudo-gradient (default SGD at
`eta_g = 1.0`). TFF has no per-client state, so the `c_i` are a table in the
server state (`_client_state`): saving the state resumes exactly, at the
price of `num_clients + 1` copies of the trainable weights. `next` takes all
clients' datasets in index order, or `(client_index, dataset)` pairs; absent
clients keep their `c_i`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _client_state, _compose

CONTROL_VARIATE = "control_variate"
CLIENT_CONTROL_VARIATES = "client_control_variates"


def _build_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    learning_rate: float,
    client_weighting: tff.learning.ClientWeighting,
):
    """The `tf.function` of one client's SCAFFOLD round (traced inside a computation)."""
    model = model_fn()
    optimizer = tff.learning.optimizers.build_sgdm(learning_rate)

    @tf.function
    def client_update(initial_weights, dataset, control_variate, client_control_variate):
        weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial_weights)
        # g - c_i + c, written g + (c - c_i).
        correction = [c - c_i for c, c_i in zip(control_variate, client_control_variate)]
        num_examples, num_steps = _client_loops.train_locally(
            model,
            optimizer,
            dataset,
            gradient_correction=lambda grads: [g + d for g, d in zip(grads, correction)],
        )
        # TFF convention: the update is x - y (the server applies it as a gradient).
        model_update = [x - y for x, y in zip(initial_weights.trainable, weights.trainable)]
        model_update, is_finite = _client_loops.zero_if_non_finite(model_update)
        steps_times_lr = tf.cast(num_steps, tf.float32) * learning_rate
        trained = tf.logical_and(is_finite, num_steps > 0)
        # Option II: c_i+ = c_i - c + (x - y) / (K eta_l); unchanged without a (finite) step.
        new_client_control_variate = [
            tf.where(trained, c_i - c + tf.math.divide_no_nan(u, steps_times_lr), c_i)
            for c_i, c, u in zip(client_control_variate, control_variate, model_update)
        ]
        result, metrics = _client_loops.finish_client(
            model, model_update, num_examples, is_finite, client_weighting
        )
        return result, metrics, new_client_control_variate

    return client_update


def build_scaffold_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    learning_rate: float,
    num_clients: int,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.UNIFORM,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """Builds the SCAFFOLD `ClientWorkProcess` (local corrected SGD and control variates).

    Its state is `OrderedDict(control_variate=c, client_control_variates=table)`
    with `c` shaped like the trainable weights and `table` the same weights
    stacked to `[num_clients, ...]` (row `i` is `c_i`); both start at zero.
    Its client data is `_client_state.indexed_data_type(...)`.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        learning_rate: Local SGD learning rate `eta_l`.
        num_clients: Number of clients `N` (rows of the control-variate table).
        client_weighting: Weight of each client's update in the aggregation.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    weights_type = traced.weights_type
    trainable_type = weights_type.trainable
    table_type = _client_state.stacked_type(trainable_type, num_clients)

    @tff.tensorflow.computation
    def initial_state():
        return collections.OrderedDict(
            [
                (CONTROL_VARIATE, _client_state.zeros_like_type(trainable_type)),
                (CLIENT_CONTROL_VARIATES, _client_state.zeros_like_type(table_type)),
            ]
        )

    @tff.federated_computation
    def init_fn():
        return tff.federated_eval(initial_state, tff.SERVER)

    state_type = init_fn.type_signature.result.member

    @tff.tensorflow.computation(
        weights_type,
        tff.SequenceType(traced.element_type),
        trainable_type,
        tff.SequenceType(_client_state.flat_row_type(trainable_type)),
    )
    def client_update(initial_weights, dataset, control_variate, client_row):
        update_fn = _build_client_update(model_fn, learning_rate, client_weighting)
        return update_fn(
            initial_weights,
            dataset,
            control_variate,
            _client_state.client_row(client_row, trainable_type),
        )

    @tff.tensorflow.computation(state_type, (table_type, tff.TensorType(np.int32, [num_clients])))
    def update_state(state, scattered):
        new_rows, counts = scattered
        old_table = state[CLIENT_CONTROL_VARIATES]
        table = _client_state.replace_rows(old_table, new_rows, counts)
        # c <- c + sum_{i in S} (c_i+ - c_i) / N; rows of absent clients differ by 0.
        control_variate = [
            c + tf.reduce_sum(new - old, axis=0) / num_clients
            for c, new, old in zip(state[CONTROL_VARIATE], table, old_table)
        ]
        return collections.OrderedDict(
            [(CONTROL_VARIATE, control_variate), (CLIENT_CONTROL_VARIATES, table)]
        )

    return _client_state.build_stateful_client_work(
        init_fn,
        traced,
        num_clients,
        client_update,
        update_state,
        table_of=lambda state: state[CLIENT_CONTROL_VARIATES],
        broadcast_of=lambda state: state[CONTROL_VARIATE],
    )


def build_scaffold(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_learning_rate: float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.UNIFORM,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _client_state.ClientIndexedLearningProcess:
    """Builds the SCAFFOLD learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_learning_rate: Local SGD learning rate `eta_l` (the control
            variate correction is defined for plain SGD, so there is no client
            optimizer choice).
        server_optimizer: Optimizer applying the mean client update `x - y` as
            a pseudo-gradient; defaults to SGD with learning rate 1.0
            (`eta_g = 1`).
        num_clients: Total number of clients `N`; fixes the size of the
            control-variate table in the state.
        client_weighting: `UNIFORM` (default, the paper's plain mean over the
            participating clients) or `NUM_EXAMPLES`.
        model_aggregator: Weighted aggregation factory for the client updates;
            defaults to `tff.aggregators.MeanFactory()`.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `ClientIndexedLearningProcess` (a `tff.learning.templates.
        LearningProcess`) whose `next(state, client_data)` takes all clients'
        datasets in index order, or `(client_index, dataset)` pairs. The
        control variates are `state.client_work["control_variate"]` (`c`) and
        `state.client_work["client_control_variates"]` (`c_i` in row `i`).
    """
    process = _compose.compose_process(
        model_fn,
        lambda: build_scaffold_client_work(
            model_fn,
            client_learning_rate,
            num_clients,
            client_weighting=client_weighting,
            metrics_aggregator=metrics_aggregator,
        ),
        model_aggregator,
        server_optimizer,
    )
    return _client_state.ClientIndexedLearningProcess(process, num_clients)
