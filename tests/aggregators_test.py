"""The --aggregator choices run in our TFF context, and DP-FedAvg clips and noises as specified.

* Every aggregator runs a FedAvg round on real RetinaMNIST with a tiny model;
  secure (quantized secure sum) gives `mean`'s weights.
* robust and compression clip an update far above their clip norm to it,
  zero a corrupt one, and compression quantizes within its error bound.
* DP-FedAvg with noise multiplier 0 and a clip norm below every client's
  delta norm: the new weights are w - mean_k clip(w - w_k), clip(d) =
  d * min(1, C / ||d||), the unweighted mean, checked against local SGD by
  hand and numpy.
* The DP noise: stddev noise_multiplier * C / clients per round, drawn anew
  each round, the same for the same seed (the runtime refuses unseeded
  random ops).
"""

import fl_testing
import numpy as np
import tensorflow_federated as tff
from absl.testing import absltest, parameterized
from fl_testing import local_sgd
from fl_testing import tiny_model as _tiny_model

from tff_vision import aggregators, runtime
from tff_vision.algorithms import build_optimizer, build_process, keras_model

_LR = 0.1


def _local_sgd(weights, dataset, lr):
    return local_sgd(weights, dataset, lr)[0]


def _flat_measurements(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            out.update(_flat_measurements(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class AggregatorsTest(fl_testing.RetinaTestCase):
    PREPROCESSING_SEED = 4

    def setUp(self):
        super().setUp()
        self.init = _tiny_model(seed=7).get_weights()

    def _one_round(self, aggregator, algorithm="fedavg"):
        process = build_process(
            algorithm,
            keras_model.model_fn(_tiny_model, self.fed.element_spec),
            client_optimizer=build_optimizer("sgd", _LR),
            model_aggregator=aggregator,
            proximal_strength=0.1,
        )
        model = _tiny_model()
        model.set_weights(self.init)
        state = fl_testing.initial_state(process, model)
        output = process.next(state, fl_testing.round_datasets(self.fed, 1))
        weights = [np.asarray(w) for w in process.get_model_weights(output.state).trainable]
        return weights, _flat_measurements(output.metrics["aggregator"])

    def test_every_aggregator_runs_one_round(self):
        mean, _ = self._one_round(None)
        for name in aggregators.AGGREGATORS:
            with self.subTest(name):
                agg = aggregators.build_aggregator(
                    name, clients_per_round=3, dp_noise_multiplier=0.1, dp_clip="adaptive"
                )
                weights, measurements = self._one_round(agg)
                self.assertTrue(all(np.isfinite(w).all() for w in weights))
                if name == "secure":
                    # Quantized to 32-bit integers within an adaptive range: ~1e-6 relative.
                    for w, m in zip(weights, mean):
                        np.testing.assert_allclose(w, m, rtol=1e-5, atol=1e-6)
                    self.assertEqual(measurements["mean_value/secure_upper_clipped_count"], 0)
                elif name == "dp":  # Noised.
                    self.assertGreater(max(np.abs(w - m).max() for w, m in zip(weights, mean)), 0)
                    self.assertIn("dp_query_metrics/clip", measurements)
                elif name != "mean":  # What they do is in ClippingZeroingTest.
                    self.assertIn("zeroing/clipped_count", measurements)

    def test_dp_clips_each_client_delta_and_takes_the_unweighted_mean(self):
        clip = 0.02
        deltas = []
        for c in self.fed.client_ids:
            local = _local_sgd(self.init, self.fed.round_dataset(c, 1), _LR)
            deltas.append([w - lw for w, lw in zip(self.init, local)])
        norms = [np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in delta)) for delta in deltas]
        self.assertGreater(min(norms), 2 * clip)  # Clipping is active for every client.
        self.assertGreater(max(norms) / min(norms), 1.05)  # ... by different factors.
        expected = [
            w - np.mean([d[i] * min(1.0, clip / n) for d, n in zip(deltas, norms)], axis=0)
            for i, w in enumerate(self.init)
        ]
        agg = aggregators.build_aggregator(
            "dp", clients_per_round=3, dp_noise_multiplier=0.0, dp_clip=clip
        )
        weights, _ = self._one_round(agg)
        for w, e in zip(weights, expected):
            np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-7)
        # The weighted mean of clipped deltas would differ (uneven client sizes).
        sizes = np.array(self.fed.partition.sizes, dtype=np.float64)
        weighted = [
            w
            - sum(s * d[i] * min(1.0, clip / n) for s, d, n in zip(sizes, deltas, norms))
            / sizes.sum()
            for i, w in enumerate(self.init)
        ]
        self.assertGreater(max(np.abs(a - b).max() for a, b in zip(weighted, expected)), 1e-6)

    def test_dp_noise_is_seeded_fresh_each_round_with_the_right_stddev(self):
        size, clients, z, clip = 20000, 4, 1.5, 0.5
        value_type = tff.TensorType(np.float32, [size])

        def rounds(seed, n=2):
            factory = aggregators.dp_factory(z, clients, clip, noise_seed=seed)
            process = factory.create(value_type)
            state, results = process.initialize(), []
            for _ in range(n):
                output = process.next(state, [np.zeros(size, np.float32)] * clients)
                state = output.state
                results.append(np.asarray(output.result))
            return results

        first, second = rounds(seed=1)
        again = rounds(seed=1, n=1)[0]
        other = rounds(seed=2, n=1)[0]
        np.testing.assert_array_equal(first, again)
        self.assertFalse(np.allclose(first, second))
        self.assertFalse(np.allclose(first, other))
        expected_std = z * clip / clients
        for noise in (first, second, other):
            self.assertAlmostEqual(np.std(noise) / expected_std, 1.0, delta=0.03)
            self.assertLess(abs(np.mean(noise)), 4 * expected_std / np.sqrt(size))


