"""Client work of processes in which every client keeps part of the model as its own.

FedPer and FedRep keep the classifier head per client, Ditto a whole personal
model. The kept variables are those at `Slots` positions of
`ModelWeights.trainable` and `.non_trainable`; each client's values are a row
of a table in the server state, in FedBN's layout (`fedbn.LOCAL_WEIGHTS`,
`fedbn.PARTICIPATIONS`: the values and a count of the client's rounds), so
saving the state resumes exactly and `fedbn.client_model_weights` gives each
client's own model: the global weights with its row where it took part, the
global model where it never did.

`build_client_work` wires an injected client update around that table
(`_client_state`); `build_split_process` is the FedPer/FedRep process: the
shared variables are averaged FedAvg-style, the kept ones never (the global
model holds their example-weighted mean, the start of a first-time client,
through `fedbn.build_fedbn_finalizer`), and only `train` differs.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _client_state, _compose, fedbn

# `train(model, optimizer, dataset) -> num_examples`: a client's local training, in place.
LocalTraining = Callable[[Any, tff.learning.optimizers.Optimizer, tf.data.Dataset], tf.Tensor]


class Slots(NamedTuple):
    """Positions of the variables a client keeps, in `ModelWeights.trainable`/`.non_trainable`."""

    trainable: tuple[int, ...]
    non_trainable: tuple[int, ...]


def all_slots(traced: _client_loops.TracedModel) -> Slots:
    """Every variable of the model (Ditto's personal model is a whole copy)."""
    return Slots(
        tuple(range(len(traced.trainable_names))), tuple(range(len(traced.non_trainable_names)))
    )


def start_weights(initial_weights: Any, row: Any, slots: Slots) -> tuple[list, list]:
    """A client's starting `(trainable, non_trainable)`: the broadcast, with its own kept part.

    A client that never took part (`row[PARTICIPATIONS] == 0`) starts from the
    broadcast model alone. TensorFlow, inside a client update.
    """
    visited = row[fedbn.PARTICIPATIONS] > 0
    own = row[fedbn.LOCAL_WEIGHTS]

    def start(values, positions, own_values):
        values = list(values)
        for slot, value in zip(positions, own_values):
            values[slot] = tf.where(visited, value, values[slot])
        return values

    return (
        start(initial_weights.trainable, slots.trainable, own[fedbn.TRAINABLE]),
        start(initial_weights.non_trainable, slots.non_trainable, own[fedbn.NON_TRAINABLE]),
    )


def kept_part(trainable: Sequence[Any], non_trainable: Sequence[Any], slots: Slots):
    """`OrderedDict(trainable=, non_trainable=)`: the values at `slots`, a row of the table."""
    return collections.OrderedDict(
        [
            (fedbn.TRAINABLE, [trainable[i] for i in slots.trainable]),
            (fedbn.NON_TRAINABLE, [non_trainable[i] for i in slots.non_trainable]),
        ]
    )


def assign(model: Any, trainable: Sequence[Any], non_trainable: Sequence[Any]):
    """Sets `model`'s variables; returns its `ModelWeights` (of variables)."""
    weights = tff.learning.models.ModelWeights.from_model(model)
    for variable, value in zip(weights.trainable, trainable):
        variable.assign(value)
    for variable, value in zip(weights.non_trainable, non_trainable):
        variable.assign(value)
    return weights


def new_row(values: Any, start: Any, is_finite: tf.Tensor) -> Any:
    """`values` where finite, else `start`: a client whose training diverged keeps its row."""
    return tf.nest.map_structure(lambda v, s: tf.where(is_finite, v, s), values, start)


def build_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    num_clients: int,
    slots: Slots,
    build_client_update: Callable[[], Callable[..., Any]],
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """A `ClientWorkProcess` whose clients keep the variables at `slots`.

    Its state is `OrderedDict(local_weights=OrderedDict(trainable=[...],
    non_trainable=[...]), participations=int32[num_clients])`, the kept
    variables stacked to `[num_clients, ...]` (FedBN's layout). Each round,
    `build_client_update()` (called while tracing) returns a `tf.function`
    `(initial_weights, dataset, row) -> (ClientResult, unfinalized metrics,
    new kept values)`, with `row` the client's `OrderedDict(local_weights=,
    participations=)`. The client data is `_client_state.indexed_data_type`.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    weights_type = traced.weights_type
    local_type = fedbn._local_type(weights_type, slots.trainable, slots.non_trainable)
    table_type = _client_state.stacked_type(local_type, num_clients)
    counts_type = tff.TensorType(np.int32, [num_clients])

    @tff.tensorflow.computation
    def initial_state():
        return collections.OrderedDict(
            [
                (fedbn.LOCAL_WEIGHTS, _client_state.zeros_like_type(table_type)),
                (fedbn.PARTICIPATIONS, tf.zeros([num_clients], tf.int32)),
            ]
        )

    @tff.federated_computation
    def init_fn():
        return tff.federated_eval(initial_state, tff.SERVER)

    row_type = tff.types.StructWithPythonType(
        [(fedbn.LOCAL_WEIGHTS, local_type), (fedbn.PARTICIPATIONS, tff.TensorType(np.int32))],
        collections.OrderedDict,
    )

    @tff.tensorflow.computation(
        weights_type,
        tff.SequenceType(traced.element_type),
        tff.SequenceType(_client_state.flat_row_type(row_type)),
    )
    def client_update(initial_weights, dataset, client_row):
        row = _client_state.client_row(client_row, row_type)
        return build_client_update()(initial_weights, dataset, row)

    @tff.tensorflow.computation(init_fn.type_signature.result.member, (table_type, counts_type))
    def update_state(state, scattered):
        rows, counts = scattered
        table = _client_state.replace_rows(state[fedbn.LOCAL_WEIGHTS], rows, counts)
        return collections.OrderedDict(
            [
                (fedbn.LOCAL_WEIGHTS, table),
                (fedbn.PARTICIPATIONS, state[fedbn.PARTICIPATIONS] + counts),
            ]
        )

    return _client_state.build_stateful_client_work(
        init_fn, traced, num_clients, client_update, update_state
    )


def build_split_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    slots: Slots,
    train: LocalTraining,
):
    """The `tf.function` of one client's round with a kept part (traced inside a computation).

    The client starts from the broadcast shared variables and its own kept
    ones, runs `train`, and sends `OrderedDict(shared_update=w - w_i (the
    shared trainable variables, model order), local_mean=its kept values)`
    weighted by examples; its new row is its kept values.
    """
    model = model_fn()

    @tf.function
    def client_update(initial_weights, dataset, row):
        start_trainable, start_non_trainable = start_weights(initial_weights, row, slots)
        weights = assign(model, start_trainable, start_non_trainable)
        num_examples = train(model, optimizer, dataset)
        final_trainable = [tf.identity(v) for v in weights.trainable]
        final_non_trainable = [tf.identity(v) for v in weights.non_trainable]
        start_shared, _ = fedbn._split(start_trainable, slots.trainable)
        final_shared, _ = fedbn._split(final_trainable, slots.trainable)
        shared_update = [x - y for x, y in zip(start_shared, final_shared)]
        kept = kept_part(final_trainable, final_non_trainable, slots)
        (shared_update, kept), is_finite = _client_loops.zero_if_non_finite((shared_update, kept))
        row_out = new_row(kept, kept_part(start_trainable, start_non_trainable, slots), is_finite)
        update = collections.OrderedDict(
            [(fedbn.SHARED_UPDATE, shared_update), (fedbn.LOCAL_MEAN, kept)]
        )
        result, metrics = _client_loops.finish_client(model, update, num_examples, is_finite)
        return result, metrics, row_out

    return client_update


def build_split_process(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer | None,
    *,
    num_clients: int,
    slots: Slots,
    train: LocalTraining,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> fedbn.FedBNLearningProcess:
    """FedAvg on the shared variables, the variables at `slots` kept by each client.

    The server optimizer applies the aggregated `shared_update` to the shared
    trainable variables only; `model_aggregator` (default: the weighted mean)
    sees only that update, the kept values take a plain weighted mean into
    the global model (`_compose.ModelUpdateFactory`, `fedbn.build_fedbn_finalizer`).
    Returns a process whose `client_models(state)` is each client's own model.
    """

    def client_work():
        return build_client_work(
            model_fn,
            num_clients,
            slots,
            lambda: build_split_client_update(model_fn, client_optimizer, slots, train),
            metrics_aggregator,
        )

    process = _compose.compose_process(
        model_fn,
        client_work,
        _compose.ModelUpdateFactory(
            tff.aggregators.MeanFactory() if model_aggregator is None else model_aggregator,
            fedbn.SHARED_UPDATE,
        ),
        server_optimizer,
        lambda optimizer, weights_type: fedbn.build_fedbn_finalizer(
            optimizer, weights_type, slots.trainable, slots.non_trainable
        ),
    )
    return fedbn.FedBNLearningProcess(process, num_clients, slots.trainable, slots.non_trainable)
