"""FedPer and FedRep in TFF against an independent plain-Keras/numpy implementation.

Both split the model into a shared body and a head (the last Dense layer) that
each client keeps. Client i starts from the global body and its own head (a
first-time client from the global model's head), trains, and keeps its final
head; the server sets body w <- w - server_lr * sum_i p_i (w - w_i),
p_i = n_i / sum n_j, and the global head (a first-time client's start) to
sum_i p_i h_i. FedPer trains body and head together; FedRep first the head
alone (body frozen) for `head_epochs` passes, then the body alone (head
frozen). Local training is done by hand with `tf.GradientTape` on a fresh
Keras model (freezing by `layer.trainable`), the rest in numpy.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest
from fl_testing import SMALL_SIZES as _SIZES

from tff_vision import models
from tff_vision.algorithms import fedper, fedrep, registry

_CLIENT_LR = 0.1
_SERVER_LR = 0.7
_HEAD = (2, 3)  # dense/kernel, dense/bias among conv/kernel, conv/bias, dense/kernel, dense/bias.
_HEAD_EPOCHS = 2


def _train_fedper(model, dataset):
    _, seen = fl_testing.train_keras(model, dataset, _CLIENT_LR)
    return seen


def _train_part(model, dataset, head):
    """Trains only the head (or only the body) of the Keras `model`."""
    for layer in model.layers:
        layer.trainable = (layer.name == "dense") == head
    _, seen = fl_testing.train_keras(model, dataset, _CLIENT_LR)
    for layer in model.layers:
        layer.trainable = True  # Restores the order of get_weights().
    return seen


def _train_fedrep(model, dataset):
    _train_part(model, dataset.repeat(_HEAD_EPOCHS), head=True)
    return _train_part(model, dataset, head=False)


def _train_body_then_head(model, dataset):
    """The wrong order, for the teeth of the FedRep test."""
    seen = _train_part(model, dataset, head=False)
    _train_part(model, dataset.repeat(_HEAD_EPOCHS), head=True)
    return seen


class SplitReference:
    """FedPer's update rule in numpy, with a head per client; `train` is the local training."""

    def __init__(self, weights, num_clients, train):
        self.weights = [np.array(w) for w in weights]
        self.heads = [None] * num_clients
        self.train = train

    def client_weights(self, i):
        """Client i's model: the global body with its own head, or the global head."""
        weights = list(self.weights)
        if self.heads[i] is not None:
            for slot, value in zip(_HEAD, self.heads[i]):
                weights[slot] = value
        return weights

    def round(self, datasets: dict[int, tf.data.Dataset]) -> int:
        finals, seen = {}, {}
        for i, ds in datasets.items():
            model = fl_testing.small_model()
            model.set_weights(self.client_weights(i))
            seen[i] = self.train(model, ds)
            finals[i] = model.get_weights()
        n = np.array([seen[i] for i in datasets], np.float64)
        p = n / n.sum()
        weights = []
        for v, x in enumerate(self.weights):
            ends = [finals[i][v] for i in datasets]
            if v in _HEAD:
                weights.append(sum(p_i * f for p_i, f in zip(p, ends)))
            else:
                weights.append(x - _SERVER_LR * sum(p_i * (x - f) for p_i, f in zip(p, ends)))
        self.weights = weights
        for i in datasets:
            self.heads[i] = [finals[i][s] for s in _HEAD]
        return int(n.sum())


class _SplitTestCase(fl_testing.LocalContextTestCase):
    TRAIN = staticmethod(_train_fedper)

    def _initial(self):
        init = fl_testing.small_model(seed=7)
        return fl_testing.initial_state(self.process, init), init.get_weights()

    def _two_rounds(self):
        """Runs clients {1, 0}, then all; checks every round against the reference."""
        state, weights = self._initial()
        ref = SplitReference(weights, len(_SIZES), self.TRAIN)
        datasets = fl_testing.small_datasets()
        output = self.process.next(state, [(1, datasets[1]), (0, datasets[0])])
        examples = ref.round({1: datasets[1], 0: datasets[0]})
        self.assertEqual(int(output.metrics["client_work"]["train"]["num_examples"]), examples)
        self._assert_matches(output.state, ref)
        np.testing.assert_array_equal(output.state.client_work["participations"], [1, 1, 0])
        # Round 2: client 2 starts from the global (mean) head, 0 and 1 from their own.
        before = SplitReference(ref.weights, len(_SIZES), self.TRAIN)
        before.heads = list(ref.heads)
        output = self.process.next(output.state, datasets)
        ref.round(dict(enumerate(datasets)))
        self._assert_matches(output.state, ref)
        return output.state, ref, before

    def _assert_matches(self, state, ref):
        weights = self.process.get_model_weights(state)
        fl_testing.assert_all_close(weights.trainable, ref.weights, "global model")
        own = registry.client_models(self.process, state)
        self.assertLen(own, len(_SIZES))
        for i, client in enumerate(own):
            fl_testing.assert_all_close(client.trainable, ref.client_weights(i), f"client {i}")


