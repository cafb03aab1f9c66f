"""FedNova in TFF against an independent plain-Keras/numpy implementation.

FedNova (Wang et al., 2020): client i runs tau_i local steps of SGD (momentum
rho: v <- rho v + g, y <- y - lr v) from the global weights x and is summarized
by a_i = tau_i (rho = 0) or [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho),
d_i = (x - y_i) / a_i. With p_i = n_i / sum n_j and tau_eff = sum p_i a_i the
server sets x <- x - server_lr * tau_eff * sum p_i d_i. Local training is done
by hand with `tf.GradientTape` on a fresh Keras model over exactly the batches
the TFF client receives, the rest in numpy.
"""

from __future__ import annotations

import asyncio
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized

from tff_vision import runtime
from tff_vision.algorithms import _client_loops, fednova, keras_model

_SHAPE = (8, 8, 1)
_CLASSES = 3
_SIZES = (5, 9, 14)
_EPOCHS = 2  # Examples 10, 18, 28 in batches of 4: tau = 3, 5, 7 local steps.
_BATCH = 4


def _tiny_model(seed: int = 0) -> tf.keras.Model:
    inputs = tf.keras.Input(_SHAPE)
    x = tf.keras.layers.Conv2D(4, 3, kernel_initializer=tf.keras.initializers.GlorotUniform(seed))(
        inputs
    )
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(
        _CLASSES, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 1)
    )(x)
    return tf.keras.Model(inputs, outputs)


def _element_spec():
    return (
        tf.TensorSpec([None, *_SHAPE], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )


def _datasets(seed: int = 0) -> list[tf.data.Dataset]:
    rng = np.random.default_rng(seed)
    datasets = []
    for k, n in enumerate(_SIZES):
        images = rng.normal(k, 1.0 + k, (n, *_SHAPE)).astype(np.float32)
        labels = rng.integers(0, _CLASSES, n).astype(np.int64)
        datasets.append(
            tf.data.Dataset.from_tensor_slices((images, labels)).repeat(_EPOCHS).batch(_BATCH)
        )
    return datasets


def _local_sgdm(weights, dataset, lr, momentum):
    """Plain-Keras local SGD(M); returns (y, tau, examples)."""
    model = _tiny_model()
    model.set_weights(weights)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    velocity = [np.zeros_like(w) for w in weights]
    tau = examples = 0
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for i, (var, g) in enumerate(zip(model.trainable_variables, grads)):
            velocity[i] = momentum * velocity[i] + g.numpy()
            var.assign(var.numpy() - lr * velocity[i])
        tau += 1
        examples += int(x.shape[0])
    return model.get_weights(), tau, examples


def _fednova_round(weights, datasets, lr, momentum, server_lr):
    """FedNova's server update in numpy; returns (new x, tau_eff, FedAvg's new x)."""
    local = [_local_sgdm(weights, ds, lr, momentum) for ds in datasets]
    n = np.array([e for _, _, e in local], np.float64)
    p = n / n.sum()
    taus = np.array([t for _, t, _ in local], np.float64)
    if momentum == 0:
        a = taus
    else:
        a = (taus - momentum * (1 - momentum**taus) / (1 - momentum)) / (1 - momentum)
    tau_eff = float(np.sum(p * a))
    new, fedavg = [], []
    for v, x in enumerate(weights):
        d = [(x - y[v]) / a_i for (y, _, _), a_i in zip(local, a)]
        new.append(x - server_lr * tau_eff * sum(p_i * d_i for p_i, d_i in zip(p, d)))
        fedavg.append(x - server_lr * sum(p_i * (x - y[v]) for p_i, (y, _, _) in zip(p, local)))
    return new, tau_eff, fedavg, taus


class FedNovaTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        runtime.start_local_context()

    @classmethod
    def tearDownClass(cls):
        runtime.shutdown()
        super().tearDownClass()

    def _build(self, lr, momentum, server_lr):
        return fednova.build_fednova(
            keras_model.model_fn(_tiny_model, _element_spec()),
            lr,
            tff.learning.optimizers.build_sgdm(server_lr),
            client_momentum=momentum,
        )

    @parameterized.named_parameters(
        ("sgd", 0.1, 0.0, 1.0),
        ("momentum_server_lr", 0.05, 0.9, 0.7),
    )
    def test_two_rounds_match_reference(self, lr, momentum, server_lr):
        process = self._build(lr, momentum, server_lr)
        init = _tiny_model(seed=7)
        state = process.set_model_weights(process.initialize(), keras_model.initial_weights(init))
        weights = init.get_weights()
        datasets = _datasets()
        for _ in range(2):
            output = process.next(state, datasets)
            state = output.state
            expected, tau_eff, fedavg, taus = _fednova_round(
                weights, datasets, lr, momentum, server_lr
            )
            np.testing.assert_array_equal(taus, [3, 5, 7])
            actual = process.get_model_weights(state).trainable
            for a, e in zip(actual, expected):
                np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=2e-6)
            self.assertAlmostEqual(
                float(output.metrics["aggregator"]["effective_local_steps"]), tau_eff, places=5
            )
            train = output.metrics["client_work"]["train"]
            self.assertEqual(int(train["num_examples"]), _EPOCHS * sum(_SIZES))
            self.assertIn("loss", train)
            self.assertIn("accuracy", train)
            # Teeth: with different tau_i, FedNova is not FedAvg.
            gap = max(np.abs(f - e).max() for f, e in zip(fedavg, expected))
            self.assertGreater(gap, 1e-3)
            weights = [np.asarray(w) for w in actual]

    def test_state_survives_checkpoint(self):
        process = fednova.build_fednova(
            keras_model.model_fn(_tiny_model, _element_spec()),
            0.1,
            tff.learning.optimizers.build_sgdm(0.5, momentum=0.9),  # Server momentum state.
        )
        datasets = _datasets()
        state = process.next(process.initialize(), datasets).state
        with tempfile.TemporaryDirectory() as root:
            manager = tff.program.FileProgramStateManager(root, prefix="round_")
            asyncio.run(manager.save(state, 1))
            loaded = asyncio.run(manager.load(1, process.initialize()))
        from_memory = process.next(state, datasets).state
        from_disk = process.next(loaded, datasets).state
        flat_memory = _client_loops.flatten_state(from_memory)
        self.assertNotEmpty(_client_loops.flatten_state(state.finalizer))
        for a, b in zip(_client_loops.flatten_state(from_disk), flat_memory):
            np.testing.assert_array_equal(a, b)

    def test_normalizer(self):
        self.assertEqual(float(fednova.normalizer(tf.constant(4, tf.int64), 0.0)), 4.0)
        rho, tau = 0.5, 3
        # Gradient k of tau enters with weight sum_{j < tau - k} rho^j: 1.75 + 1.5 + 1.
        self.assertAlmostEqual(float(fednova.normalizer(tf.constant(tau), rho)), 4.25, places=6)


if __name__ == "__main__":
    absltest.main()
