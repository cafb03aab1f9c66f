"""FedBN (Li et al., 2021, https://arxiv.org/abs/2102.07623) as a TFF process.

FedBN is FedAvg in which the normalization layers stay local: their
parameters (`gamma`, `beta`) and statistics (moving mean and variance) are
never averaged, since on non-IID features each client's own normalization
fits it best. With shared weights `w`, client `i`'s normalization variables
`b_i` and `n_i` its examples trained on:

    every client i in S trains from (w, b_i) to (w_i, b_i+); b_i <- b_i+
    server:  w <- w - server_optimizer_step(sum_i n_i (w - w_i) / sum_i n_i)

The process is `_compose.compose_process` with `build_fedbn_client_work` and
`build_fedbn_finalizer` (the server optimizer on the shared weights only).
The `b_i` are a table in the server state (`_client_state`, with a count of
each client's rounds), so saving the state resumes exactly. The global
model's normalization variables are the example-weighted mean of the round's
`b_i+`, the start of a client's first round; no client uses that model, so
evaluations score each client's own (`client_model_weights`, and
`FedBNLearningProcess.client_models` for all of them). Local variables: those
of `local_layer_names`, by default every `gamma`, `beta`, `moving_mean` and
`moving_variance` (Keras' normalization layers).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _client_state, _compose, keras_model

LOCAL_WEIGHTS = "local_weights"
PARTICIPATIONS = "participations"
TRAINABLE = "trainable"
NON_TRAINABLE = "non_trainable"
SHARED_UPDATE = "shared_update"
LOCAL_MEAN = "local_mean"

NORMALIZATION_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _variable_basename(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]


def local_variable_slots(
    variable_names: Sequence[str], local_layer_names: Sequence[str] | None = None
) -> tuple[int, ...]:
    """Positions of the local (normalization) variables among `variable_names`.

    Args:
        variable_names: TensorFlow variable names such as "norm1/gamma:0".
        local_layer_names: Layers whose variables are local; when None, the
            variables named like those of Keras normalization layers.
    """
    if local_layer_names is None:
        return tuple(
            i
            for i, name in enumerate(variable_names)
            if _variable_basename(name) in NORMALIZATION_VARIABLES
        )
    prefixes = tuple(f"{layer}/" for layer in local_layer_names)
    return tuple(i for i, name in enumerate(variable_names) if name.startswith(prefixes))


def _local_slots(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    local_layer_names: Sequence[str] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Local-variable positions in `(ModelWeights.trainable, ModelWeights.non_trainable)`."""
    with tf.Graph().as_default():
        weights = tff.learning.models.ModelWeights.from_model(model_fn())
        slots = (
            local_variable_slots([v.name for v in weights.trainable], local_layer_names),
            local_variable_slots([v.name for v in weights.non_trainable], local_layer_names),
        )
    keras_model.restore_eager_keras_classes()
    return slots


def _split(values: Sequence[Any], local: Sequence[int]) -> tuple[list[Any], list[Any]]:
    """`(shared, local)` entries of `values` by position."""
    local_set = set(local)
    return (
        [v for i, v in enumerate(values) if i not in local_set],
        [values[i] for i in local],
    )


def _merge(shared: Sequence[Any], local_values: Sequence[Any], local: Sequence[int]) -> list[Any]:
    """Inverse of `_split`."""
    size = len(shared) + len(local_values)
    local_set = set(local)
    shared_iter = iter(shared)
    by_slot = dict(zip(local, local_values))
    return [by_slot[i] if i in local_set else next(shared_iter) for i in range(size)]


