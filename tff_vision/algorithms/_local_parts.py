"""Processes in which each client keeps part of the model as its own: FedBN, FedPer, Ditto.

FedBN keeps the normalization layers per client, FedPer and FedRep the
classifier head, Ditto a whole personal model. The kept variables are those at
`Slots` positions of `ModelWeights.trainable` and `.non_trainable`; each
client's values are a row of a table in the server state (`LOCAL_WEIGHTS`,
`PARTICIPATIONS`: the values and a count of the client's rounds), so saving
the state resumes exactly and `client_model_weights` gives each client's own
model: the global weights with its row where it took part, the global model
where it never did.

`build_client_work` wires an injected client update around that table
(`_client_state`); `build_split_process` is the FedBN/FedPer/FedRep process:
the shared variables are averaged FedAvg-style, the kept ones never (the
global model holds their example-weighted mean, the start of a first-time
client, through `build_finalizer`), and only `train` and the slots differ.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _client_state, _compose

LOCAL_WEIGHTS = "local_weights"
PARTICIPATIONS = "participations"
TRAINABLE = "trainable"
NON_TRAINABLE = "non_trainable"
SHARED_UPDATE = "shared_update"
LOCAL_MEAN = "local_mean"

# `train(model, optimizer, dataset) -> num_examples`: a client's local training, in place.
LocalTraining = Callable[[Any, tff.learning.optimizers.Optimizer, tf.data.Dataset], tf.Tensor]


class Slots(NamedTuple):
    """Positions of the variables a client keeps, in `ModelWeights.trainable`/`.non_trainable`."""

    trainable: tuple[int, ...]
    non_trainable: tuple[int, ...]


def split(values: Sequence[Any], local: Sequence[int]) -> tuple[list[Any], list[Any]]:
    """`(shared, local)` entries of `values` by position."""
    local_set = set(local)
    return (
        [v for i, v in enumerate(values) if i not in local_set],
        [values[i] for i in local],
    )


def merge(shared: Sequence[Any], local_values: Sequence[Any], local: Sequence[int]) -> list[Any]:
    """Inverse of `split`."""
    size = len(shared) + len(local_values)
    local_set = set(local)
    shared_iter = iter(shared)
    by_slot = dict(zip(local, local_values))
    return [by_slot[i] if i in local_set else next(shared_iter) for i in range(size)]


def local_type(
    weights_type: tff.Type, local_trainable: Sequence[int], local_non_trainable: Sequence[int]
) -> tff.Type:
    """The type of one client's local variables: `OrderedDict(trainable=, non_trainable=)`."""
    trainable_specs = _client_loops.tensor_specs(weights_type.trainable)
    non_trainable_specs = _client_loops.tensor_specs(weights_type.non_trainable)
    return tff.types.tensorflow_to_type(
        collections.OrderedDict(
            [
                (TRAINABLE, [trainable_specs[i] for i in local_trainable]),
                (NON_TRAINABLE, [non_trainable_specs[i] for i in local_non_trainable]),
            ]
        )
    )


def train_all(model: Any, optimizer: tff.learning.optimizers.Optimizer, dataset) -> tf.Tensor:
    """Plain local training of every variable (FedBN, FedPer); returns the examples seen."""
    num_examples, _ = _client_loops.train_locally(model, optimizer, dataset)
    return num_examples


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
    visited = row[PARTICIPATIONS] > 0
    own = row[LOCAL_WEIGHTS]

    def start(values, positions, own_values):
        values = list(values)
        for slot, value in zip(positions, own_values):
            values[slot] = tf.where(visited, value, values[slot])
        return values

    return (
        start(initial_weights.trainable, slots.trainable, own[TRAINABLE]),
        start(initial_weights.non_trainable, slots.non_trainable, own[NON_TRAINABLE]),
    )


