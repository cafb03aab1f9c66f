"""Shared building blocks of the SCAFFOLD, FedNova and FedBN learning processes.

Local training:
    `train_locally` runs a `tff.learning.optimizers.Optimizer` over every batch
    of a client dataset on a `tff.learning.models.VariableModel` (the same loop
    as TFF's model-delta client work), optionally correcting each gradient
    first (SCAFFOLD), and counts the examples and the local steps taken (the
    `K` of SCAFFOLD and the `tau_i` of FedNova).

Per-client state held at the server:
    A TFF learning process has no persistent client state. SCAFFOLD's control
    variates `c_i` and FedBN's local normalization parameters are therefore
    kept in the server state as *tables*: every variable stacked along a
    leading axis of length `num_clients` (fixed when the process is built).
    Within a round, `select_client_rows` sends each participating client its
    own row (`tff.federated_select`) and `scatter_client_rows` puts the rows
    the clients send back at their index (`tff.federated_aggregate` into a
    zero table). Because the tables are part of the state, saving and loading
    the whole state (`tff.program.FileProgramStateManager`) resumes exactly.
    The price is memory: a table holds `num_clients` copies of its variables,
    in the state and in every checkpoint.

Client identity:
    To find its row a client must know its index, so the client data of these
    processes is, per client, `OrderedDict(client_index=<dataset of one int32>,
    data=<batches>)`. `ClientIndexedLearningProcess` wraps such a process so
    that `next(state, client_data)` also accepts the simulation's usual forms:
    a list of exactly `num_clients` datasets (full participation, list
    position = client index) or `(client_index, dataset)` pairs (any subset of
    distinct clients, in any order).
"""

from __future__ import annotations

import collections
import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import keras_model

CLIENT_INDEX = "client_index"
DATA = "data"

GradientCorrection = Callable[[list[tf.Tensor]], list[tf.Tensor]]


# ----------------------------------------------------------------------------- local training


