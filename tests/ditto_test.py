"""Ditto in TFF against an independent plain-Keras/numpy implementation.

Ditto (Li et al., 2021): the global model trains as FedAvg (w <- w - server_lr *
sum_i p_i (w - w_i)); client k's personal model v_k (the global model before
its first round) takes, over the same batches, SGD steps
v <- v - lr (g_k(v) + lambda (v - w)) with w the round's broadcast model.
Local steps are done by hand with `tf.GradientTape` on a fresh Keras model,
the rest in numpy, for lambda = 0 and a strong lambda (lr * lambda = 1).
lambda = 0 must give plain local SGD from v_k; the strong lambda must hold
v_k next to w.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest
from fl_testing import SMALL_SIZES as _SIZES

from tff_vision.algorithms import ditto, registry

_SERVER_LR = 0.7
_LR = 0.1
# A strong pull: lr * lambda = 1, so that every step sets v <- w - lr g(v), forgetting v_k.
_STRONG_LR = 0.01
_STRONG = 100.0


def _personal_sgd(start, anchor, dataset, lr, lam):
    """Ditto's personal steps on a Keras model: v -= lr * (g(v) + lam * (v - anchor))."""
    model = fl_testing.small_model()
    model.set_weights(start)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for var, grad, a in zip(model.trainable_variables, grads, anchor):
            v = var.numpy()
            var.assign(v - lr * (grad.numpy() + lam * (v - a)))
    return model.get_weights()


class DittoReference:
    """Ditto's update rule in numpy: FedAvg on w, a personal model per client."""

    def __init__(self, weights, num_clients, lam, lr):
        self.w = [np.array(x) for x in weights]
        self.personal = [None] * num_clients
        self.lam, self.lr = lam, lr

    def client_model(self, k):
        return self.w if self.personal[k] is None else self.personal[k]

    def round(self, datasets: dict[int, tf.data.Dataset]) -> list[np.ndarray]:
        """One round on `{client: dataset}`; returns the broadcast model it started from."""
        broadcast = self.w
        local = {
            k: fl_testing.local_sgd(broadcast, ds, self.lr, build=fl_testing.small_model)
            for k, ds in datasets.items()
        }
        n = np.array([seen for _, seen in local.values()], np.float64)
        mean_update = [
            fl_testing.weighted_mean([x - final[v] for final, _ in local.values()], n)
            for v, x in enumerate(broadcast)
        ]
        for k, ds in datasets.items():
            self.personal[k] = _personal_sgd(self.client_model(k), broadcast, ds, self.lr, self.lam)
        self.w = [x - _SERVER_LR * u for x, u in zip(broadcast, mean_update)]
        return broadcast


def _build(lam, lr=_LR):
    return ditto.build_ditto(
        fl_testing.small_model_fn(),
        lr,
        tff.learning.optimizers.build_sgdm(_SERVER_LR),
        num_clients=len(_SIZES),
        ditto_lambda=lam,
    )


class DittoTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.local = _build(0.0)
        cls.strong = _build(_STRONG, _STRONG_LR)

    def _rounds(self, process, lam, lr):
        """Clients {2, 0}, then all; checks each round against `DittoReference`."""
        init = fl_testing.small_model(seed=7)
        state = fl_testing.initial_state(process, init)
        ref = DittoReference(init.get_weights(), len(_SIZES), lam, lr)
        datasets = fl_testing.small_datasets()
        broadcasts = []
        for clients in ((2, 0), (0, 1, 2)):
            output = process.next(state, [(k, datasets[k]) for k in clients])
            state = output.state
            broadcasts.append(ref.round({k: datasets[k] for k in clients}))
            own = registry.client_models(process, state)
            fl_testing.assert_all_close(process.get_model_weights(state).trainable, ref.w)
            for k in range(len(_SIZES)):
                fl_testing.assert_all_close(own[k].trainable, ref.client_model(k), f"v_{k}")
        return state, ref, broadcasts

    def test_matches_reference_and_strong_lambda_holds_to_the_global_model(self):
        state, ref, broadcasts = self._rounds(self.strong, _STRONG, _STRONG_LR)
        np.testing.assert_array_equal(state.client_work["participations"], [2, 1, 2])
        local_state, _, local_broadcasts = self._rounds(self.local, 0.0, _LR)

        def distance(process, state, broadcast):
            return max(
                np.abs(a - b).max()
                for own in process.client_models(state)
                for a, b in zip(own.trainable, broadcast)
            )

        strong = distance(self.strong, state, broadcasts[-1])
        alone = distance(self.local, local_state, local_broadcasts[-1])
        # With lr * lambda = 1, v_k ends one gradient step (lr |g|, |g| < 1 here) from w,
        # where local training alone (lambda = 0) ends over ten times as far.
        self.assertLess(strong, _STRONG_LR, msg=(strong, alone))
        self.assertLess(strong, 0.1 * alone, msg=(strong, alone))

    def test_zero_lambda_is_local_training_from_the_personal_model(self):
        init = fl_testing.small_model(seed=7)
        state = fl_testing.initial_state(self.local, init)
        datasets = fl_testing.small_datasets()
        state = self.local.next(state, [(0, datasets[0])]).state
        v0 = self.local.client_models(state)[0].trainable
        expected, _ = fl_testing.local_sgd(
            init.get_weights(), datasets[0], _LR, build=fl_testing.small_model
        )
        fl_testing.assert_all_close(v0, expected, "round 1: local SGD from w")
        state = self.local.next(state, datasets).state
        expected, _ = fl_testing.local_sgd(
            [np.asarray(v) for v in v0], datasets[0], _LR, build=fl_testing.small_model
        )
        own = self.local.client_models(state)
        fl_testing.assert_all_close(own[0].trainable, expected, "round 2: local SGD from v_0")
        # Teeth: the global model moved on; the personal one did not follow it.
        global_weights = self.local.get_model_weights(state).trainable
        self.assertGreater(
            max(np.abs(a - b).max() for a, b in zip(own[0].trainable, global_weights)), 1e-3
        )

    def test_state_survives_checkpoint(self):
        state = fl_testing.initial_state(self.strong, fl_testing.small_model(seed=7))
        datasets = fl_testing.small_datasets()
        state = self.strong.next(state, [(1, datasets[1])]).state
        loaded = fl_testing.checkpoint_roundtrip(self.strong, state)
        fl_testing.assert_states_equal(loaded, state)
        fl_testing.assert_states_equal(
            self.strong.next(loaded, datasets).state, self.strong.next(state, datasets).state
        )

    def test_refuses_negative_lambda(self):
        with self.assertRaisesRegex(ValueError, "ditto_lambda must be >= 0"):
            _build(-0.1)


if __name__ == "__main__":
    absltest.main()
