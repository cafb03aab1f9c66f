"""FedProx in TFF against an independent implementation of the paper's local objective.

FedProx (Li et al., 2020, Algorithm 2): client k minimizes
h_k(w) = F_k(w) + mu/2 ||w - w_g||^2 from the global weights w_g; the server
takes the example-weighted mean of the client models as FedAvg does. The
reference here differentiates h_k itself with `tf.GradientTape` (the proximal
term is part of the loss, not a hand-written gradient) on a fresh Keras model
over exactly the batches the TFF client receives, then averages in numpy.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized
from fl_testing import NUM_EXAMPLES as _NUM_EXAMPLES
from fl_testing import SHARED_MEDMNIST as _SHARED
from fl_testing import local_sgd as _local_prox_sgd
from fl_testing import tiny_model as _tiny_model

from tff_vision import client_data, data, partition, runtime
from tff_vision.algorithms import (
    build_optimizer,
    build_process,
    keras_model,
    learning_rate_schedule,
)


class FedProxTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ds = data.load("retinamnist", 28, data_dir=_SHARED, allow_download=False)
        part = partition.make_partition(
            "label_exclusion", ds.train.labels[:_NUM_EXAMPLES], 3, 5, seed=0, exclude="1;2;3"
        )
        cls.sizes = part.sizes
        cls.fed = client_data.FederatedData(
            ds.train.images[:_NUM_EXAMPLES],
            ds.train.labels[:_NUM_EXAMPLES],
            part,
            client_data.Preprocessing(batch_size=8, local_epochs=1, augment="none", seed=5),
        )
        runtime.start_local_context()

    @classmethod
    def tearDownClass(cls):
        runtime.shutdown()
        super().tearDownClass()

    @parameterized.named_parameters(
        ("sgd_constant", 1.0, 0.0, "constant"),
        ("momentum_cosine", 0.3, 0.9, "cosine"),
    )
    def test_rounds_match_paper_rule(self, mu, momentum, schedule_name):
        fed, client_lr, rounds = self.fed, 0.1, 2
        schedule = learning_rate_schedule(schedule_name, client_lr, rounds=4)
        if schedule is None:
            client_optimizer = build_optimizer("sgd", client_lr, momentum)
            round_lrs = [client_lr] * rounds
        else:
            client_optimizer = lambda lr: build_optimizer("sgd", lr, momentum)  # noqa: E731
            round_lrs = [client_lr, client_lr * 0.5 * (1 + np.cos(np.pi / 4))]
        process = build_process(
            "fedprox",
            keras_model.model_fn(_tiny_model, fed.element_spec),
            client_optimizer=client_optimizer,
            client_learning_rate_fn=schedule,
            proximal_strength=mu,
        )
        init = _tiny_model(seed=7)
        state = process.set_model_weights(process.initialize(), keras_model.initial_weights(init))
        weights = init.get_weights()
        for round_num, lr in zip(range(1, rounds + 1), round_lrs):
            output = process.next(state, [fed.round_dataset(c, round_num) for c in fed.client_ids])
            state = output.state
            got = process.get_model_weights(state).trainable

            local = [
                _local_prox_sgd(weights, fed.round_dataset(c, round_num), lr, momentum, mu)
                for c in fed.client_ids
            ]
            plain = [
                _local_prox_sgd(weights, fed.round_dataset(c, round_num), lr, momentum, 0.0)
                for c in fed.client_ids
            ]
            counts = np.array([n for _, n in local], dtype=np.float64)
            np.testing.assert_array_equal(counts, self.sizes)
            proximal_effect = 0.0
            for i in range(len(weights)):
                expected = sum(c * lw[i] for c, (lw, _) in zip(counts, local)) / counts.sum()
                np.testing.assert_allclose(got[i], expected, rtol=2e-5, atol=2e-6)
                fedavg = sum(c * lw[i] for c, (lw, _) in zip(counts, plain)) / counts.sum()
                proximal_effect = max(proximal_effect, np.abs(fedavg - expected).max())
            self.assertGreater(proximal_effect, 1e-4)  # mu changes the result measurably.
            train = output.metrics["client_work"]["train"]
            self.assertEqual(int(train["num_examples"]), counts.sum())
            if schedule is not None:
                self.assertAlmostEqual(
                    float(output.metrics["client_work"]["client_learning_rate"]), lr, places=6
                )
            weights = [np.asarray(w) for w in got]

    def test_stock_tff_fed_prox_pushes_clients_away(self):
        """Why fedprox.py has its own client work: TFF 0.87's has the proximal sign flipped.

        One client, one round, from w_g = 0: a proximal term must keep the
        result nearer to w_g than mu = 0 does. TFF's build_weighted_fed_prox
        ends farther away. If this fails, TFF fixed it.
        """
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 4)).astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype(np.int64))).batch(4)

        def keras():
            inputs = tf.keras.Input((4,))
            return tf.keras.Model(
                inputs, tf.keras.layers.Dense(2, kernel_initializer="zeros")(inputs)
            )

        model_fn = keras_model.model_fn(keras, ds.element_spec)

        def distance(process):
            state = process.next(process.initialize(), [ds]).state
            return np.sqrt(
                sum(np.sum(np.square(w)) for w in process.get_model_weights(state).trainable)
            )

        sgd = build_optimizer("sgd", 0.1)
        stock = tff.learning.algorithms.build_weighted_fed_prox(model_fn, 5.0, sgd)
        keras_model.restore_eager_keras_classes()
        ours = build_process("fedprox", model_fn, client_optimizer=sgd, proximal_strength=5.0)
        no_prox = build_process("fedavg", model_fn, client_optimizer=sgd)
        baseline = distance(no_prox)
        self.assertLess(distance(ours), 0.8 * baseline)
        self.assertGreater(distance(stock), 1.2 * baseline)

    def test_needs_positive_strength(self):
        with self.assertRaisesRegex(ValueError, "proximal_strength"):
            build_process(
                "fedprox",
                keras_model.model_fn(_tiny_model, self.fed.element_spec),
                client_optimizer=build_optimizer("sgd", 0.1),
                proximal_strength=0.0,
            )


if __name__ == "__main__":
    absltest.main()
