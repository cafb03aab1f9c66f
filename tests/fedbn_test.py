"""FedBN in TFF against an independent plain-Keras/numpy implementation.

FedBN (Li et al., 2021): FedAvg on every weight except the normalization
layers', whose parameters (gamma, beta) and statistics (moving mean and
variance) stay with each client. Client i starts from the global shared
weights and its own normalization variables (a first-time client from the
global model's), trains with SGD (BatchNorm in training mode, so the moving
statistics move too) and keeps its final normalization variables. The server
sets shared w <- w - server_lr * sum_i p_i (w - w_i), p_i = n_i / sum n_j,
and, for reporting, the global normalization variables to sum_i p_i b_i.
Local training is done by hand with `tf.GradientTape` on a fresh Keras model
over exactly the batches the TFF client receives, the rest in numpy.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest, parameterized
from fl_testing import SMALL_SIZES as _SIZES

from tff_vision import aggregators, models
from tff_vision.algorithms import fedbn, keras_model

_CLIENT_LR = 0.1
_SERVER_LR = 0.7
# Positions of the BatchNorm variables in Keras' (and TFF's) variable lists.
_LOCAL_TRAINABLE = (2, 3)  # norm/gamma, norm/beta
_LOCAL_NON_TRAINABLE = (0, 1)  # norm/moving_mean, norm/moving_variance


def _bn_model(seed: int = 0, norm: bool = True) -> tf.keras.Model:
    return fl_testing.small_model(seed, norm=norm)


def _datasets() -> list[tf.data.Dataset]:
    """Clients with different feature distributions (FedBN's setting) and sizes."""
    return fl_testing.small_datasets(spread=2.0)


def _local_sgd(trainable, non_trainable, dataset, lr):
    """Plain-Keras local SGD; returns (trainable, non_trainable, examples)."""
    model = _bn_model()
    for var, value in zip(model.trainable_variables, trainable):
        var.assign(value)
    for var, value in zip(model.non_trainable_variables, non_trainable):
        var.assign(value)
    _, examples = fl_testing.train_keras(model, dataset, lr)
    return (
        [v.numpy() for v in model.trainable_variables],
        [v.numpy() for v in model.non_trainable_variables],
        examples,
    )


def _with_local(values, slots, local):
    values = [np.array(v) for v in values]
    for slot, value in zip(slots, local):
        values[slot] = np.array(value)
    return values


class FedBNReference:
    """FedBN's update rule in numpy, with per-client normalization variables."""

    def __init__(self, trainable, non_trainable, num_clients):
        self.trainable = [np.array(w) for w in trainable]
        self.non_trainable = [np.array(w) for w in non_trainable]
        self.local = [None] * num_clients  # (local trainable, local non-trainable) per client

    def client_weights(self, i, share_norm=False):
        """Client i's starting point: global shared weights, own normalization if any."""
        if self.local[i] is None or share_norm:
            return self.trainable, self.non_trainable
        local_tr, local_nt = self.local[i]
        return (
            _with_local(self.trainable, _LOCAL_TRAINABLE, local_tr),
            _with_local(self.non_trainable, _LOCAL_NON_TRAINABLE, local_nt),
        )

    def round(self, datasets: dict[int, tf.data.Dataset], share_norm=False):
        """One round on `{client_index: dataset}`; `share_norm` gives FedAvg instead."""
        results = {
            i: _local_sgd(*self.client_weights(i, share_norm), ds, _CLIENT_LR)
            for i, ds in datasets.items()
        }
        n = np.array([e for _, _, e in results.values()], np.float64)
        p = n / n.sum()
        trainable = []
        for v, x in enumerate(self.trainable):
            finals = [tr[v] for tr, _, _ in results.values()]
            if v in _LOCAL_TRAINABLE:
                trainable.append(sum(p_i * f for p_i, f in zip(p, finals)))
            else:
                trainable.append(x - _SERVER_LR * sum(p_i * (x - f) for p_i, f in zip(p, finals)))
        non_trainable = [
            sum(p_i * nt[v] for p_i, (_, nt, _) in zip(p, results.values()))
            if v in _LOCAL_NON_TRAINABLE
            else x
            for v, x in enumerate(self.non_trainable)
        ]
        self.trainable, self.non_trainable = trainable, non_trainable
        for i, (tr, nt, _) in results.items():
            self.local[i] = (
                [tr[s] for s in _LOCAL_TRAINABLE],
                [nt[s] for s in _LOCAL_NON_TRAINABLE],
            )
        return int(n.sum())


class FedBNTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.process = fedbn.build_fedbn(
            fl_testing.small_model_fn(norm=True),
            tff.learning.optimizers.build_sgdm(_CLIENT_LR),
            tff.learning.optimizers.build_sgdm(_SERVER_LR),
            num_clients=len(_SIZES),
            local_layer_names=models.normalization_layer_names(_bn_model()),
        )

    def _initial(self):
        init = _bn_model(seed=7)
        return fl_testing.initial_state(self.process, init), init

    def test_local_slots(self):
        self.assertEqual(self.process.local_trainable_slots, _LOCAL_TRAINABLE)
        self.assertEqual(self.process.local_non_trainable_slots, _LOCAL_NON_TRAINABLE)
        model = _bn_model()
        names = [v.name for v in model.trainable_variables]
        self.assertEqual(fedbn.local_variable_slots(names), _LOCAL_TRAINABLE)
        with self.assertRaisesRegex(ValueError, "no normalization variables"):
            fedbn.build_fedbn_client_work(
                fl_testing.small_model_fn(norm=False),
                tff.learning.optimizers.build_sgdm(0.1),
                num_clients=2,
            )
        keras_model.restore_eager_keras_classes()

    def test_two_rounds_match_reference(self):
        state, init = self._initial()
        ref = FedBNReference(
            [v.numpy() for v in init.trainable_variables],
            [v.numpy() for v in init.non_trainable_variables],
            len(_SIZES),
        )
        datasets = _datasets()

        # Round 1: clients 1 and 0 only (client 2 has not taken part yet).
        output = self.process.next(state, [(1, datasets[1]), (0, datasets[0])])
        state = output.state
        examples = ref.round({1: datasets[1], 0: datasets[0]})
        self.assertEqual(int(output.metrics["client_work"]["train"]["num_examples"]), examples)
        self._assert_matches(state, ref)
        np.testing.assert_array_equal(state.client_work[fedbn.PARTICIPATIONS], [1, 1, 0])

        # Round 2: everyone, in index order; client 2 starts from the global
        # model's (averaged) normalization, clients 0 and 1 from their own.
        shared_norm = FedBNReference(ref.trainable, ref.non_trainable, len(_SIZES))
        output = self.process.next(state, datasets)
        state = output.state
        examples = ref.round(dict(enumerate(datasets)))
        train = output.metrics["client_work"]["train"]
        self.assertEqual(int(train["num_examples"]), examples)
        self.assertIn("loss", train)
        self.assertIn("accuracy", train)
        self._assert_matches(state, ref)
        np.testing.assert_array_equal(state.client_work[fedbn.PARTICIPATIONS], [2, 2, 1])

        # Teeth: local normalization really is local: the clients' statistics
        # differ, and averaging it instead (FedAvg) moves the shared weights.
        means = [
            fedbn.client_model_weights(self.process, state, i).non_trainable[0]
            for i in range(len(_SIZES))
        ]
        self.assertGreater(
            min(np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i)), 1e-2
        )
        shared_norm.round(dict(enumerate(datasets)), share_norm=True)
        gap = max(
            np.abs(a - b).max()
            for k, (a, b) in enumerate(zip(shared_norm.trainable, ref.trainable))
            if k not in _LOCAL_TRAINABLE
        )
        self.assertGreater(gap, 1e-4)

    def _assert_matches(self, state, ref):
        weights = self.process.get_model_weights(state)
        fl_testing.assert_all_close(weights.trainable, ref.trainable, "global trainable")
        fl_testing.assert_all_close(
            weights.non_trainable, ref.non_trainable, "global non-trainable"
        )
        for i in range(len(_SIZES)):
            client = fedbn.client_model_weights(self.process, state, i)
            expected_tr, expected_nt = ref.client_weights(i)
            fl_testing.assert_all_close(client.trainable, expected_tr, f"client {i} trainable")
            fl_testing.assert_all_close(
                client.non_trainable, expected_nt, f"client {i} non-trainable"
            )

    @parameterized.parameters("robust", "compression")
    def test_the_aggregator_sees_only_the_shared_update(self, name):
        """Clipping (norm 1 at first) must not touch the absolute normalization variables."""
        process = fedbn.build_fedbn(
            fl_testing.small_model_fn(norm=True),
            tff.learning.optimizers.build_sgdm(_CLIENT_LR),
            tff.learning.optimizers.build_sgdm(_SERVER_LR),
            num_clients=len(_SIZES),
            model_aggregator=aggregators.build_aggregator(name).factory,
        )
        init = _bn_model(seed=7)
        ref = FedBNReference(
            [v.numpy() for v in init.trainable_variables],
            [v.numpy() for v in init.non_trainable_variables],
            len(_SIZES),
        )
        datasets = _datasets()
        output = process.next(fl_testing.initial_state(process, init), datasets)
        ref.round(dict(enumerate(datasets)))
        weights = process.get_model_weights(output.state)
        # Their plain weighted mean (the gammas alone have norm 2, above the clip norm).
        fl_testing.assert_all_close(weights.non_trainable, ref.non_trainable, "statistics")
        fl_testing.assert_all_close(
            [weights.trainable[i] for i in _LOCAL_TRAINABLE],
            [ref.trainable[i] for i in _LOCAL_TRAINABLE],
            "gamma, beta",
        )
        # The shared updates are below the clip norm, so the round is plain FedBN.
        self.assertEqual(output.metrics["aggregator"]["zeroing"]["clipped_count"], 0)
        fl_testing.assert_all_close(weights.trainable, ref.trainable, "all trainable")

    def test_state_survives_checkpoint(self):
        state, _ = self._initial()
        datasets = _datasets()
        state = self.process.next(state, [(2, datasets[2]), (0, datasets[0])]).state
        loaded = fl_testing.checkpoint_roundtrip(self.process, state)
        for i in range(len(_SIZES)):
            fl_testing.assert_states_equal(
                fedbn.client_model_weights(self.process, loaded, i),
                fedbn.client_model_weights(self.process, state, i),
            )
        fl_testing.assert_states_equal(
            self.process.next(loaded, datasets).state, self.process.next(state, datasets).state
        )


if __name__ == "__main__":
    absltest.main()
