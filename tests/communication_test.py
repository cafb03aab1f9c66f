"""Bytes per round read off the TFF computations, against counts made from the Keras models.

Every expectation is worked out here from the Keras model's weights (element
counts times 4 bytes for float32) or from the quantization rule of
`tff.learning.compression_aggregator`, not from the module under test. One
ResNet-18 process is built (tracing it takes most of this file's time); the
other properties use small models.
"""

import math

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest

from tff_vision import aggregators, communication, models
from tff_vision.algorithms import build_optimizer, build_process, keras_model

_CLIENTS = 3
_F32 = 4


def _elements(weights):
    return sum(tf.keras.backend.count_params(w) for w in weights)


def _sgd():
    return build_optimizer("sgd", 0.1, 0.0)


def _fedavg(model_fn, **kwargs):
    return build_process("fedavg", model_fn, client_optimizer=_sgd(), **kwargs)


def _wide_model():
    """8x8x1 -> flatten -> dense 400 (a 25600-element kernel, over the 20000 threshold) -> 3."""
    inputs = tf.keras.Input(fl_testing.SMALL_SHAPE)
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(400, activation="relu", name="wide")(x)
    outputs = tf.keras.layers.Dense(fl_testing.SMALL_CLASSES, name="dense")(x)
    return tf.keras.Model(inputs, outputs)


def _quantized_bytes(elements: int) -> int:
    """One float32 tensor through the compression aggregator, worked out from its rule.

    Tensors of more than 20000 elements are quantized to 8 bits and
    bit-packed 28 bits to an int32 word (tensor_encoding's bitpacking stage),
    with their min and max as two float32; smaller tensors go as float32.
    """
    if elements > 20000:
        return 4 * math.ceil(8 * elements / 28) + 2 * _F32
    return _F32 * elements


class ResNet18Test(absltest.TestCase):
    def test_fedavg_sends_the_parameters_both_ways_per_client(self):
        def build():
            return models.build_model("resnet18", (28, 28, 3), 5, norm="group", seed=0)

        keras = build()
        self.assertEmpty(keras.non_trainable_weights)  # GroupNorm: the model is its parameters.
        params = _elements(keras.trainable_weights)
        self.assertEqual(params, models.count_params(keras)[0])
        element_spec = (
            tf.TensorSpec([None, 28, 28, 3], tf.float32),
            tf.TensorSpec([None], tf.int64),
        )
        process = _fedavg(keras_model.model_fn(build, element_spec, skip_random_init=True))
        got = communication.round_bytes(process, clients=_CLIENTS)
        self.assertEqual(got.down, params * _F32 * _CLIENTS)
        self.assertEqual(got.up, params * _F32 * _CLIENTS)
        self.assertEqual(got.client_state_down, 0)
        # The client weight and metric sums up, the learning rate down: a few scalars.
        self.assertBetween(got.scalar_up, _CLIENTS * _F32, _CLIENTS * 100)
        self.assertBetween(got.scalar_down, 1, 100)


