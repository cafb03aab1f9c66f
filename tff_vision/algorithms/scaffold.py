"""SCAFFOLD (Karimireddy et al., 2020) as a composed TFF learning process.

"SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
Sai Praneeth Karimireddy, Satyen Kale, Mehryar Mohri, Sashank J. Reddi,
Sebastian U. Stich and Ananda Theertha Suresh, ICML 2020,
https://arxiv.org/abs/1910.06378 (Algorithm 1, control variate option II).

Update rule, with global weights `x`, server control variate `c`, control
variate `c_i` of client `i`, `N` clients of which the set `S` takes part in the
round, client learning rate `eta_l` and server learning rate `eta_g`:

    every client i in S, from y = x, for each of its K_i batches (plain SGD):
        y <- y - eta_l * (g_i(y) - c_i + c)
    then
        c_i+ = c_i - c + (x - y) / (K_i * eta_l)
        dy_i = y - x,   dc_i = c_i+ - c_i,   c_i <- c_i+
    server:
        x <- x + eta_g * mean_{i in S} dy_i
        c <- c + (|S| / N) * mean_{i in S} dc_i  ( = c + sum_{i in S} dc_i / N )

Initially `c = c_i = 0`, so the first round of a client is plain local SGD.

The process is composed from TFF's templates
(`tff.learning.templates.compose_learning_process`):

* distributor: `tff.learning.templates.build_broadcast_process` of `x`;
* client work: `build_scaffold_client_work`, whose state holds `c` and the
  table of every client's `c_i` (see below); it broadcasts `c`, sends each
  client its own `c_i`, runs the corrected local SGD and stores the clients'
  `c_i+` and the new `c` in its state;
* aggregator: a weighted `tff.aggregators` factory (default
  `tff.aggregators.MeanFactory`) over the client updates `x - y`, each with
  weight 1 (the paper's plain mean; `client_weighting=NUM_EXAMPLES` weights
  them by examples instead);
* finalizer: `tff.learning.templates.build_apply_optimizer_finalizer` with the
  server optimizer applied to the mean of `x - y` as a pseudo-gradient; the
  default SGD with learning rate `eta_g = 1.0` gives `x <- x + mean dy_i`.

Client state. TFF simulations have no persistent per-client state, so the
`c_i` live in the server state (`state.client_work["client_control_variates"]`,
every variable stacked to `[num_clients, ...]`, `num_clients` fixed when the
process is built); each round `tff.federated_select` sends a participating
client its row and `tff.federated_aggregate` puts the clients' new rows back.
Everything is in the process state, so saving and loading the whole state
with `tff.program.FileProgramStateManager` resumes exactly. The state (and
every checkpoint) thus holds `num_clients + 1` copies of the trainable weights
besides the model itself.

Participation. The returned process's `next(state, client_data)` takes either
a list of exactly `num_clients` datasets (full participation; list position is
the client index) or a list of `(client_index, dataset)` pairs for a subset of
distinct clients (partial participation, any order). Clients not taking part
keep their `c_i`; `c` moves by `sum_{i in S} dc_i / N` as in the paper.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, keras_model

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
        if not is_finite:
            model.reset_metrics()
        result = tff.learning.templates.ClientResult(
            update=model_update,
            update_weight=_client_loops.client_weight(client_weighting, num_examples, is_finite),
        )
        return result, model.report_local_unfinalized_metrics(), new_client_control_variate

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
    Its client data is `_client_loops.indexed_data_type(...)`.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        learning_rate: Local SGD learning rate `eta_l`.
        num_clients: Number of clients `N` (rows of the control-variate table).
        client_weighting: Weight of each client's update in the aggregation.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `tff.learning.templates.ClientWorkProcess`.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    weights_type = traced.weights_type
    trainable_type = weights_type.trainable
    table_type = _client_loops.stacked_type(trainable_type, num_clients)
    data_type = _client_loops.indexed_data_type(traced.element_type)

    @tff.tensorflow.computation
    def initial_state():
        return collections.OrderedDict(
            [
                (CONTROL_VARIATE, _client_loops.zeros_like_type(trainable_type)),
                (CLIENT_CONTROL_VARIATES, _client_loops.zeros_like_type(table_type)),
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
        tff.SequenceType(_client_loops.flat_row_type(trainable_type)),
    )
    def client_update(initial_weights, dataset, control_variate, client_row):
        update_fn = _build_client_update(model_fn, learning_rate, client_weighting)
        return update_fn(
            initial_weights,
            dataset,
            control_variate,
            _client_loops.client_row(client_row, trainable_type),
        )

    @tff.tensorflow.computation(state_type, (table_type, tff.TensorType(np.int32, [num_clients])))
    def update_state(state, scattered):
        new_rows, counts = scattered
        old_table = state[CLIENT_CONTROL_VARIATES]
        table = _client_loops.replace_rows(old_table, new_rows, counts)
        # c <- c + sum_{i in S} (c_i+ - c_i) / N; rows of absent clients differ by 0.
        control_variate = [
            c + tf.reduce_sum(new - old, axis=0) / num_clients
            for c, new, old in zip(state[CONTROL_VARIATE], table, old_table)
        ]
        return collections.OrderedDict(
            [(CONTROL_VARIATE, control_variate), (CLIENT_CONTROL_VARIATES, table)]
        )

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        indices = _client_loops.client_indices(client_data)
        client_rows = _client_loops.select_client_rows(
            indices, state[CLIENT_CONTROL_VARIATES], num_clients
        )
        control_variate = tff.federated_broadcast(state[CONTROL_VARIATE])
        client_result, model_outputs, new_rows = tff.federated_map(
            client_update,
            (weights, client_data[_client_loops.DATA], control_variate, client_rows),
        )
        scattered = _client_loops.scatter_client_rows(indices, new_rows, num_clients)
        new_state = tff.federated_map(update_state, (state, scattered))
        measurements = tff.federated_zip(
            collections.OrderedDict(train=traced.metrics_aggregation_fn(model_outputs))
        )
        return tff.templates.MeasuredProcessOutput(new_state, client_result, measurements)

    process = tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
    keras_model.restore_eager_keras_classes()
    return process


def build_scaffold(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_learning_rate: float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.UNIFORM,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _client_loops.ClientIndexedLearningProcess:
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
    if server_optimizer is None:
        server_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=1.0)
    if model_aggregator is None:
        model_aggregator = tff.aggregators.MeanFactory()

    @tff.tensorflow.computation
    def initial_model_weights_fn():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_model_weights_fn.type_signature.result
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
    client_work = build_scaffold_client_work(
        model_fn,
        client_learning_rate,
        num_clients,
        client_weighting=client_weighting,
        metrics_aggregator=metrics_aggregator,
    )
    client_result_type = client_work.next.type_signature.result.result.member
    aggregator = model_aggregator.create(
        client_result_type.update, client_result_type.update_weight
    )
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
        server_optimizer, weights_type
    )
    process = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn, distributor, client_work, aggregator, finalizer
    )
    keras_model.restore_eager_keras_classes()
    return _client_loops.ClientIndexedLearningProcess(process, num_clients)
