"""Bytes a federated round moves between server and clients, read off the TFF computation.

`client_bytes(process)` walks the building block of `process.next` and sizes,
from its type signature (dtype size x elements of every tensor), each
intrinsic that moves values across placements: `federated_broadcast` and
`federated_select` send server values down to a client; the federated sums,
means, `federated_aggregate` and secure sums carry a client's values up.
Nothing is per algorithm: SCAFFOLD's control variates, FedNova's step count,
FedBN's local variables, the BatchNorm statistics pass (`algorithms._batchnorm`:
a second broadcast of the new global model, then per-channel sums up) and an
aggregator's own traffic are the intrinsics that move them. All of it is per
participating client: a round of `k` clients moves `k` times as much.

The types are what clients send. Under ``mean``, ``robust`` and ``dp`` the
update is float32 (DP clips it on the client and adds noise at the server).
Under ``compression`` (`tff.learning.compression_aggregator`:
`EncodedSumFactory.quantize_above_threshold(quantization_bits=8,
threshold=20000)`) a tensor of `n > 20000` elements travels as 8-bit levels
packed 28 bits to an int32 word (tensor_encoding's `BitpackingEncodingStage`,
varint-safe) plus its float32 min and max, `4 * ceil(8 n / 28) + 8` bytes;
smaller ones as float32. Under ``secure``, `SimulatedSecureFactory` runs TFF's
reference bodies of the secure sums, which carry each coordinate (a float
quantized to 32 bits) as an int64, 8 bytes; a cryptographic secure
aggregation would pack them and add its own masking messages, not modelled.

`RoundBytes` keeps tensors of rank >= 1 (`down`, `up`) apart from rank-0
values (`scalar_down`, `scalar_up`: client weights, metric sums, learning
rates, adaptive norms, client indices, FedNova's step count; tens of bytes a
client; the `federated_select` keys count here too). `client_state_down`, part
of `down`, is the rows of the server's per-client tables (`algorithms.
_client_state`: SCAFFOLD's `c_i`, FedBN's local variables): TFF has no client
state, so each client gets its own row every round where a deployed client
would keep it. The rows clients send back stay in `up` (SCAFFOLD's server
needs `c_i+` to update `c`; FedBN's only stores them).

Each intrinsic node counts once: TFF's tracing inlines a fresh copy of a
federated computation at every call, so a node is one call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import tensorflow_federated as tff

COLUMNS = ("bytes_down", "bytes_up", "bytes_down_cumulative", "bytes_up_cumulative")
_SELECT = ("federated_select", "federated_secure_select")


@dataclasses.dataclass(frozen=True)
class RoundBytes:
    """Bytes moved down (server to clients) and up (clients to server).

    Attributes:
        down: Tensors of rank >= 1 sent to the clients (model, control
            variates, per-client rows).
        up: Tensors of rank >= 1 the clients send (update, control variates,
            BatchNorm statistics, local variables).
        scalar_down: Rank-0 values sent to the clients.
        scalar_up: Rank-0 values the clients send, and their row requests.
        client_state_down: The part of `down` that is rows of the server's
            per-client tables (a deployed client would keep them).
    """

    down: int = 0
    up: int = 0
    scalar_down: int = 0
    scalar_up: int = 0
    client_state_down: int = 0

    def __add__(self, other: RoundBytes) -> RoundBytes:
        if not isinstance(other, RoundBytes):
            return NotImplemented
        return RoundBytes(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    def times(self, clients: int) -> RoundBytes:
        """These bytes for each of `clients` clients (or rounds): every field times `clients`."""
        _check_count(clients, "clients")
        return RoundBytes(*(getattr(self, f.name) * clients for f in dataclasses.fields(self)))

    @property
    def total_down(self) -> int:
        return self.down + self.scalar_down

    @property
    def total_up(self) -> int:
        return self.up + self.scalar_up

    def as_dict(self) -> dict[str, int]:
        """Every field and both totals, as plain ints (for summary.json)."""
        out = dataclasses.asdict(self)
        out.update(total_down=self.total_down, total_up=self.total_up)
        return out


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One intrinsic call that moves values, sized for one client.

    Attributes:
        intrinsic: Its URI, e.g. "federated_broadcast".
        bytes: What it moves for one client, split as in `RoundBytes`.
    """

    intrinsic: str
    bytes: RoundBytes


def transfers(process: tff.learning.templates.LearningProcess) -> tuple[Transfer, ...]:
    """Every intrinsic of `process`'s round that moves values, in building-block order.

    `process` is a `tff.learning.templates.LearningProcess` (the
    `next_computation` of one whose `next` converts client data first, such
    as `ClientIndexedLearningProcess`), or a TFF computation itself.

    Raises:
        TypeError: If there is no concrete TFF computation to read.
        ValueError: If a transferred value has no static size (unknown
            shapes, sequences, strings).
    """
    computation = process
    if not isinstance(process, tff.framework.ConcreteComputation):
        computation = getattr(process, "next_computation", None) or getattr(process, "next", None)
    if not isinstance(computation, tff.framework.ConcreteComputation):
        raise TypeError(
            f"expected a TFF learning process or computation, got {type(process).__name__}"
        )
    found = []
    for intrinsic in _intrinsics(computation.to_building_block()):
        moved = _transfer_bytes(intrinsic.uri, intrinsic.type_signature)
        if moved is not None:
            found.append(Transfer(intrinsic.uri, moved))
    return tuple(found)