class AlgorithmsTest(absltest.TestCase):
    """Small models: SCAFFOLD, FedNova, compression (`_wide_model`), BatchNorm and FedBN."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        wide = keras_model.model_fn(_wide_model, fl_testing.small_element_spec())
        norm = fl_testing.small_model_fn(norm=True)
        cls.fedavg = communication.client_bytes(_fedavg(wide))
        cls.scaffold = communication.client_bytes(
            build_process(
                "scaffold",
                wide,
                client_optimizer=_sgd(),
                client_learning_rate=0.1,
                num_clients=_CLIENTS,
            )
        )
        cls.fednova = communication.client_bytes(
            build_process("fednova", wide, client_optimizer=_sgd(), client_learning_rate=0.1)
        )
        cls.compressed = communication.client_bytes(
            _fedavg(wide, model_aggregator=aggregators.build_aggregator("compression"))
        )
        cls.batchnorm = communication.client_bytes(_fedavg(norm))
        cls.fedbn = communication.client_bytes(
            build_process("fedbn", norm, client_optimizer=_sgd(), num_clients=_CLIENTS)
        )

    def test_fedavg_on_the_wide_model(self):
        params = _elements(_wide_model().trainable_weights)
        self.assertEqual((self.fedavg.down, self.fedavg.up), (params * _F32, params * _F32))

    def test_scaffold_sends_twice_fedavg_plus_the_simulated_client_state(self):
        # Up: the update and c_i+. Down: the model and c, plus the client's own c_i from the
        # server's table, which a deployed client would keep: 2x FedAvg without it.
        self.assertEqual(self.scaffold.up, 2 * self.fedavg.up)
        self.assertEqual(self.scaffold.client_state_down, self.fedavg.down)
        self.assertEqual(self.scaffold.down - self.scaffold.client_state_down, 2 * self.fedavg.down)

    def test_fednova_adds_only_its_step_count(self):
        self.assertEqual((self.fednova.down, self.fednova.up), (self.fedavg.down, self.fedavg.up))
        self.assertGreaterEqual(self.fednova.scalar_up, self.fedavg.scalar_up + _F32)

    def test_batchnorm_adds_the_statistics_pass(self):
        keras = fl_testing.small_model(norm=True)
        trainable = _elements(keras.trainable_weights)
        model = trainable + _elements(keras.non_trainable_weights)
        channels = keras.get_layer("norm").moving_mean.shape.num_elements()
        # Down: the model to train, then the new global model to compute statistics on.
        self.assertEqual(self.batchnorm.down, 2 * model * _F32)
        # Up: the update, then per channel the sums of deviations and of squares.
        self.assertEqual(self.batchnorm.up, (trainable + 2 * channels) * _F32)

    def test_fedbn_keeps_local_variables_out_of_the_aggregate_but_not_out_of_the_broadcast(self):
        keras = fl_testing.small_model(norm=True)
        layer = keras.get_layer("norm")
        local = _elements(layer.weights)  # gamma, beta, moving mean and variance
        shared = _elements(keras.trainable_weights) - _elements(layer.trainable_weights)
        model = _elements(keras.weights)
        # The broadcast is the whole global model (its normalization starts a first-time
        # client); each client also gets its own local variables from the server's table.
        self.assertEqual(self.fedbn.client_state_down, local * _F32)
        self.assertEqual(self.fedbn.down, (model + local) * _F32)
        # Up: the shared update, the local variables for their mean, and again for the table.
        self.assertEqual(self.fedbn.up, (shared + 2 * local) * _F32)

    def test_compression_sends_the_quantized_update(self):
        sizes = [w.shape.num_elements() for w in _wide_model().trainable_weights]
        self.assertGreater(max(sizes), 20000)
        self.assertEqual(self.compressed.up, sum(_quantized_bytes(n) for n in sizes))
        self.assertLess(self.compressed.up, self.fedavg.up)  # the mean's float32 update
        self.assertEqual(self.compressed.down, self.fedavg.down)


class SizingTest(absltest.TestCase):
    def test_dtypes_shapes_and_scalars_of_a_computation(self):
        server_type = tff.types.StructType(
            [tff.TensorType(np.float32, [10]), tff.TensorType(np.int64)]
        )
        client_type = tff.types.StructType(
            [tff.TensorType(np.float64, [3]), tff.TensorType(np.int8, [5]), np.bool_]
        )

        @tff.federated_computation(
            tff.FederatedType(server_type, tff.SERVER), tff.FederatedType(client_type, tff.CLIENTS)
        )
        def comp(server_value, client_value):
            return tff.federated_broadcast(server_value), tff.federated_sum(client_value[0])

        self.assertEqual(
            communication.client_bytes(comp),
            communication.RoundBytes(down=40, scalar_down=8, up=24),
        )

        @tff.federated_computation(tff.FederatedType(client_type, tff.CLIENTS))
        def aggregate(client_value):
            return tff.federated_aggregate(
                client_value,
                np.int32(0),
                tff.tensorflow.computation(lambda a, v: a + 1, (np.int32, client_type)),
                tff.tensorflow.computation(lambda a, b: a + b, (np.int32, np.int32)),
                tff.tensorflow.computation(lambda a: a, np.int32),
            )

        self.assertEqual(
            communication.client_bytes(aggregate), communication.RoundBytes(up=29, scalar_up=1)
        )

    def test_unknown_sizes_are_refused(self):
        @tff.federated_computation(
            tff.FederatedType(tff.TensorType(np.float32, [None]), tff.SERVER)
        )
        def comp(value):
            return tff.federated_broadcast(value)

        with self.assertRaisesRegex(ValueError, "unknown shape"):
            communication.client_bytes(comp)
        with self.assertRaises(TypeError):
            communication.client_bytes(object())

    def test_round_bytes_arithmetic_and_metrics_row(self):
        one = communication.RoundBytes(down=10, up=7, scalar_down=1, scalar_up=2)
        three = one.times(3)
        self.assertEqual((three.down, three.up, three.total_down, three.total_up), (30, 21, 33, 27))
        self.assertEqual(one + one, one.times(2))
        self.assertEqual(three.as_dict()["total_up"], 27)
        self.assertEqual(
            communication.metrics_row(three, three + three),
            dict(bytes_down=30, bytes_up=21, bytes_down_cumulative=60, bytes_up_cumulative=42),
        )
        for bad in (-1, 1.5, True):
            with self.assertRaises(ValueError):
                one.times(bad)


if __name__ == "__main__":
    absltest.main()
