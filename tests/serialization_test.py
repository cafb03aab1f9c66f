"""The faster executor-value serializer gives TFF's own protos, byte for byte."""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized
from fl_testing import tiny_model
from tensorflow_federated.python.core.impl.executors import value_serialization

from tff_vision import client_data, models, runtime, serialization
from tff_vision.algorithms import build_fedavg, build_optimizer, keras_model

_TFF_SERIALIZE = serialization._TFF_SERIALIZE_VALUE  # pylint: disable=protected-access


def _both(value, type_spec):
    ours, our_type = serialization.serialize_value(value, type_spec)
    theirs, their_type = _TFF_SERIALIZE(value, type_spec)
    return ours, our_type, theirs, their_type


class SerializeValueTest(parameterized.TestCase):
    def assert_same_as_tff(self, value, type_spec):
        ours, our_type, theirs, their_type = _both(value, type_spec)
        self.assertEqual(
            ours.SerializeToString(deterministic=True),
            theirs.SerializeToString(deterministic=True),
        )
        self.assertEqual(our_type, their_type)

    def test_fedavg_server_state(self):
        element_spec = client_data.element_spec((28, 28, 3))

        def build():
            return models.build_model("cnn", (28, 28, 3), 5, seed=0)

        process = build_fedavg(
            keras_model.model_fn(build, element_spec), build_optimizer("sgd", 0.1)
        )
        with runtime.local_context():
            state = process.initialize()
        self.assert_same_as_tff(state, process.next.type_signature.parameter[0])
        weights_type = process.get_model_weights.type_signature.parameter
        self.assert_same_as_tff(state, weights_type)

    @parameterized.named_parameters(
        (
            "float_matrix",
            np.arange(6, dtype=np.float32).reshape(2, 3),
            tff.TensorType(np.float32, [2, 3]),
        ),
        ("int_vector", np.arange(4, dtype=np.int64), tff.TensorType(np.int64, [4])),
        ("unknown_dim", np.ones(5, np.float32), tff.TensorType(np.float32, [None])),
        ("scalar", np.float32(2.5), tff.TensorType(np.float32)),
        ("python_list", [1.0, 2.0], tff.TensorType(np.float32, [2])),
        ("string", "abc", tff.TensorType(np.str_)),
    )
    def test_tensors(self, value, type_spec):
        self.assert_same_as_tff(value, type_spec)

    def test_named_and_nested_structs(self):
        value = collections.OrderedDict(
            a=np.ones((2, 2), np.float32), b=[np.int32(3), np.zeros(3, np.int32)]
        )
        type_spec = tff.StructType(
            [
                ("a", tff.TensorType(np.float32, [2, 2])),
                ("b", tff.StructType([tff.TensorType(np.int32), tff.TensorType(np.int32, [3])])),
            ]
        )
        self.assert_same_as_tff(value, type_spec)
        self.assert_same_as_tff([], tff.StructType([]))

    def test_federated_values(self):
        member = tff.TensorType(np.float32, [3])
        clients = [np.full(3, i, np.float32) for i in range(4)]
        self.assert_same_as_tff(clients, tff.FederatedType(member, tff.CLIENTS))
        self.assert_same_as_tff(clients[0], tff.FederatedType(member, tff.SERVER))

    def test_datasets_go_through_tff(self):
        # A dataset's graph serializes differently from call to call (even TFF's own
        # twice), so compare what comes back out.
        dataset = tf.data.Dataset.range(5).batch(2)
        type_spec = tff.SequenceType(tff.TensorType(np.int64, [None]))
        ours, our_type = serialization.serialize_value(dataset, type_spec)
        self.assertEqual(ours.WhichOneof("value"), "sequence")
        self.assertEqual(our_type, type_spec)
        back, _ = value_serialization.deserialize_value(ours, type_spec)
        self.assertEqual([b.numpy().tolist() for b in back], [[0, 1], [2, 3], [4]])

    @parameterized.named_parameters(
        ("shape", np.ones((2, 2), np.float32), tff.TensorType(np.float32, [3])),
        ("dtype", np.ones(3, np.float64), tff.TensorType(np.int32, [3])),
        ("struct_length", [np.ones(3, np.float32)], tff.StructType([np.float32, np.float32])),
    )
    def test_refuses_what_tff_refuses(self, value, type_spec):
        with self.assertRaises(TypeError):
            _TFF_SERIALIZE(value, type_spec)
        with self.assertRaises(TypeError):
            serialization.serialize_value(value, type_spec)


class InstalledTest(absltest.TestCase):
    def test_contexts_install_it_and_computations_agree(self):
        element_spec = client_data.element_spec((28, 28, 3))
        process = build_fedavg(
            keras_model.model_fn(lambda: tiny_model(seed=0), element_spec),
            build_optimizer("sgd", 0.1),
        )
        with runtime.local_context():
            self.assertTrue(serialization.installed())
            self.assertIs(value_serialization.serialize_value, serialization.serialize_value)
            fast = process.get_model_weights(process.initialize())
            serialization.uninstall()
            try:
                slow = process.get_model_weights(process.initialize())
            finally:
                serialization.install()
        for a, b in zip(tf.nest.flatten(fast), tf.nest.flatten(slow)):
            np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    absltest.main()
