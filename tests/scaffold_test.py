"""SCAFFOLD in TFF against an independent plain-Keras/numpy implementation.

SCAFFOLD (Karimireddy et al., 2020), option II: client i starts from the
global weights x and takes one step per batch y <- y - lr * (g(y) - c_i + c);
after K steps c_i+ = c_i - c + (x - y) / (K lr). The server sets
x <- x + server_lr * mean_i (y_i - x) and c <- c + sum_i (c_i+ - c_i) / N.
Here the local steps are done by hand with `tf.GradientTape` on a fresh Keras
model over exactly the batches the TFF client receives, and the rest in numpy.
"""

import fl_testing
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl.testing import absltest
from fl_testing import SMALL_SIZES as _SIZES

from tff_vision.algorithms import _client_state, scaffold

# With batches of 4, the clients take K = 2, 3, 4 local steps.
_CLIENT_LR = 0.1
_SERVER_LR = 0.8


def _local_scaffold(weights, dataset, c, c_i, lr):
    """Plain-Keras local SCAFFOLD steps; returns (y, c_i+, steps)."""
    model = fl_testing.small_model()
    model.set_weights(weights)
    correction = [cc - cci for cc, cci in zip(c, c_i)]
    steps, _ = fl_testing.train_keras(model, dataset, lr, correction=correction)
    y_final = model.get_weights()
    c_i_plus = [
        cci - cc + (xw - yw) / np.float32(steps * lr)
        for cci, cc, xw, yw in zip(c_i, c, weights, y_final)
    ]
    return y_final, c_i_plus, steps


class ScaffoldReference:
    """SCAFFOLD's update rule in numpy (the paper's Algorithm 1, option II)."""

    def __init__(self, weights, num_clients, client_lr, server_lr):
        self.x = [np.array(w) for w in weights]
        self.c = [np.zeros_like(w) for w in weights]
        self.c_i = [[np.zeros_like(w) for w in weights] for _ in range(num_clients)]
        self.num_clients, self.client_lr, self.server_lr = num_clients, client_lr, server_lr

    def round(self, datasets: dict[int, tf.data.Dataset]) -> list[np.ndarray]:
        """Runs one round on `{client_index: dataset}`; returns the FedAvg-style mean y."""
        ys, dcs = [], []
        for i, ds in datasets.items():
            y, c_plus, _ = _local_scaffold(self.x, ds, self.c, self.c_i[i], self.client_lr)
            ys.append(y)
            dcs.append([a - b for a, b in zip(c_plus, self.c_i[i])])
            self.c_i[i] = c_plus
        mean_y = [np.mean([y[v] for y in ys], axis=0) for v in range(len(self.x))]
        self.x = [x + self.server_lr * (m - x) for x, m in zip(self.x, mean_y)]
        self.c = [c + sum(dc[v] for dc in dcs) / self.num_clients for v, c in enumerate(self.c)]
        return mean_y


class ScaffoldTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.process = scaffold.build_scaffold(
            fl_testing.small_model_fn(),
            _CLIENT_LR,
            tff.learning.optimizers.build_sgdm(_SERVER_LR),
            num_clients=len(_SIZES),
        )

    def _initial(self):
        init = fl_testing.small_model(seed=7)
        return fl_testing.initial_state(self.process, init), init.get_weights()

    def _datasets(self):
        return fl_testing.small_datasets()

    def test_two_rounds_match_reference(self):
        state, weights = self._initial()
        ref = ScaffoldReference(weights, len(_SIZES), _CLIENT_LR, _SERVER_LR)
        datasets = self._datasets()

        # Round 1, full participation: client i is datasets[i].
        output = self.process.next(state, datasets)
        state = output.state
        x_before = [np.array(w) for w in ref.x]
        mean_y = ref.round(dict(enumerate(datasets)))
        # With c = c_i = 0 the first round is unweighted FedAvg.
        fedavg = [x + _SERVER_LR * (m - x) for x, m in zip(x_before, mean_y)]
        fl_testing.assert_all_close(
            self.process.get_model_weights(state).trainable, fedavg, "fedavg"
        )
        self._assert_state(state, ref)
        train = output.metrics["client_work"]["train"]
        self.assertEqual(int(train["num_examples"]), sum(_SIZES))
        self.assertIn("loss", train)
        self.assertIn("accuracy", train)

        # Round 2, partial participation, out of order: clients 2 and 0.
        c1_before = [np.asarray(t)[1] for t in state.client_work[scaffold.CLIENT_CONTROL_VARIATES]]
        output = self.process.next(state, [(2, datasets[2]), (0, datasets[0])])
        state = output.state
        x_before = [np.array(w) for w in ref.x]
        ref.round({2: datasets[2], 0: datasets[0]})
        self._assert_state(state, ref)
        self.assertEqual(
            int(output.metrics["client_work"]["train"]["num_examples"]), _SIZES[0] + _SIZES[2]
        )
        table = state.client_work[scaffold.CLIENT_CONTROL_VARIATES]
        for column, expected in zip(table, c1_before):  # Absent client keeps its c_i.
            np.testing.assert_array_equal(np.asarray(column)[1], expected)

        # Teeth: the control variates matter. Plain (unweighted) FedAvg from the
        # same round-2 start lands measurably elsewhere.
        fedavg_ys = []
        for i in (2, 0):
            y, _, _ = _local_scaffold(
                x_before,
                datasets[i],
                [np.zeros_like(w) for w in x_before],
                [np.zeros_like(w) for w in x_before],
                _CLIENT_LR,
            )
            fedavg_ys.append(y)
        gap = max(
            np.abs(x + _SERVER_LR * (np.mean([y[v] for y in fedavg_ys], axis=0) - x) - r).max()
            for v, (x, r) in enumerate(zip(x_before, ref.x))
        )
        self.assertGreater(gap, 1e-3)

    def _assert_state(self, state, ref):
        fl_testing.assert_all_close(self.process.get_model_weights(state).trainable, ref.x, "x")
        fl_testing.assert_all_close(state.client_work[scaffold.CONTROL_VARIATE], ref.c, "c")
        table = state.client_work[scaffold.CLIENT_CONTROL_VARIATES]
        for i, expected in enumerate(ref.c_i):
            fl_testing.assert_all_close([np.asarray(t)[i] for t in table], expected, f"c_{i}")
        self.assertGreater(max(np.abs(c).max() for c in ref.c), 1e-3)  # c is not trivially 0.

    def test_state_survives_checkpoint(self):
        state, _ = self._initial()
        datasets = self._datasets()
        state = self.process.next(state, datasets).state
        loaded = fl_testing.checkpoint_roundtrip(self.process, state)
        fl_testing.assert_states_equal(loaded, state)
        fl_testing.assert_states_equal(
            self.process.next(loaded, datasets).state, self.process.next(state, datasets).state
        )

    def test_client_data_forms(self):
        datasets = self._datasets()
        with self.assertRaisesRegex(ValueError, "pairs for partial participation"):
            _client_state.indexed_client_data(datasets[:2], 3)
        with self.assertRaisesRegex(ValueError, "no client data"):
            _client_state.indexed_client_data([], 3)
        with self.assertRaisesRegex(ValueError, "repeated"):
            _client_state.indexed_client_data([(0, datasets[0]), (0, datasets[1])], 3)
        with self.assertRaisesRegex(ValueError, "out of range"):
            _client_state.indexed_client_data([(3, datasets[0])], 3)
        indexed = _client_state.indexed_client_data({1: datasets[1]}, 3)
        self.assertEqual(int(indexed[0][_client_state.CLIENT_INDEX].get_single_element()), 1)
        self.assertIsInstance(self.process, tff.learning.templates.LearningProcess)
        self.assertIsInstance(self.process.next, tff.Computation)


if __name__ == "__main__":
    absltest.main()