def train_locally(
    model: tff.learning.models.VariableModel,
    optimizer: tff.learning.optimizers.Optimizer,
    dataset: tf.data.Dataset,
    gradient_correction: GradientCorrection | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Trains `model` in place with one `optimizer` step per batch of `dataset`.

    Must be traced inside a `tf.function`. The optimizer state starts fresh
    (as in TFF's model-delta client work); the model's forward pass runs with
    `training=True`, so BatchNormalization moving statistics are updated too.

    Args:
        model: The model to train; its variables hold the starting point.
        optimizer: A TFF optimizer applied to the trainable variables.
        dataset: Batches of `(images, labels)`.
        gradient_correction: Optional function mapping the list of batch
            gradients (one per trainable variable) to the gradients the
            optimizer receives.

    Returns:
        `(num_examples, num_steps)`, both int64 scalars: the examples trained
        on and the number of optimizer steps (batches).
    """
    trainable = list(tff.learning.models.ModelWeights.from_model(model).trainable)
    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)

    def reduce_fn(loop_state, batch):
        num_examples, num_steps, optimizer_state = loop_state
        with tf.GradientTape() as tape:
            output = model.forward_pass(batch, training=True)
        gradients = tape.gradient(output.loss, trainable)
        if gradient_correction is not None:
            gradients = gradient_correction(gradients)
        optimizer_state, updated = optimizer.next(
            optimizer_state, tuple(trainable), tuple(gradients)
        )
        for variable, value in zip(trainable, updated):
            variable.assign(value)
        if output.num_examples is None:
            batch_examples = tf.shape(output.predictions, out_type=tf.int64)[0]
        else:
            batch_examples = tf.cast(output.num_examples, tf.int64)
        return num_examples + batch_examples, num_steps + 1, optimizer_state

    initial = (
        tf.constant(0, tf.int64),
        tf.constant(0, tf.int64),
        optimizer.initialize(specs),
    )
    num_examples, num_steps, _ = reduce_batches(dataset, initial, reduce_fn)
    return num_examples, num_steps


def reduce_batches(dataset: tf.data.Dataset, initial_state: Any, reduce_fn: Callable) -> Any:
    """`dataset.reduce(initial_state, reduce_fn)` as an iterator loop.

    The loop form of TFF's `LoopImplementation.DATASET_ITERATOR` (the one
    `fedavg.LOOP_IMPLEMENTATION` selects). `Dataset.reduce` instantiates its
    body, here a whole forward/backward step, as a new function (grappler
    included) every time it runs, i.e. for every client of every round; the
    iterator loop is part of the client computation's graph, which the TFF
    worker builds once per session. Must be traced inside a `tf.function`
    (AutoGraph turns the loop into a `tf.while_loop`).
    """
    state = initial_state
    for batch in iter(dataset):
        state = reduce_fn(state, batch)
    return state


def zero_if_non_finite(values: Any) -> tuple[Any, tf.Tensor]:
    """Zeroes every tensor of `values` when any of them has a NaN/inf.

    Returns:
        `(values or zeros, is_finite)` with `is_finite` a bool scalar.
    """
    flat = tf.nest.flatten(values)
    is_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in flat])
    zeroed = [tf.where(is_finite, t, tf.zeros_like(t)) for t in flat]
    return tf.nest.pack_sequence_as(values, zeroed), is_finite


def client_weight(
    weighting: tff.learning.ClientWeighting, num_examples: tf.Tensor, is_finite: tf.Tensor
) -> tf.Tensor:
    """The aggregation weight of a client (0 when its update was not finite)."""
    if weighting == tff.learning.ClientWeighting.NUM_EXAMPLES:
        weight = tf.cast(num_examples, tf.float32)
    elif weighting == tff.learning.ClientWeighting.UNIFORM:
        weight = tf.constant(1.0, tf.float32)
    else:
        raise ValueError(f"Unsupported client weighting: {weighting}")
    return tf.where(is_finite, weight, 0.0)


# ----------------------------------------------------------------------------- types


@dataclasses.dataclass(frozen=True)
class TracedModel:
    """What a builder needs to know about the model of `model_fn`.

    Attributes:
        weights_type: The `ModelWeights` TFF type.
        element_type: The TFF type of one batch of client data.
        metrics_aggregation_fn: Federated computation aggregating the clients'
            unfinalized metrics (from the builder's `metrics_aggregator`).
        trainable_names: Variable names of `weights_type.trainable`, in order.
        non_trainable_names: Variable names of `weights_type.non_trainable`.
    """

    weights_type: tff.Type
    element_type: tff.Type
    metrics_aggregation_fn: tff.Computation
    trainable_names: tuple[str, ...]
    non_trainable_names: tuple[str, ...]


def trace_model(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> TracedModel:
    """Builds the model of `model_fn` once, in a throwaway graph, to read its types.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        metrics_aggregator: Builds the metrics aggregation from the model's
            metric finalizers; defaults to `tff.learning.metrics.sum_then_finalize`.
    """
    if metrics_aggregator is None:
        metrics_aggregator = tff.learning.metrics.sum_then_finalize
    with tf.Graph().as_default():
        model = model_fn()
        if not isinstance(model, tff.learning.models.VariableModel):
            raise TypeError(f"model_fn must return a VariableModel, got {type(model).__name__}")
        metrics_aggregation_fn = metrics_aggregator(model.metric_finalizers())
        weights = tff.learning.models.ModelWeights.from_model(model)
        trainable_names = tuple(v.name for v in weights.trainable)
        non_trainable_names = tuple(v.name for v in weights.non_trainable)
    # Tracing in a graph switches Keras' functional base class; switch it back.
    keras_model.restore_eager_keras_classes()
    return TracedModel(
        weights_type=tff.learning.models.weights_type_from_model(model),
        element_type=tff.types.tensorflow_to_type(model.input_spec),
        metrics_aggregation_fn=metrics_aggregation_fn,
        trainable_names=trainable_names,
        non_trainable_names=non_trainable_names,
    )


def indexed_data_type(element_type: tff.Type) -> tff.Type:
    """Per-client data of the client-stateful processes: its index and its batches."""
    return tff.types.StructWithPythonType(
        [
            (CLIENT_INDEX, tff.SequenceType(tff.TensorType(np.int32))),
            (DATA, tff.SequenceType(element_type)),
        ],
        collections.OrderedDict,
    )


def tensor_specs(type_spec: tff.Type) -> Any:
    """The structure of `tf.TensorSpec`s (Python containers kept) of a tensor type tree."""
    return tff.types.type_to_tf_tensor_specs(type_spec)


def stacked_type(member_type: tff.Type, num_clients: int) -> tff.Type:
    """The type of `num_clients` copies of `member_type` stacked on a new leading axis."""
    specs = tf.nest.map_structure(
        lambda s: tf.TensorSpec([num_clients, *s.shape], s.dtype), tensor_specs(member_type)
    )
    return tff.types.tensorflow_to_type(specs)


def zeros_like_type(type_spec: tff.Type) -> Any:
    """Zeros of `type_spec` (to be called while tracing TensorFlow)."""
    return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), tensor_specs(type_spec))


# ----------------------------------------------------------------------------- federated helpers


@tff.tensorflow.computation(tff.SequenceType(tff.TensorType(np.int32)))
def _client_index(index_dataset):
    return tf.reshape(index_dataset.get_single_element(), [])


def client_indices(client_data: tff.Value) -> tff.Value:
    """CLIENTS-placed int32 scalars: the index of every participating client.

    Args:
        client_data: CLIENTS-placed value of type `indexed_data_type(...)`.
    """
    return tff.federated_map(_client_index, getattr(client_data, CLIENT_INDEX))


def select_client_rows(indices: tff.Value, table: tff.Value, num_clients: int) -> tff.Value:
    """Sends every participating client its own row of a server-held table.

    Call while tracing a federated computation. The row travels as a flat
    tuple of tensors (in `tf.nest.flatten` order): TFF 0.87 mixes up the fields
    of dict-structured sequence elements that arrive via `federated_select`
    (type order versus `tf.nest`'s sorted-key order), so the client must
    rebuild it with `client_row`.

    Args:
        indices: CLIENTS-placed int32 scalars from `client_indices`.
        table: SERVER-placed structure whose tensors have leading axis
            `num_clients`.
        num_clients: Number of rows.

    Returns:
        A CLIENTS-placed sequence holding exactly one element: the client's
        row, flattened.
    """
    table_type = table.type_signature.member

    @tff.tensorflow.computation(np.int32)
    def as_keys(index):
        return tf.reshape(index, [1])

    @tff.tensorflow.computation(table_type, np.int32)
    def row(table, key):
        return tuple(tf.gather(t, key) for t in tf.nest.flatten(table))

    return tff.federated_select(
        tff.federated_map(as_keys, indices),
        tff.federated_value(np.int32(num_clients), tff.SERVER),
        table,
        row,
    )


def flat_row_type(row_type: tff.Type) -> tff.Type:
    """The sequence element type `select_client_rows` sends for rows of `row_type`."""
    return tff.types.tensorflow_to_type(tuple(tf.nest.flatten(tensor_specs(row_type))))


def client_row(rows: tf.data.Dataset, row_type: tff.Type) -> Any:
    """Rebuilds, in TensorFlow, the row a client received from `select_client_rows`."""
    return tf.nest.pack_sequence_as(tensor_specs(row_type), list(rows.get_single_element()))


def scatter_client_rows(indices: tff.Value, rows: tff.Value, num_clients: int) -> tff.Value:
    """Gathers the clients' rows at the server, each at its client's index.

    Call while tracing a federated computation.

    Args:
        indices: CLIENTS-placed int32 scalars from `client_indices` (distinct).
        rows: CLIENTS-placed structure of tensors, one row per client.
        num_clients: Number of rows of the resulting table.

    Returns:
        A SERVER-placed `(table, counts)`: `table` stacks the rows along a new
        leading axis (zeros for clients that did not take part) and `counts`
        (int32 `[num_clients]`) is 1 for the clients that took part, else 0.
    """
    row_type = rows.type_signature.member
    table_type = stacked_type(row_type, num_clients)
    counts_type = tff.TensorType(np.int32, [num_clients])
    accumulator_type = tff.types.StructWithPythonType([table_type, counts_type], tuple)

    @tff.tensorflow.computation
    def zeros():
        return zeros_like_type(table_type), tf.zeros([num_clients], tf.int32)

    @tff.tensorflow.computation(accumulator_type, (np.int32, row_type))
    def accumulate(accumulator, client_value):
        table, counts = accumulator
        index, row = client_value
        position = tf.reshape(index, [1, 1])
        table = tf.nest.map_structure(
            lambda t, r: tf.tensor_scatter_nd_add(t, position, r[tf.newaxis]), table, row
        )
        counts = tf.tensor_scatter_nd_add(counts, position, [1])
        return table, counts

    @tff.tensorflow.computation(accumulator_type, accumulator_type)
    def merge(a, b):
        return tf.nest.map_structure(tf.add, a, b)

    @tff.tensorflow.computation(accumulator_type)
    def report(accumulator):
        return accumulator

    return tff.federated_aggregate(
        tff.federated_zip((indices, rows)), zeros(), accumulate, merge, report
    )


def replace_rows(table: Any, new_rows: Any, counts: tf.Tensor) -> Any:
    """`table` with the rows where `counts > 0` taken from `new_rows` (TensorFlow)."""

    def replace(old, new):
        mask = tf.reshape(counts > 0, [-1] + [1] * (old.shape.rank - 1))
        return tf.where(mask, new, old)

    return tf.nest.map_structure(replace, table, new_rows)


# ----------------------------------------------------------------------------- process wrapper


def _as_index(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("client index must be an integer, got a bool")
    return operator.index(value)


def indexed_client_data(client_data: Any, num_clients: int) -> list[collections.OrderedDict]:
    """Converts the accepted forms of client data to the indexed form.

    Args:
        client_data: One of: a sequence of exactly `num_clients` datasets
            (client `i` trains on element `i`); a sequence of
            `(client_index, dataset)` pairs; a mapping `client_index ->
            dataset`; or the indexed form itself (passed through).
        num_clients: The number of clients the process was built for.

    Returns:
        A list with, per participating client, `OrderedDict(client_index=
        <dataset of one int32>, data=<dataset>)`.

    Raises:
        ValueError: For no clients, the wrong number of datasets, or indices
            out of range or repeated.
    """
    if isinstance(client_data, Mapping):
        items: list[Any] = list(client_data.items())
    else:
        items = list(client_data)
    if not items:
        raise ValueError("no client data: at least one client must take part in a round")
    if all(isinstance(x, Mapping) and CLIENT_INDEX in x for x in items):
        return [collections.OrderedDict(x) for x in items]
    if all(_is_pair(x) for x in items):
        pairs = [(_as_index(i), ds) for i, ds in items]
    elif all(isinstance(x, tf.data.Dataset) for x in items):
        if len(items) != num_clients:
            raise ValueError(
                f"got {len(items)} client datasets for a process built for {num_clients} "
                "clients: pass all clients in index order, or (client_index, dataset) pairs "
                "for partial participation"
            )
        pairs = list(enumerate(items))
    else:
        raise TypeError(
            "client data must be a list of tf.data.Dataset (one per client, in index order) "
            "or of (client_index, dataset) pairs"
        )
    indices = [i for i, _ in pairs]
    if len(set(indices)) != len(indices):
        raise ValueError(f"repeated client indices: {sorted(indices)}")
    bad = [i for i in indices if not 0 <= i < num_clients]
    if bad:
        raise ValueError(f"client indices {bad} out of range [0, {num_clients})")
    return [
        collections.OrderedDict(
            [(CLIENT_INDEX, tf.data.Dataset.from_tensors(np.int32(i))), (DATA, ds)]
        )
        for i, ds in pairs
    ]


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], (int, np.integer))
        and not isinstance(item[0], (bool, np.bool_))
    )


class _IndexedNext(tff.Computation):
    """The `next` of a `ClientIndexedLearningProcess`: converts client data, then calls."""

    def __init__(self, computation: tff.Computation, num_clients: int):
        self._computation = computation
        self._num_clients = num_clients

    @property
    def type_signature(self) -> tff.FunctionType:
        return self._computation.type_signature

    @property
    def computation(self) -> tff.Computation:
        """The wrapped computation, which takes the indexed client data."""
        return self._computation

    def __call__(self, state, client_data):
        return self._computation(state, indexed_client_data(client_data, self._num_clients))

    def __hash__(self) -> int:
        return hash(self._computation)


class ClientIndexedLearningProcess(tff.learning.templates.LearningProcess):
    """A learning process whose clients are identified by an index in `[0, num_clients)`.

    Wraps a composed `LearningProcess` whose client data is
    `indexed_data_type(...)`. Its `next(state, client_data)` accepts:

    * a list of exactly `num_clients` datasets: full participation, client
      `i` is the `i`-th dataset;
    * a list of `(client_index, dataset)` pairs (or a dict `index ->
      dataset`): the listed clients take part, in any order;

    and converts either to the indexed form before calling the TFF
    computation (`next_computation`, which takes the indexed form only).
    `initialize`, `get_model_weights`, `set_model_weights`, `get_hparams` and
    `set_hparams` are the wrapped process's.
    """

    def __init__(self, process: tff.learning.templates.LearningProcess, num_clients: int):
        super().__init__(
            process.initialize,
            process.next,
            process.get_model_weights,
            process.set_model_weights,
            get_hparams_fn=process.get_hparams,
            set_hparams_fn=process.set_hparams,
        )
        self._num_clients = num_clients
        self._indexed_next = _IndexedNext(process.next, num_clients)

    @property
    def num_clients(self) -> int:
        """The number of clients (rows of the per-client state tables)."""
        return self._num_clients

    @property
    def next(self) -> tff.Computation:
        """Runs one round; see the class docstring for the accepted client data."""
        return self._indexed_next

    @property
    def next_computation(self) -> tff.Computation:
        """The underlying TFF computation, taking `indexed_client_data(...)`."""
        return super().next


def flatten_state(state: Any) -> list[np.ndarray]:
    """All tensors of a process state, flattened (for comparisons in tests and tools)."""
    return [np.asarray(x) for x in tf.nest.flatten(state)]


__all__: Sequence[str] = (
    "CLIENT_INDEX",
    "DATA",
    "ClientIndexedLearningProcess",
    "TracedModel",
    "client_indices",
    "client_row",
    "client_weight",
    "flat_row_type",
    "flatten_state",
    "indexed_client_data",
    "indexed_data_type",
    "replace_rows",
    "scatter_client_rows",
    "select_client_rows",
    "stacked_type",
    "trace_model",
    "train_locally",
    "zero_if_non_finite",
    "zeros_like_type",
)
