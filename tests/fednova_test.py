"""FedNova in TFF against an independent plain-Keras/numpy implementation.

FedNova (Wang et al., 2020): client i runs tau_i local steps of SGD (momentum
rho: v <- rho v + g, y <- y - lr v) from the global weights x and is summarized
by a_i = tau_i (rho = 0) or [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho),
d_i = (x - y_i) / a_i. With p_i = n_i / sum n_j and tau_eff = sum p_i a_i the
server sets x <- x - server_lr * tau_eff * sum p_i d_i. Local training is done
by hand with `tf.GradientTape` on a fresh Keras model over exactly the batches
the TFF client receives, the rest in numpy.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized

from tff_vision import aggregators
from tff_vision.algorithms import fednova

_EPOCHS = 2  # Examples 10, 18, 28 in batches of 4: tau = 3, 5, 7 local steps.


def _datasets():
    return fl_testing.small_datasets(epochs=_EPOCHS)


def _local_sgdm(weights, dataset, lr, momentum):
    """Plain-Keras local SGD(M); returns (y, tau, examples)."""
    model = fl_testing.small_model()
    model.set_weights(weights)
    tau, examples = fl_testing.train_keras(model, dataset, lr, momentum)
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


class FedNovaTest(fl_testing.LocalContextTestCase):
    def _build(self, lr, momentum, server_lr):
        return fednova.build_fednova(
            fl_testing.small_model_fn(),
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
        init = fl_testing.small_model(seed=7)
        state = fl_testing.initial_state(process, init)
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
            self.assertEqual(int(train["num_examples"]), _EPOCHS * sum(fl_testing.SMALL_SIZES))
            self.assertIn("loss", train)
            self.assertIn("accuracy", train)
            # Teeth: with different tau_i, FedNova is not FedAvg.
            gap = max(np.abs(f - e).max() for f, e in zip(fedavg, expected))
            self.assertGreater(gap, 1e-3)
            weights = [np.asarray(w) for w in actual]

    @parameterized.parameters("robust", "compression", "secure")
    def test_the_aggregator_sees_only_the_normalized_update(self, name):
        """Clipping must not touch the step counts a_i = 3, 5, 7.

        robust and compression clip to L2 norm 1 at first; secure summation
        clips each weighted value n_i a_i to its range, 50 at first.
        """
        factory = aggregators.build_aggregator(name).factory
        process = fednova.build_fednova(fl_testing.small_model_fn(), 0.1, model_aggregator=factory)
        init = fl_testing.small_model(seed=7)
        datasets = _datasets()
        output = process.next(fl_testing.initial_state(process, init), datasets)
        expected, tau_eff, _, _ = _fednova_round(init.get_weights(), datasets, 0.1, 0.0, 1.0)
        self.assertAlmostEqual(
            float(output.metrics["aggregator"]["effective_local_steps"]), tau_eff, places=5
        )
        # The normalized updates are below the clip norm, so the round is plain FedNova.
        if name != "secure":
            self.assertEqual(output.metrics["aggregator"]["mean"]["zeroing"]["clipped_count"], 0)
        fl_testing.assert_all_close(process.get_model_weights(output.state).trainable, expected)

    def test_state_survives_checkpoint(self):
        process = fednova.build_fednova(
            fl_testing.small_model_fn(),
            0.1,
            tff.learning.optimizers.build_sgdm(0.5, momentum=0.9),  # Server momentum state.
        )
        datasets = _datasets()
        state = process.next(process.initialize(), datasets).state
        loaded = fl_testing.checkpoint_roundtrip(process, state)
        self.assertNotEmpty(tf.nest.flatten(state.finalizer))
        fl_testing.assert_states_equal(
            process.next(loaded, datasets).state, process.next(state, datasets).state
        )

    def test_normalizer(self):
        self.assertEqual(float(fednova.normalizer(tf.constant(4, tf.int64), 0.0)), 4.0)
        rho, tau = 0.5, 3
        # Gradient k of tau enters with weight sum_{j < tau - k} rho^j: 1.75 + 1.5 + 1.
        self.assertAlmostEqual(float(fednova.normalizer(tf.constant(tau), rho)), 4.25, places=6)


if __name__ == "__main__":
    absltest.main()
