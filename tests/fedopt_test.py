"""FedOpt (FedAvgM, FedAdam, FedYogi, FedAdagrad) in TFF against numpy server optimizers.

Each round: clients run plain local SGD from the global weights x (done here
by hand with `tf.GradientTape` on a fresh Keras model); the server forms the
example-weighted mean pseudo-gradient Delta = mean_k n_k (x - y_k) / sum n_k and
steps its optimizer, written out in numpy from the formulas of Reddi et al.
(2021) in TFF's variants (`tff.learning.optimizers`: Adam and Yogi with bias
correction, epsilon outside the square root; heavy-ball SGD v = m v + Delta).
"""

import fl_testing
import numpy as np
from absl.testing import absltest, parameterized
from fl_testing import tiny_model as _tiny_model

from tff_vision.algorithms import (
    build_optimizer,
    build_process,
    fedopt,
    keras_model,
    server_optimizer_spec,
)


class NumpyServer:
    """The server optimizers of Reddi et al. (2021) as TFF implements them, in float64."""

    def __init__(self, spec, shapes):
        self.spec, self.t = spec, 0
        self.m = [np.zeros(s) for s in shapes]  # momentum / first moment
        initial_v = {"adam": 0.0, "yogi": spec.epsilon**2, "adagrad": spec.epsilon**2}
        self.v = [np.full(s, initial_v.get(spec.name, 0.0)) for s in shapes]

    def step(self, x, delta):
        s, self.t = self.spec, self.t + 1
        out = []
        for i, (w, g) in enumerate(zip(x, delta)):
            if s.name == "sgd":
                self.m[i] = s.momentum * self.m[i] + g
                out.append(w - s.learning_rate * self.m[i])
            elif s.name == "adagrad":
                self.v[i] = self.v[i] + g**2
                out.append(w - s.learning_rate * g / np.sqrt(self.v[i]))
            else:
                self.m[i] = s.beta1 * self.m[i] + (1 - s.beta1) * g
                if s.name == "adam":
                    self.v[i] = s.beta2 * self.v[i] + (1 - s.beta2) * g**2
                else:  # Yogi: v <- v - (1 - beta2) g^2 sign(v - g^2)
                    self.v[i] = self.v[i] + (1 - s.beta2) * np.sign(g**2 - self.v[i]) * g**2
                lr = s.learning_rate * np.sqrt(1 - s.beta2**self.t) / (1 - s.beta1**self.t)
                out.append(w - lr * self.m[i] / (np.sqrt(self.v[i]) + s.epsilon))
        return out


class FedOptTest(fl_testing.RetinaTestCase):
    PREPROCESSING_SEED = 2

    @parameterized.named_parameters(
        ("fedavgm", "fedavgm", dict(server_momentum=0.5, server_lr=0.7)),
        ("fedadam", "fedadam", dict(server_lr=0.03, server_beta2=0.95)),
        ("fedyogi", "fedyogi", dict(server_lr=0.02, server_epsilon=1e-2)),
        ("fedadagrad", "fedadagrad", dict(server_lr=0.05)),
    )
    def test_two_rounds_match_numpy_server_optimizer(self, algorithm, flags):
        fed, client_lr = self.fed, 0.1
        spec = server_optimizer_spec(algorithm, **flags)
        process = build_process(
            algorithm,
            keras_model.model_fn(_tiny_model, fed.element_spec),
            client_optimizer=build_optimizer("sgd", client_lr),
            server_optimizer=spec,
        )
        server = NumpyServer(spec, [w.shape for w in _tiny_model().get_weights()])
        for round_num, lr, start, _, got in fl_testing.retina_rounds(process, fed, [client_lr] * 2):
            x = [w.astype(np.float64) for w in start]
            local, counts = fl_testing.local_round(start, fed, round_num, lr)
            delta = [
                fl_testing.weighted_mean([w - lw[i] for lw in local], counts)
                for i, w in enumerate(x)
            ]
            expected = server.step(x, delta)
            fedavg = [w - d for w, d in zip(x, delta)]
            for i in range(len(x)):
                np.testing.assert_allclose(got[i], expected[i], rtol=1e-4, atol=1e-5)
            # The server optimizer matters: plain FedAvg lands elsewhere.
            gap = max(np.abs(f - e).max() for f, e in zip(fedavg, expected))
            self.assertGreater(gap, 1e-3)


class ServerOptimizerSpecTest(absltest.TestCase):
    def test_fedopt_defaults_apply_only_to_untouched_values(self):
        self.assertEqual(server_optimizer_spec("fedavgm").momentum, fedopt.DEFAULT_FEDAVGM_MOMENTUM)
        self.assertEqual(server_optimizer_spec("fedavgm", server_momentum=0.5).momentum, 0.5)
        adam = server_optimizer_spec("fedadam")
        self.assertEqual((adam.name, adam.learning_rate), ("adam", 0.01))
        self.assertEqual(server_optimizer_spec("fedadam", server_lr=0.1).learning_rate, 0.1)
        self.assertEqual(server_optimizer_spec("fedyogi", server_optimizer="yogi").name, "yogi")
        # FedAvg keeps its flags as given: with server adam it is FedAdam at that rate.
        plain = server_optimizer_spec("fedavg", server_optimizer="adam", server_lr=1.0)
        self.assertEqual((plain.name, plain.learning_rate), ("adam", 1.0))
        self.assertEqual(server_optimizer_spec("fedavg").momentum, 0.0)

    def test_contradicting_server_optimizer_is_refused(self):
        with self.assertRaisesRegex(ValueError, "drop --server_optimizer=yogi"):
            server_optimizer_spec("fedadam", server_optimizer="yogi")
        with self.assertRaisesRegex(ValueError, "runs server sgd"):
            server_optimizer_spec("fedavgm", server_optimizer="adam")


if __name__ == "__main__":
    absltest.main()