def _build_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    local_trainable: Sequence[int],
    local_non_trainable: Sequence[int],
):
    """The `tf.function` of one client's FedBN round (traced inside a computation)."""
    model = model_fn()

    @tf.function
    def client_update(initial_weights, dataset, client_row):
        visited = client_row[PARTICIPATIONS] > 0
        own = client_row[LOCAL_WEIGHTS]

        def start(values, slots, own_values):
            values = list(values)
            for slot, value in zip(slots, own_values):
                values[slot] = tf.where(visited, value, values[slot])
            return values

        start_trainable = start(initial_weights.trainable, local_trainable, own[TRAINABLE])
        start_non_trainable = start(
            initial_weights.non_trainable, local_non_trainable, own[NON_TRAINABLE]
        )
        weights = tff.learning.models.ModelWeights.from_model(model)
        for variable, value in zip(weights.trainable, start_trainable):
            variable.assign(value)
        for variable, value in zip(weights.non_trainable, start_non_trainable):
            variable.assign(value)
        num_examples, _ = _client_loops.train_locally(model, optimizer, dataset)

        final_trainable = [tf.identity(v) for v in weights.trainable]
        final_non_trainable = [tf.identity(v) for v in weights.non_trainable]
        start_shared, _ = _split(start_trainable, local_trainable)
        final_shared, final_local_trainable = _split(final_trainable, local_trainable)
        _, final_local_non_trainable = _split(final_non_trainable, local_non_trainable)
        shared_update = [x - y for x, y in zip(start_shared, final_shared)]
        local_values = collections.OrderedDict(
            [(TRAINABLE, final_local_trainable), (NON_TRAINABLE, final_local_non_trainable)]
        )
        (shared_update, local_values), is_finite = _client_loops.zero_if_non_finite(
            (shared_update, local_values)
        )
        # A client whose training diverged keeps the normalization it started from.
        _, start_local_trainable = _split(start_trainable, local_trainable)
        _, start_local_non_trainable = _split(start_non_trainable, local_non_trainable)
        start_local = {TRAINABLE: start_local_trainable, NON_TRAINABLE: start_local_non_trainable}
        new_row = collections.OrderedDict(
            (key, [tf.where(is_finite, v, s) for v, s in zip(local_values[key], start_local[key])])
            for key in (TRAINABLE, NON_TRAINABLE)
        )
        update = collections.OrderedDict(
            [(SHARED_UPDATE, shared_update), (LOCAL_MEAN, local_values)]
        )
        result, metrics = _client_loops.finish_client(model, update, num_examples, is_finite)
        return result, metrics, new_row

    return client_update