def kept_part(trainable: Sequence[Any], non_trainable: Sequence[Any], slots: Slots):
    """`OrderedDict(trainable=, non_trainable=)`: the values at `slots`, a row of the table."""
    return collections.OrderedDict(
        [
            (TRAINABLE, [trainable[i] for i in slots.trainable]),
            (NON_TRAINABLE, [non_trainable[i] for i in slots.non_trainable]),
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
    row_values_type = local_type(weights_type, slots.trainable, slots.non_trainable)
    table_type = _client_state.stacked_type(row_values_type, num_clients)
    counts_type = tff.TensorType(np.int32, [num_clients])

    @tff.tensorflow.computation
    def initial_state():
        return collections.OrderedDict(
            [
                (LOCAL_WEIGHTS, _client_state.zeros_like_type(table_type)),
                (PARTICIPATIONS, tf.zeros([num_clients], tf.int32)),
            ]
        )

    @tff.federated_computation
    def init_fn():
        return tff.federated_eval(initial_state, tff.SERVER)

    row_type = tff.types.StructWithPythonType(
        [(LOCAL_WEIGHTS, row_values_type), (PARTICIPATIONS, tff.TensorType(np.int32))],
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
        table = _client_state.replace_rows(state[LOCAL_WEIGHTS], rows, counts)
        return collections.OrderedDict(
            [
                (LOCAL_WEIGHTS, table),
                (PARTICIPATIONS, state[PARTICIPATIONS] + counts),
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
        start_shared, _ = split(start_trainable, slots.trainable)
        final_shared, _ = split(final_trainable, slots.trainable)
        shared_update = [x - y for x, y in zip(start_shared, final_shared)]
        kept = kept_part(final_trainable, final_non_trainable, slots)
        (shared_update, kept), is_finite = _client_loops.zero_if_non_finite((shared_update, kept))
        row_out = new_row(kept, kept_part(start_trainable, start_non_trainable, slots), is_finite)
        update = collections.OrderedDict([(SHARED_UPDATE, shared_update), (LOCAL_MEAN, kept)])
        result, metrics = _client_loops.finish_client(model, update, num_examples, is_finite)
        return result, metrics, row_out

    return client_update


def build_finalizer(
    server_optimizer: tff.learning.optimizers.Optimizer,
    weights_type: tff.Type,
    local_trainable: Sequence[int],
    local_non_trainable: Sequence[int],
) -> tff.learning.templates.FinalizerProcess:
    """The finalizer: the server optimizer on the shared weights, the kept ones set.

    Wraps `tff.learning.templates.build_apply_optimizer_finalizer` built for
    the shared (non-local trainable) weights only, so that the optimizer state
    covers exactly them. Its update is `OrderedDict(shared_update=...,
    local_mean=...)` (the aggregated client update); the global model's local
    variables are set to `local_mean` (a first-time client's start, see the module
    docstring) and its other non-trainable variables are left unchanged.
    """

    @tff.tensorflow.computation(weights_type)
    def shared_weights(weights):
        shared, _ = split(list(weights.trainable), local_trainable)
        return tff.learning.models.ModelWeights(trainable=shared, non_trainable=[])

    shared_type = shared_weights.type_signature.result
    inner = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, shared_type)
    update_type = tff.types.StructWithPythonType(
        [
            (SHARED_UPDATE, shared_type.trainable),
            (
                LOCAL_MEAN,
                tff.types.StructWithPythonType(
                    [
                        (TRAINABLE, [weights_type.trainable[i] for i in local_trainable]),
                        (
                            NON_TRAINABLE,
                            [weights_type.non_trainable[i] for i in local_non_trainable],
                        ),
                    ],
                    collections.OrderedDict,
                ),
            ),
        ],
        collections.OrderedDict,
    )

    @tff.tensorflow.computation(weights_type, shared_type, update_type[LOCAL_MEAN])
    def merge_weights(weights, new_shared, local_mean):
        trainable = merge(list(new_shared.trainable), list(local_mean[TRAINABLE]), local_trainable)
        non_trainable = list(weights.non_trainable)
        for slot, value in zip(local_non_trainable, local_mean[NON_TRAINABLE]):
            non_trainable[slot] = value
        return tff.learning.models.ModelWeights(
            trainable=type(weights.trainable)(trainable),
            non_trainable=type(weights.non_trainable)(non_trainable),
        )

    @tff.federated_computation(
        inner.initialize.type_signature.result,
        tff.FederatedType(weights_type, tff.SERVER),
        tff.FederatedType(update_type, tff.SERVER),
    )
    def next_fn(state, weights, update):
        inner_output = inner.next(
            state, tff.federated_map(shared_weights, weights), update[SHARED_UPDATE]
        )
        new_weights = tff.federated_map(
            merge_weights, (weights, inner_output.result, update[LOCAL_MEAN])
        )
        return tff.templates.MeasuredProcessOutput(
            inner_output.state, new_weights, inner_output.measurements
        )

    return tff.learning.templates.FinalizerProcess(
        inner.initialize,
        next_fn,
        get_hparams_fn=inner.get_hparams,
        set_hparams_fn=inner.set_hparams,
    )


class LocalPartsProcess(_client_state.ClientIndexedLearningProcess):
    """A process whose clients keep part of the model, knowing which variables.

    Attributes:
        local_trainable_slots: Positions of the local variables in
            `ModelWeights.trainable`.
        local_non_trainable_slots: Positions in `ModelWeights.non_trainable`.
    """

    def __init__(
        self,
        process: tff.learning.templates.LearningProcess,
        num_clients: int,
        local_trainable_slots: Sequence[int],
        local_non_trainable_slots: Sequence[int],
    ):
        super().__init__(process, num_clients)
        self.local_trainable_slots = tuple(local_trainable_slots)
        self.local_non_trainable_slots = tuple(local_non_trainable_slots)

    def client_models(
        self, state: Any, global_weights: tff.learning.models.ModelWeights | None = None
    ) -> list[tff.learning.models.ModelWeights]:
        """Every client's own model in `state` (see `client_model_weights`), in client order.

        The global weights are read once for all clients: `global_weights` where
        the caller has them, else one call of `get_model_weights`.
        """
        if global_weights is None:
            global_weights = self.get_model_weights(state)
        return [
            client_model_weights(self, state, i, global_weights=global_weights)
            for i in range(self.num_clients)
        ]


def client_model_weights(
    process: LocalPartsProcess,
    state: Any,
    client_index: int,
    *,
    global_weights: tff.learning.models.ModelWeights | None = None,
) -> tff.learning.models.ModelWeights:
    """Client `client_index`'s model: the global shared weights with its own kept part.

    Args:
        process: A `LocalPartsProcess` (FedBN, FedPer, FedRep, Ditto).
        state: A state of `process`.
        client_index: Index of the client in `[0, process.num_clients)`.
        global_weights: `process.get_model_weights(state)`, where the caller has
            it (each call sends the whole state through the executor); else called.

    Returns:
        `ModelWeights` of numpy arrays (assign with `.assign_weights_to(model)`).
        A client that has not taken part yet gets the global model's weights.
    """
    if not 0 <= client_index < process.num_clients:
        raise ValueError(f"client_index {client_index} out of range [0, {process.num_clients})")
    weights = global_weights if global_weights is not None else process.get_model_weights(state)
    trainable = [np.asarray(w) for w in weights.trainable]
    non_trainable = [np.asarray(w) for w in weights.non_trainable]
    client_state = state.client_work
    if int(np.asarray(client_state[PARTICIPATIONS])[client_index]) > 0:
        table = client_state[LOCAL_WEIGHTS]
        for slot, column in zip(process.local_trainable_slots, table[TRAINABLE]):
            trainable[slot] = np.asarray(column)[client_index]
        for slot, column in zip(process.local_non_trainable_slots, table[NON_TRAINABLE]):
            non_trainable[slot] = np.asarray(column)[client_index]
    return tff.learning.models.ModelWeights(trainable=trainable, non_trainable=non_trainable)


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
    recompute_batch_statistics: bool = True,
) -> LocalPartsProcess:
    """FedAvg on the shared variables, the variables at `slots` kept by each client.

    The server optimizer applies the aggregated `shared_update` to the shared
    trainable variables only; `model_aggregator` (default: the weighted mean)
    sees only that update, the kept values take a plain weighted mean into
    the global model (`_compose.ModelUpdateFactory`, `build_finalizer`).
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
            SHARED_UPDATE,
        ),
        server_optimizer,
        lambda optimizer, weights_type: build_finalizer(
            optimizer, weights_type, slots.trainable, slots.non_trainable
        ),
        recompute_batch_statistics=recompute_batch_statistics,
    )
    return LocalPartsProcess(process, num_clients, slots.trainable, slots.non_trainable)
