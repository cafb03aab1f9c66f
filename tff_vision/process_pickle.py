"""Pickling of built TFF processes, so that one process can build and another run them.

A built learning process is Python objects around `tff.Computation`s. Python's
pickle handles the objects; this module adds how to write what it cannot:
a computation goes as its serialized proto plus its type signature (the
signature carries the Python containers, such as `ModelWeights`, that the
proto's type lacks), and TFF's types, placements and `Struct`s are rebuilt
through their constructors, which intern them and compare them by value.

The computations loaded are byte for byte those dumped, so they run exactly
as the originals (tested). Only pickles made by `dumps` in a process of ours
are meant for `loads`: pickle runs code, and so loads no file from elsewhere.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from tensorflow_federated.proto.v0 import computation_pb2
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.computation import computation_impl
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.types import computation_types, placements

_T = computation_types


def dumps(obj: Any) -> bytes:
    """`obj` pickled, its TFF computations and types included."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """The object `dumps` pickled, with its computations bound to TFF's context stack."""
    return pickle.loads(data)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):  # pylint: disable=too-many-return-statements
        if isinstance(obj, computation_impl.ConcreteComputation):
            proto = computation_impl.ConcreteComputation.get_proto(obj)
            return _computation, (proto.SerializeToString(), obj.type_signature)
        if isinstance(obj, placements.PlacementLiteral):
            return placements.uri_to_placement_literal, (obj.uri,)
        if isinstance(obj, _T.TensorType):
            return _T.TensorType, (obj.dtype, obj.shape)
        if isinstance(obj, _T.FederatedType):
            return _T.FederatedType, (obj.member, obj.placement, obj.all_equal)
        if isinstance(obj, _T.FunctionType):
            return _T.FunctionType, (obj.parameter, obj.result)
        if isinstance(obj, _T.SequenceType):
            return _T.SequenceType, (obj.element,)
        if isinstance(obj, _T.StructWithPythonType):
            return _T.StructWithPythonType, (_elements(obj), obj.python_container)
        if isinstance(obj, _T.StructType):
            return _T.StructType, (_elements(obj),)
        if isinstance(obj, _T.AbstractType):
            return _T.AbstractType, (obj.label,)
        if isinstance(obj, _T.PlacementType):
            return _T.PlacementType, ()
        if isinstance(obj, structure.Struct):
            return structure.Struct, (_elements(obj),)
        return NotImplemented


def _elements(struct) -> list:
    return list(structure.iter_elements(struct))


def _computation(proto: bytes, type_signature) -> computation_impl.ConcreteComputation:
    return computation_impl.ConcreteComputation(
        computation_proto=computation_pb2.Computation.FromString(proto),
        context_stack=context_stack_impl.context_stack,
        annotated_type=type_signature,
    )