class ClippingZeroingTest(parameterized.TestCase):
    """robust and compression clip, zero and (compression) quantize what they should."""

    SIZE = 30000  # Above compression's 20000-element quantization threshold.

    def _aggregate(self, name, values, weights):
        factory = aggregators.build_aggregator(name).factory
        with runtime.local_context():
            process = factory.create(
                tff.TensorType(np.float32, [self.SIZE]), tff.TensorType(np.float32)
            )
            output = process.next(process.initialize(), values, weights)
        return np.asarray(output.result), _flat_measurements(output.measurements)

    @parameterized.parameters("robust", "compression")
    def test_clipping_zeroing_and_quantization_are_active(self, name):
        rng = np.random.default_rng(0)
        # L2 norm 86.6, far above the initial clip norm 1; every value below the zeroing
        # threshold 10 (max abs).
        big = np.full(self.SIZE, 0.5, np.float32)
        small = (rng.normal(size=self.SIZE) * 1e-4).astype(np.float32)  # Norm ~0.02.
        corrupt = small.copy()
        corrupt[0] = 1000.0  # Above the zeroing threshold.

        alone, _ = self._aggregate(name, [big], [1.0])
        self.assertLessEqual(np.linalg.norm(alone), 1.0 + 1e-5)
        self.assertGreater(np.linalg.norm(alone), 0.99)  # Clipped, not zeroed.

        weights = [1.0, 2.0, 3.0]
        result, measurements = self._aggregate(name, [big, small, corrupt], weights)
        self.assertEqual(measurements["zeroing/clipped_count"], 1)
        self.assertEqual(measurements["zeroed_count"], 1)
        # The corrupt client counts with zeros, the big one clipped to norm 1.
        expected = (1.0 * big / np.linalg.norm(big) + 2.0 * small) / sum(weights)
        error = np.abs(result - expected)
        if name == "robust":
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-9)
        else:
            # 8 bits: each client's weighted values rounded to one of 255 steps of their
            # range; only `small` has a range.
            bound = 2.0 * (small.max() - small.min()) / 510 / sum(weights)
            self.assertLessEqual(error.max(), bound * 1.001)
            self.assertGreater(error.mean(), bound / 20)  # Quantization did happen.


class DpSettingsTest(absltest.TestCase):
    def test_parse_and_check(self):
        self.assertIsNone(aggregators.parse_dp_clip("adaptive"))
        self.assertEqual(aggregators.parse_dp_clip("0.5"), 0.5)
        for bad in ("0", "-1", "abc", "nan"):
            with self.assertRaisesRegex(ValueError, "--dp_clip"):
                aggregators.parse_dp_clip(bad)
        with self.assertRaisesRegex(ValueError, "--dp_noise_multiplier"):
            aggregators.check_dp_settings(-0.1, "1.0", 10)
        with self.assertRaisesRegex(ValueError, "< 0.3"):
            aggregators.check_dp_settings(0.5, "adaptive", 3)
        aggregators.check_dp_settings(0.5, "adaptive", 10)
        self.assertFalse(aggregators.build_aggregator("dp", clients_per_round=3).weighted)
        self.assertTrue(aggregators.build_aggregator("secure").weighted)


if __name__ == "__main__":
    absltest.main()
