"""The --aggregator choices run in our TFF context, and DP-FedAvg clips and noises as specified.

* Every aggregator runs a FedAvg round on real RetinaMNIST with a tiny model;
  the deterministic ones (secure: quantized secure sum; robust and
  compression while no clipping or zeroing is active) give `mean`'s weights.
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
from absl.testing import absltest
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
                elif name in ("mean", "robust", "compression"):
                    # Adaptive clipping (1.0) and zeroing (10.0) leave these small deltas alone,
                    # and no tensor of the tiny model is big enough to be quantized.
                    if name != "mean":
                        self.assertEqual(measurements["zeroing/clipped_count"], 0)
                        self.assertEqual(measurements["zeroed_count"], 0)
                    for w, m in zip(weights, mean):
                        np.testing.assert_allclose(w, m, rtol=1e-6, atol=1e-7)
                else:  # dp: noised.
                    self.assertGreater(max(np.abs(w - m).max() for w, m in zip(weights, mean)), 0)
                    self.assertIn("dp_query_metrics/clip", measurements)

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


class CompressionTest(absltest.TestCase):
    def test_large_tensors_are_quantized_to_8_bits(self):
        size, rng = 30000, np.random.default_rng(0)
        values = [(rng.normal(size=size) * 1e-3).astype(np.float32) for _ in range(3)]
        weights = [1.0, 2.0, 5.0]
        factory = aggregators.build_aggregator("compression").factory
        with runtime.local_context():
            process = factory.create(tff.TensorType(np.float32, [size]), tff.TensorType(np.float32))
            output = process.next(process.initialize(), values, weights)
        mean = sum(w * v for w, v in zip(weights, values)) / sum(weights)
        error = np.abs(np.asarray(output.result) - mean)
        # Each client's weighted values are rounded to one of 255 steps of their range.
        bound = sum(w * (v.max() - v.min()) / 510 for w, v in zip(weights, values)) / sum(weights)
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
