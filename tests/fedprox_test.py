"""FedProx in TFF against an independent implementation of the paper's local objective.

FedProx (Li et al., 2020, Algorithm 2): client k minimizes
h_k(w) = F_k(w) + mu/2 ||w - w_g||^2 from the global weights w_g; the server
takes the example-weighted mean of the client models as FedAvg does. The
reference here differentiates h_k itself with `tf.GradientTape` (the proximal
term is part of the loss, not a hand-written gradient) on a fresh Keras model
over exactly the batches the TFF client receives, then averages in numpy.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized
from fl_testing import tiny_model as _tiny_model

from tff_vision.algorithms import (
    build_optimizer,
    build_process,
    keras_model,
)


class FedProxTest(fl_testing.RetinaTestCase):
    PREPROCESSING_SEED = 5

    @parameterized.named_parameters(
        ("sgd_constant", 1.0, 0.0, "constant"),
        ("momentum_cosine", 0.3, 0.9, "cosine"),
    )
    def test_rounds_match_paper_rule(self, mu, momentum, schedule_name):
        fed, client_lr, rounds = self.fed, 0.1, 2
        schedule, client_optimizer, round_lrs = fl_testing.client_sgd(
            schedule_name, client_lr, momentum, rounds
        )
        process = build_process(
            "fedprox",
            keras_model.model_fn(_tiny_model, fed.element_spec),
            client_optimizer=client_optimizer,
            client_learning_rate_fn=schedule,
            proximal_strength=mu,
        )
        for round_num, lr, weights, output, got in fl_testing.retina_rounds(
            process, fed, round_lrs
        ):
            local, counts = fl_testing.local_round(weights, fed, round_num, lr, momentum, mu)
            plain, _ = fl_testing.local_round(weights, fed, round_num, lr, momentum, 0.0)
            np.testing.assert_array_equal(counts, fed.partition.sizes)
            proximal_effect = 0.0
            for i in range(len(weights)):
                expected = fl_testing.weighted_mean([lw[i] for lw in local], counts)
                np.testing.assert_allclose(got[i], expected, rtol=2e-5, atol=2e-6)
                fedavg = fl_testing.weighted_mean([lw[i] for lw in plain], counts)
                proximal_effect = max(proximal_effect, np.abs(fedavg - expected).max())
            self.assertGreater(proximal_effect, 1e-4)  # mu changes the result measurably.
            train = output.metrics["client_work"]["train"]
            self.assertEqual(int(train["num_examples"]), counts.sum())
            if schedule is not None:
                self.assertAlmostEqual(
                    float(output.metrics["client_work"]["client_learning_rate"]), lr, places=6
                )

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
