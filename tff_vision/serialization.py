"""Faster serialization of the values TFF sends to its executor service.

Every call of a TFF computation on the C++ runtime serializes its argument in
Python (`value_serialization.serialize_value`) before sending it to the
`worker_binary` over gRPC. For a learning process that argument is the whole
server state, every round, and `get_model_weights` sends it once more.
TFF 0.87 builds struct and federated values bottom-up: each level serializes
its children into protos of their own and then constructs its message from
them, which copies every tensor's bytes again at every level of nesting. For
a ResNet-18 FedAvg state (45 MB, five levels deep) that takes ~0.9 s on the
machine measured, against ~0.03 s for writing each tensor straight into its
final place in one message, which is what `serialize_value` here does. The
protos are byte for byte the ones TFF builds (tested); values of any other
kind (computations, datasets, scalars, strings, Python sequences) go through
TFF's own serializer unchanged.

`install()` makes TFF's remote executor (used by every context in
`tff_vision.runtime`) use it; `uninstall()` restores TFF's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.compiler import array
from tensorflow_federated.python.core.impl.executors import value_serialization
from tensorflow_federated.python.core.impl.types import (
    array_shape,
    computation_types,
    dtype_utils,
    type_serialization,
)

_TFF_SERIALIZE_VALUE = value_serialization.serialize_value


def serialize_value(
    value: Any, type_spec: computation_types.Type | None = None
) -> tuple[executor_pb2.Value, Any]:
    """Drop-in for TFF's `value_serialization.serialize_value` (same result, fewer copies)."""
    if not isinstance(
        type_spec,
        (
            computation_types.StructType,
            computation_types.FederatedType,
            computation_types.TensorType,
        ),
    ):
        return _TFF_SERIALIZE_VALUE(value, type_spec)
    proto = executor_pb2.Value()
    result_type = _serialize_into(proto, value, type_spec)
    return proto, result_type


def install() -> None:
    """Makes TFF serialize executor values with `serialize_value` (idempotent)."""
    value_serialization.serialize_value = serialize_value


def uninstall() -> None:
    """Restores TFF's own `serialize_value`."""
    value_serialization.serialize_value = _TFF_SERIALIZE_VALUE


def installed() -> bool:
    return value_serialization.serialize_value is serialize_value


def _serialize_into(target: executor_pb2.Value, value: Any, type_spec) -> Any:
    """Writes `value` of type `type_spec` into the empty `target`; returns the value's type."""
    if isinstance(type_spec, computation_types.TensorType) and _is_dense_array(value, type_spec):
        # What TFF's `_serialize_tensor_value` does for a non-scalar numeric array.
        if not array.is_compatible_shape(value, type_spec.shape):
            raise TypeError(
                f"Failed to serialize a value with shape {value.shape} to shape {type_spec.shape}."
            )
        dtype = type_spec.dtype.type
        if not array.is_compatible_dtype(value, dtype):
            raise TypeError(
                f"Failed to serialize a value of dtype {value.dtype.type} to dtype {dtype}."
            )
        value = np.asarray(value, dtype)
        target.array.dtype = dtype_utils.to_proto(dtype)
        target.array.shape.CopyFrom(array_shape.to_proto(value.shape))
        target.array.content = value.tobytes()
        return type_spec
    if isinstance(type_spec, computation_types.StructType):
        elements = structure.from_container(value)
        if len(elements) != len(type_spec):
            raise TypeError(
                f"Cannot serialize a struct value of {len(elements)} elements to a struct type "
                f"requiring {len(type_spec)} elements. Trying to serialize\n{value!r}\n"
                f"to\n{type_spec}."
            )
        target.struct.SetInParent()
        for (name, element_type), (_, element_value) in zip(
            structure.iter_elements(type_spec), structure.iter_elements(elements)
        ):
            element = target.struct.element.add()
            if name:
                element.name = name
            _serialize_into(element.value, element_value, element_type)
        return type_spec
    if isinstance(type_spec, computation_types.FederatedType):
        members = [value] if type_spec.all_equal else value
        if not isinstance(members, list):
            raise TypeError(f"Expected a list of member values, found {type(members).__name__}.")
        target.federated.SetInParent()
        for member in members:
            member_type = _serialize_into(target.federated.value.add(), member, type_spec.member)
            type_spec.member.check_assignable_from(member_type)
        target.federated.type.CopyFrom(type_serialization.serialize_type(type_spec).federated)
        return type_spec
    proto, result_type = _TFF_SERIALIZE_VALUE(value, type_spec)
    target.CopyFrom(proto)
    return result_type


def _is_dense_array(value: Any, type_spec: computation_types.TensorType) -> bool:
    """A numeric, non-scalar numpy array (TFF sends its raw bytes as `content`)."""
    return (
        isinstance(value, np.ndarray)
        and type_spec.dtype.type is not np.str_
        and not array_shape.is_shape_scalar(type_spec.shape)
    )