def _checked_local_slots(
    traced: _client_loops.TracedModel, local_layer_names: Sequence[str] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`_local_slots` of a traced model; raises ValueError when there are none."""
    local_trainable = local_variable_slots(traced.trainable_names, local_layer_names)
    local_non_trainable = local_variable_slots(traced.non_trainable_names, local_layer_names)
    if not local_trainable and not local_non_trainable:
        raise ValueError(
            "FedBN found no normalization variables to keep local (model variables: "
            f"{traced.trainable_names + traced.non_trainable_names}); build the model with "
            "normalization layers (e.g. norm='batch') or pass local_layer_names"
        )
    return local_trainable, local_non_trainable


def _local_type(
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


def build_fedbn_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer,
    num_clients: int,
    local_layer_names: Sequence[str] | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """Builds the FedBN `ClientWorkProcess` (local training with local normalization).

    Its state is `OrderedDict(local_weights=OrderedDict(trainable=[...],
    non_trainable=[...]), participations=int32[num_clients])`: the local
    variables (in model order) stacked to `[num_clients, ...]` and how many
    rounds each client took part in (a client with 0 starts from the
    broadcast normalization variables). Its client data is
    `_client_state.indexed_data_type(...)`; its client update is
    `OrderedDict(shared_update=w - w_i (non-local trainable weights, model
    order), local_mean=b_i+)` weighted by examples.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        client_optimizer: TFF optimizer for local training (all trainable
            weights, local ones included).
        num_clients: Number of clients (rows of the local-variable table).
        local_layer_names: Layers kept local (see `local_variable_slots`).
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    local_trainable, local_non_trainable = _checked_local_slots(traced, local_layer_names)
    weights_type = traced.weights_type
    local_type = _local_type(weights_type, local_trainable, local_non_trainable)
    table_type = _client_state.stacked_type(local_type, num_clients)
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

    state_type = init_fn.type_signature.result.member
    row_type = tff.types.StructWithPythonType(
        [(LOCAL_WEIGHTS, local_type), (PARTICIPATIONS, tff.TensorType(np.int32))],
        collections.OrderedDict,
    )

    @tff.tensorflow.computation(
        weights_type,
        tff.SequenceType(traced.element_type),
        tff.SequenceType(_client_state.flat_row_type(row_type)),
    )
    def client_update(initial_weights, dataset, client_row):
        update_fn = _build_client_update(
            model_fn, client_optimizer, local_trainable, local_non_trainable
        )
        return update_fn(initial_weights, dataset, _client_state.client_row(client_row, row_type))

    @tff.tensorflow.computation(state_type, (table_type, counts_type))
    def update_state(state, scattered):
        new_rows, counts = scattered
        return collections.OrderedDict(
            [
                (LOCAL_WEIGHTS, _client_state.replace_rows(state[LOCAL_WEIGHTS], new_rows, counts)),
                (PARTICIPATIONS, state[PARTICIPATIONS] + counts),
            ]
        )

    return _client_state.build_stateful_client_work(
        init_fn, traced, num_clients, client_update, update_state
    )


def build_fedbn_finalizer(
    server_optimizer: tff.learning.optimizers.Optimizer,
    weights_type: tff.Type,
    local_trainable: Sequence[int],
    local_non_trainable: Sequence[int],
) -> tff.learning.templates.FinalizerProcess:
    """The FedBN finalizer: the server optimizer on the shared weights, local ones set.

    Wraps `tff.learning.templates.build_apply_optimizer_finalizer` built for
    the shared (non-local trainable) weights only, so that the optimizer state
    covers exactly them. Its update is `OrderedDict(shared_update=...,
    local_mean=...)` (the aggregated client update); the global model's local
    variables are set to `local_mean` (a first-time client's start, see the module
    docstring) and its other non-trainable variables are left unchanged.
    """

    @tff.tensorflow.computation(weights_type)
    def shared_weights(weights):
        shared, _ = _split(list(weights.trainable), local_trainable)
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
    def merge(weights, new_shared, local_mean):
        trainable = _merge(list(new_shared.trainable), list(local_mean[TRAINABLE]), local_trainable)
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
        new_weights = tff.federated_map(merge, (weights, inner_output.result, update[LOCAL_MEAN]))
        return tff.templates.MeasuredProcessOutput(
            inner_output.state, new_weights, inner_output.measurements
        )

    return tff.learning.templates.FinalizerProcess(
        inner.initialize,
        next_fn,
        get_hparams_fn=inner.get_hparams,
        set_hparams_fn=inner.set_hparams,
    )


class FedBNLearningProcess(_client_state.ClientIndexedLearningProcess):
    """The FedBN process, knowing which model variables are local.

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

    def client_models(self, state: Any) -> list[tff.learning.models.ModelWeights]:
        """Every client's own model in `state` (see `client_model_weights`), in client order."""
        return [client_model_weights(self, state, i) for i in range(self.num_clients)]


def client_model_weights(
    process: FedBNLearningProcess, state: Any, client_index: int
) -> tff.learning.models.ModelWeights:
    """Client `client_index`'s model: the global shared weights with its own normalization.

    Args:
        process: The process built by `build_fedbn`.
        state: A state of `process`.
        client_index: Index of the client in `[0, process.num_clients)`.

    Returns:
        `ModelWeights` of numpy arrays (assign with `.assign_weights_to(model)`).
        A client that has not taken part yet gets the global model's weights.
    """
    if not 0 <= client_index < process.num_clients:
        raise ValueError(f"client_index {client_index} out of range [0, {process.num_clients})")
    weights = process.get_model_weights(state)
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


def build_fedbn(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer | float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    local_layer_names: Sequence[str] | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> FedBNLearningProcess:
    """Builds the FedBN learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` with normalization layers (e.g.
            `tff_vision.models.build_model(..., norm="batch")` wrapped by
            `keras_model.model_fn`).
        client_optimizer: TFF optimizer for local training, or a float: the
            learning rate of plain SGD.
        server_optimizer: Optimizer applying the example-weighted mean of the
            shared-weight updates as a pseudo-gradient; defaults to SGD with
            learning rate 1.0 (FedAvg's averaging).
        num_clients: Total number of clients; fixes the size of the table of
            local variables in the state.
        local_layer_names: Names of the layers kept local, e.g.
            `tff_vision.models.normalization_layer_names(keras_model)`; by
            default every `gamma`/`beta`/`moving_mean`/`moving_variance`.
        model_aggregator: Weighted aggregation factory of the shared-weight
            updates; defaults to `tff.aggregators.MeanFactory()`. The local
            variables' mean is a plain weighted mean whatever the factory
            (`_compose.ModelUpdateFactory`): clipping, zeroing or quantizing
            absolute parameter values would distort them.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `FedBNLearningProcess` (a `tff.learning.templates.LearningProcess`);
        `next(state, client_data)` takes all clients' datasets in index order
        or `(client_index, dataset)` pairs. See `client_model_weights`.
    """
    if not isinstance(client_optimizer, tff.learning.optimizers.Optimizer):
        client_optimizer = tff.learning.optimizers.build_sgdm(float(client_optimizer))
    local_trainable, local_non_trainable = _local_slots(model_fn, local_layer_names)
    process = _compose.compose_process(
        model_fn,
        lambda: build_fedbn_client_work(
            model_fn,
            client_optimizer,
            num_clients,
            local_layer_names=local_layer_names,
            metrics_aggregator=metrics_aggregator,
        ),
        _compose.ModelUpdateFactory(
            tff.aggregators.MeanFactory() if model_aggregator is None else model_aggregator,
            SHARED_UPDATE,
        ),
        server_optimizer,
        lambda optimizer, weights_type: build_fedbn_finalizer(
            optimizer, weights_type, local_trainable, local_non_trainable
        ),
        recompute_batch_statistics=False,
    )
    return FedBNLearningProcess(process, num_clients, local_trainable, local_non_trainable)
