"""Per-client state held at the server, for SCAFFOLD's control variates and FedBN's norms.

A TFF learning process has no persistent client state, so these values are
kept in the server state as *tables*: every variable stacked along a leading
axis of length `num_clients` (fixed when the process is built). Within a
round, `select_client_rows` sends each participating client its own row
(`tff.federated_select`) and `scatter_client_rows` puts the rows the clients
send back at their index (`tff.federated_aggregate` into a zero table);
`build_stateful_client_work` wires the two around a client update. Because
the tables are part of the state, saving and loading the whole state
(`tff_vision.checkpoints`) resumes exactly; the price is
`num_clients` copies of the variables, in the state and in every checkpoint.

To find its row a client must know its index, so the client data of these
processes is, per client, `OrderedDict(client_index=<dataset of one int32>,
data=<batches>)`. `ClientIndexedLearningProcess` wraps such a process so that
`next(state, client_data)` also accepts the simulation's usual forms: a list
of exactly `num_clients` datasets (full participation, list position = client
index) or `(client_index, dataset)` pairs (any subset of distinct clients, in
any order).
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops
from tff_vision.algorithms._client_loops import tensor_specs

CLIENT_INDEX = "client_index"
DATA = "data"


# ----------------------------------------------------------------------------- types


def indexed_data_type(element_type: tff.Type) -> tff.Type:
    """Per-client data of the client-stateful processes: its index and its batches."""
    return tff.types.StructWithPythonType(
        [
            (CLIENT_INDEX, tff.SequenceType(tff.TensorType(np.int32))),
            (DATA, tff.SequenceType(element_type)),
        ],
        collections.OrderedDict,
    )


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


# ----------------------------------------------------------------------------- client work


def build_stateful_client_work(
    init_fn: tff.Computation,
    traced: _client_loops.TracedModel,
    num_clients: int,
    client_update: tff.Computation,
    update_state: tff.Computation,
    table_of: Callable[[tff.Value], tff.Value] | None = None,
    broadcast_of: Callable[[tff.Value], tff.Value] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """A `ClientWorkProcess` whose state holds a table of per-client rows.

    Each round, every participating client receives its row of
    `table_of(state)` (default: the whole state) and, with `broadcast_of`,
    the broadcast `broadcast_of(state)`; `client_update(weights, batches,
    [broadcast,] flat row)` returns `(ClientResult, unfinalized metrics, new
    row)`; the new state is `update_state(state, (table, counts))` of the
    rows gathered by `scatter_client_rows`. Measurements: `train`, the
    clients' metrics aggregated by `traced.metrics_aggregation_fn`. The
    client data is `indexed_data_type(traced.element_type)`.
    """
    data_type = indexed_data_type(traced.element_type)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(traced.weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        indices = client_indices(client_data)
        table = state if table_of is None else table_of(state)
        client_rows = select_client_rows(indices, table, num_clients)
        shared = () if broadcast_of is None else (tff.federated_broadcast(broadcast_of(state)),)
        client_result, model_outputs, new_rows = tff.federated_map(
            client_update, (weights, client_data[DATA], *shared, client_rows)
        )
        scattered = scatter_client_rows(indices, new_rows, num_clients)
        return tff.templates.MeasuredProcessOutput(
            tff.federated_map(update_state, (state, scattered)),
            client_result,
            _client_loops.train_measurements(traced.metrics_aggregation_fn, model_outputs),
        )

    return _client_loops.client_work_process(init_fn, next_fn)


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


__all__: Sequence[str] = (
    "CLIENT_INDEX",
    "DATA",
    "ClientIndexedLearningProcess",
    "build_stateful_client_work",
    "client_indices",
    "client_row",
    "flat_row_type",
    "indexed_client_data",
    "indexed_data_type",
    "replace_rows",
    "scatter_client_rows",
    "select_client_rows",
    "stacked_type",
    "zeros_like_type",
)