class FedPerTest(_SplitTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.process = fedper.build_fedper(
            fl_testing.small_model_fn(),
            tff.learning.optimizers.build_sgdm(_CLIENT_LR),
            tff.learning.optimizers.build_sgdm(_SERVER_LR),
            num_clients=len(_SIZES),
        )

    def test_head_is_the_last_dense_layer(self):
        self.assertEqual(self.process.local_trainable_slots, _HEAD)
        self.assertEqual(self.process.local_non_trainable_slots, ())
        cnn = models.build_model("cnn", (28, 28, 1), 5)  # Dense fc1, then Dense logits.
        self.assertEqual(fedper.head_layer_names(cnn), ["logits"])
        inputs = tf.keras.Input((3,))
        nested = tf.keras.Model(inputs, tf.keras.layers.Dense(2, name="inner_head")(inputs))
        outer = tf.keras.Model(inputs, nested(tf.keras.layers.Dense(3, name="body")(inputs)))
        self.assertEqual(fedper.head_layer_names(outer), ["inner_head"])
        with self.assertRaisesRegex(ValueError, "no Dense layer"):
            fedper.head_layer_names(tf.keras.Model(inputs, tf.keras.layers.ReLU()(inputs)))

    def test_heads_stay_with_their_clients(self):
        state, ref, before = self._two_rounds()
        heads = [w.trainable[2] for w in self.process.client_models(state)]
        self.assertGreater(
            min(np.abs(heads[i] - heads[j]).max() for i, j in ((0, 1), (1, 2))), 1e-3
        )
        # Teeth: a round of plain FedAvg (heads averaged into everyone's start) differs.
        fedavg = SplitReference(before.weights, len(_SIZES), _train_fedper)
        fedavg.round(dict(enumerate(fl_testing.small_datasets())))
        gap = max(np.abs(a - b).max() for a, b in zip(fedavg.weights[:2], ref.weights[:2]))
        self.assertGreater(gap, 1e-4)

    def test_state_survives_checkpoint(self):
        state, _ = self._initial()
        datasets = fl_testing.small_datasets()
        state = self.process.next(state, [(2, datasets[2]), (0, datasets[0])]).state
        loaded = fl_testing.checkpoint_roundtrip(self.process, state)
        fl_testing.assert_states_equal(loaded, state)
        fl_testing.assert_states_equal(
            self.process.next(loaded, datasets).state, self.process.next(state, datasets).state
        )


class FedRepTest(_SplitTestCase):
    TRAIN = staticmethod(_train_fedrep)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.process = fedrep.build_fedrep(
            fl_testing.small_model_fn(),
            tff.learning.optimizers.build_sgdm(_CLIENT_LR),
            tff.learning.optimizers.build_sgdm(_SERVER_LR),
            num_clients=len(_SIZES),
            head_epochs=_HEAD_EPOCHS,
        )

    def test_head_then_body_matches_reference(self):
        state, _, before = self._two_rounds()
        # Teeth: the other order, and joint training (FedPer), end elsewhere.
        weights = self.process.get_model_weights(state).trainable
        for train in (_train_body_then_head, _train_fedper):
            other = SplitReference(before.weights, len(_SIZES), train)
            other.heads = list(before.heads)
            other.round(dict(enumerate(fl_testing.small_datasets())))
            gap = max(np.abs(a - np.asarray(b)).max() for a, b in zip(other.weights, weights))
            self.assertGreater(gap, 1e-4, msg=train.__name__)

    def test_refuses_bad_head_epochs(self):
        with self.assertRaisesRegex(ValueError, "head_epochs must be an integer >= 1"):
            fedrep.build_fedrep(fl_testing.small_model_fn(), 0.1, num_clients=3, head_epochs=0)


if __name__ == "__main__":
    absltest.main()
