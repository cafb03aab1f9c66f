"""FedAvg in TFF against an independent plain-Keras/numpy implementation.

One round of FedAvg (McMahan et al., 2017): every client starts from the
global weights w, runs local SGD over its round dataset, and the server sets
w' = w + server_lr * (sum_k n_k w_k / sum_k n_k - w), n_k = examples trained
on. Here each client's local training is done by hand with `tf.GradientTape`
on a fresh Keras model over exactly the batches the TFF client receives, and
the average is taken in numpy.
"""

import fl_testing
import numpy as np
from absl.testing import absltest, parameterized
from fl_testing import tiny_model as _tiny_model

from tff_vision import client_data, models
from tff_vision.algorithms import (
    build_fedavg,
    build_optimizer,
    keras_model,
)


class FedAvgOneRoundTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.arrays = fl_testing.retina_arrays()

    @parameterized.named_parameters(
        ("sgd_one_epoch", 0.1, 0.0, 1, 1.0, "none", "constant"),
        ("momentum_two_epochs_augment", 0.05, 0.9, 2, 1.0, "flip", "constant"),
        # The fundus pipeline's ops (rotation, brightness, contrast) run in TFF's worker too.
        ("fundus_augment", 0.1, 0.0, 1, 1.0, "fundus", "constant"),
        ("server_lr_half", 0.1, 0.0, 1, 0.5, "none", "constant"),
        ("cosine_schedule", 0.1, 0.0, 1, 1.0, "none", "cosine"),
        # As the runner builds it: the model inside TFF skips its random initializers.
        ("skip_random_init", 0.1, 0.0, 1, 1.0, "none", "constant", True),
        ("label_smoothing", 0.1, 0.0, 1, 1.0, "none", "constant", False, 0.1),
    )
    def test_rounds_equal_weighted_mean_of_local_training(
        self,
        client_lr,
        momentum,
        local_epochs,
        server_lr,
        augment,
        schedule_name,
        skip_random_init=False,
        label_smoothing=0.0,
    ):
        fed = fl_testing.retina_federated(
            3, arrays=self.arrays, local_epochs=local_epochs, augment=augment
        )
        part = fed.partition
        # Uneven client sizes make the example weighting matter.
        self.assertGreater(len(set(part.sizes)), 1)
        rounds = 2
        schedule, client_optimizer, round_lrs = fl_testing.client_sgd(
            schedule_name, client_lr, momentum, rounds
        )
        process = build_fedavg(
            keras_model.model_fn(
                _tiny_model,
                fed.element_spec,
                skip_random_init=skip_random_init,
                label_smoothing=label_smoothing,
            ),
            client_optimizer,
            build_optimizer("sgd", server_lr),
            client_learning_rate_fn=schedule,
        )
        for round_num, lr, weights, output, tff_weights in fl_testing.retina_rounds(
            process, fed, round_lrs
        ):
            local, counts = fl_testing.local_round(
                weights, fed, round_num, lr, momentum, label_smoothing=label_smoothing
            )
            np.testing.assert_array_equal(counts, np.array(part.sizes) * local_epochs)
            unweighted_gap = 0.0
            for i, w in enumerate(weights):
                mean = fl_testing.weighted_mean([lw[i] for lw in local], counts)
                expected = w + server_lr * (mean - w)
                np.testing.assert_allclose(tff_weights[i], expected, rtol=2e-5, atol=2e-6)
                unweighted = w + server_lr * (np.mean([lw[i] for lw in local], axis=0) - w)
                unweighted_gap = max(unweighted_gap, np.abs(unweighted - expected).max())
            # The check has teeth: the unweighted mean is measurably different.
            self.assertGreater(unweighted_gap, 1e-4)
            self.assertEqual(
                int(output.metrics["client_work"]["train"]["num_examples"]), counts.sum()
            )

    def test_skip_random_init_zeroes_only_randomly_initialized_weights(self):
        spec = client_data.element_spec((28, 28, 3))

        def build():
            return models.build_model("cnn", (28, 28, 3), 5, norm="group", seed=0)

        process = build_fedavg(
            keras_model.model_fn(build, spec, skip_random_init=True), build_optimizer("sgd", 0.1)
        )
        initial = process.get_model_weights(process.initialize()).trainable
        for variable, value in zip(build().trainable_variables, initial):
            name = variable.name
            if "kernel" in name or "logits" in name or "beta" in name or "bias" in name:
                np.testing.assert_array_equal(value, 0.0, err_msg=name)
            else:
                self.assertIn("gamma", name)
                np.testing.assert_array_equal(value, 1.0, err_msg=name)

    def test_seeded_initialization_is_shared_with_baselines(self):
        """The same seed builds identical weights, which the process then carries."""
        a = models.build_model("cnn", (28, 28, 3), 5, seed=11)
        b = models.build_model("cnn", (28, 28, 3), 5, seed=11)
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)
        spec = client_data.element_spec((28, 28, 3))
        process = build_fedavg(
            keras_model.model_fn(lambda: models.build_model("cnn", (28, 28, 3), 5), spec),
            build_optimizer("sgd", 0.1),
        )
        state = process.set_model_weights(process.initialize(), keras_model.initial_weights(a))
        for x, y in zip(process.get_model_weights(state).trainable, a.get_weights()):
            np.testing.assert_array_equal(x, y)


if __name__ == "__main__":
    absltest.main()