def client_bytes(process: tff.learning.templates.LearningProcess) -> RoundBytes:
    """What one participating client receives and sends in a round of `process` (`transfers`)."""
    return sum((t.bytes for t in transfers(process)), RoundBytes())


def round_bytes(process: tff.learning.templates.LearningProcess, *, clients: int) -> RoundBytes:
    """What a round of `process` with `clients` participating clients moves, all together."""
    return client_bytes(process).times(clients)


def metrics_row(this_round: RoundBytes, cumulative: RoundBytes) -> dict[str, int]:
    """The `COLUMNS` of a metrics.csv row: `down` and `up` of this round and of all so far."""
    return {
        COLUMNS[0]: this_round.down,
        COLUMNS[1]: this_round.up,
        COLUMNS[2]: cumulative.down,
        COLUMNS[3]: cumulative.up,
    }


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _intrinsics(block) -> Iterator[tff.framework.Intrinsic]:
    stack = [block]
    while stack:
        node = stack.pop()
        if isinstance(node, tff.framework.Intrinsic):
            yield node
        stack.extend(reversed(list(node.children())))


def _placed(parameter: tff.Type | None) -> Iterator[tff.FederatedType]:
    """The federated values among an intrinsic's arguments (not inside functions)."""
    if isinstance(parameter, tff.FederatedType):
        yield parameter
    elif isinstance(parameter, tff.StructType):
        for _, element in tff.structure.iter_elements(parameter):
            yield from _placed(element)


def _transfer_bytes(uri: str, signature: tff.FunctionType) -> RoundBytes | None:
    """Bytes one client receives or sends through this intrinsic; None if it moves nothing."""
    inputs = list(_placed(signature.parameter))
    from_clients = [t.member for t in inputs if t.placement == tff.CLIENTS]
    from_server = any(t.placement == tff.SERVER for t in inputs)
    result = signature.result
    if not isinstance(result, tff.FederatedType):
        return None
    if result.placement == tff.CLIENTS and from_server:
        if uri in _SELECT:
            return _select_bytes(uri, from_clients, result.member)
        payload, scalars = _sized(result.member, uri)
        return RoundBytes(down=payload, scalar_down=scalars)
    if result.placement == tff.SERVER and from_clients:
        sizes = [_sized(member, uri) for member in from_clients]
        return RoundBytes(up=sum(p for p, _ in sizes), scalar_up=sum(s for _, s in sizes))
    return None


def _select_bytes(uri: str, from_clients: list[tff.Type], selected: tff.Type) -> RoundBytes:
    """`federated_select`: each client sends its keys and gets one element per key."""
    (keys,) = from_clients
    key_payload, key_scalars = _sized(keys, uri)
    if not isinstance(selected, tff.SequenceType) or not isinstance(keys, tff.TensorType):
        raise ValueError(f"{uri}: unexpected types {keys} -> {selected}")
    count = math.prod(keys.shape)
    payload, scalars = _sized(selected.element, uri)
    return RoundBytes(
        down=payload * count,
        scalar_down=scalars * count,
        scalar_up=key_payload + key_scalars,
        client_state_down=payload * count,
    )


def _sized(value_type: tff.Type, uri: str) -> tuple[int, int]:
    """`(bytes of tensors of rank >= 1, bytes of rank-0 tensors)` in `value_type`."""
    payload = scalars = 0
    for tensor in _tensors(value_type, uri):
        if tensor.shape is None or any(d is None for d in tensor.shape):
            raise ValueError(f"{uri} moves a tensor of unknown shape: {tensor}")
        dtype = np.dtype(tensor.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"{uri} moves {dtype} values, which have no fixed size")
        size = dtype.itemsize * math.prod(tensor.shape)
        if len(tensor.shape):
            payload += size
        else:
            scalars += size
    return payload, scalars


def _tensors(value_type: tff.Type, uri: str) -> Iterator[tff.TensorType]:
    if isinstance(value_type, tff.TensorType):
        yield value_type
    elif isinstance(value_type, tff.StructType):
        for _, element in tff.structure.iter_elements(value_type):
            yield from _tensors(element, uri)
    elif isinstance(value_type, tff.FederatedType):
        yield from _tensors(value_type.member, uri)
    else:
        raise ValueError(f"{uri} moves a {value_type}, which has no static size")


__all__: tuple[str, ...] = (
    "COLUMNS",
    "RoundBytes",
    "Transfer",
    "client_bytes",
    "metrics_row",
    "round_bytes",
    "transfers",
)
