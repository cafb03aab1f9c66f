"""Tests for tff_vision.evaluation with a tiny hand-weighted Keras model."""

import json

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized
from sklearn import metrics as sk_metrics

from tff_vision import evaluation

_SHAPE = (2, 2, 1)


def _linear_model(kernel, bias):
    """Flatten + Dense over 2x2x1 images with the given weights (logits out)."""
    kernel = np.asarray(kernel, np.float32)
    model = tf.keras.Sequential(
        [tf.keras.Input(_SHAPE), tf.keras.layers.Flatten(), tf.keras.layers.Dense(kernel.shape[1])]
    )
    model.set_weights([kernel, np.asarray(bias, np.float32)])
    return model


def _numpy_logits(images, kernel, bias):
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return flat @ np.asarray(kernel, np.float32) + np.asarray(bias, np.float32)


def _one_hot_images(classes):
    """2x2x1 images whose pixel `c` is 255 and the others 0."""
    images = np.zeros((len(classes), 4), np.uint8)
    images[np.arange(len(classes)), classes] = 255
    return images.reshape(len(classes), *_SHAPE)


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class EvaluateTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Pixel c (c < 3) votes for class c; pixel 3 is ignored.
        cls.kernel = np.vstack([3.0 * np.eye(3), np.zeros((1, 3))])
        cls.bias = np.array([0.1, 0.0, -0.1])
        cls.model = _linear_model(cls.kernel, cls.bias)
        # Predictions [0, 0, 1, 1, 2, 2] against these labels: 4 of 6 right.
        cls.images = _one_hot_images([0, 0, 1, 1, 2, 2])
        cls.labels = np.array([0, 1, 1, 1, 2, 0])

    def test_known_predictions(self):
        result = evaluation.evaluate(self.model, self.images, self.labels, num_classes=3)
        self.assertAlmostEqual(result.accuracy, 4 / 6)
        self.assertEqual(result.num_examples, 6)
        self.assertEqual(result.confusion.dtype, np.int64)
        np.testing.assert_array_equal(result.confusion, [[1, 0, 1], [1, 2, 0], [0, 0, 1]])
        self.assertEqual(result.per_client_subset_accuracy, {})

    def test_test_time_flips_average_the_logits_of_the_four_flips(self):
        images = np.random.default_rng(0).integers(0, 256, size=(5, *_SHAPE), dtype=np.uint8)
        views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
        expected = np.mean([_numpy_logits(v, self.kernel, self.bias) for v in views], axis=0)
        got = evaluation.predict_logits(self.model, images, flips=True)
        self.assertEqual(got.dtype, np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # Pixel c votes for class c and the flips move the pixels: the plain logits differ.
        self.assertGreater(np.abs(evaluation.predict_logits(self.model, images) - got).max(), 0.1)
        result = evaluation.evaluate(self.model, images, np.zeros(5, int), 3, flips=True)
        np.testing.assert_allclose(result.logits, got)

    def test_loss_matches_keras(self):
        result = evaluation.evaluate(self.model, self.images, self.labels, num_classes=3)
        logits = self.model(self.images.astype(np.float32) / 255.0, training=False)
        expected = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            self.labels, logits
        )
        self.assertAlmostEqual(result.loss, float(expected), places=5)

    def test_auc_matches_sklearn(self):
        result = evaluation.evaluate(self.model, self.images, self.labels, num_classes=3)
        probs = _softmax(_numpy_logits(self.images, self.kernel, self.bias))
        expected = sk_metrics.roc_auc_score(self.labels, probs, multi_class="ovr")
        self.assertAlmostEqual(result.auc, expected, places=6)

    def test_labels_n_by_1_accepted(self):
        flat = evaluation.evaluate(self.model, self.images, self.labels, num_classes=3)
        column = evaluation.evaluate(self.model, self.images, self.labels[:, None], num_classes=3)
        self.assertEqual(flat.as_dict(), column.as_dict())
        np.testing.assert_array_equal(flat.confusion, column.confusion)

    def test_client_subsets(self):
        result = evaluation.evaluate(
            self.model, self.images, self.labels, num_classes=3, client_classes=[[0, 1], [2], []]
        )
        # Client 0: examples 0, 1, 2, 3, 5 (labels 0/1), right on 0, 2, 3.
        # Client 1: example 4 (label 2), right.
        self.assertAlmostEqual(result.per_client_subset_accuracy["0"], 3 / 5)
        self.assertEqual(result.per_client_subset_accuracy["1"], 1.0)
        self.assertTrue(np.isnan(result.per_client_subset_accuracy["2"]))
        # Subset AUC: one-vs-rest over the classes present in the client's examples.
        probs = _softmax(_numpy_logits(self.images, self.kernel, self.bias))
        mask = np.isin(self.labels, [0, 1])
        expected = np.mean(
            [sk_metrics.roc_auc_score(self.labels[mask] == c, probs[mask, c]) for c in (0, 1)]
        )
        self.assertAlmostEqual(result.per_client_subset_auc["0"], expected, places=6)
        self.assertTrue(np.isnan(result.per_client_subset_auc["1"]))  # One class only.
        self.assertTrue(np.isnan(result.per_client_subset_auc["2"]))  # No examples.

    def test_as_dict_and_summary(self):
        result = evaluation.evaluate(
            self.model, self.images, self.labels, num_classes=3, client_classes=[[0, 1], [2]]
        )
        row = result.as_dict("eval_")
        self.assertEqual(
            set(row),
            {
                "eval_accuracy",
                "eval_auc",
                "eval_loss",
                "eval_subset_accuracy/0",
                "eval_subset_accuracy/1",
                "eval_subset_auc/0",
                "eval_subset_auc/1",
                "eval_worst_subset_accuracy",
                "eval_subset_accuracy_spread",
                "eval_worst_subset_auc",
                "eval_subset_auc_spread",
            },
        )
        # Over the clients: accuracy 3/5 and 1.0; AUC 0.75 and NaN (one class), which is left out.
        self.assertEqual(row["eval_worst_subset_accuracy"], 3 / 5)
        self.assertAlmostEqual(row["eval_subset_accuracy_spread"], 2 / 5)
        self.assertEqual(row["eval_accuracy"], result.accuracy)
        summary = result.summary()
        self.assertEqual(
            set(summary),
            {
                "test_accuracy",
                "test_auc",
                "test_loss",
                "per_client_subset_accuracy",
                "per_client_subset_auc",
                "worst_subset_accuracy",
                "subset_accuracy_spread",
                "worst_subset_auc",
                "subset_auc_spread",
            },
        )
        self.assertEqual((summary["worst_subset_auc"], summary["subset_auc_spread"]), (0.75, 0.0))
        self.assertEqual(summary["per_client_subset_accuracy"], {"0": 3 / 5, "1": 1.0})
        np.testing.assert_equal(json.loads(json.dumps(summary)), summary)  # NaN == NaN
        self.assertTrue(all(type(v) is float for k, v in summary.items() if k.startswith("test_")))

    def test_summary_omits_empty_subsets(self):
        result = evaluation.evaluate(self.model, self.images, self.labels, num_classes=3)
        self.assertEqual(set(result.summary()), {"test_accuracy", "test_auc", "test_loss"})
        self.assertEqual(set(result.as_dict()), {"accuracy", "auc", "loss"})

    @parameterized.parameters(1, 4, 7, 10, 256)
    def test_batch_boundaries(self, batch_size):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (10, *_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, 3, 10)
        kernel = rng.normal(size=(4, 3))
        bias = rng.normal(size=3)
        model = _linear_model(kernel, bias)
        logits = evaluation.predict_logits(model, images, batch_size=batch_size)
        np.testing.assert_allclose(logits, _numpy_logits(images, kernel, bias), atol=1e-5)
        probs = evaluation.predict_probabilities(model, images, batch_size=batch_size)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        batched = evaluation.evaluate(model, images, labels, 3, batch_size=batch_size)
        whole = evaluation.evaluate(model, images, labels, 3, batch_size=len(images))
        for key, value in whole.as_dict().items():
            self.assertAlmostEqual(batched.as_dict()[key], value, places=6)
        np.testing.assert_array_equal(batched.confusion, whole.confusion)

    def test_stored_logits_give_the_evaluation_back_exactly(self):
        result = evaluation.evaluate(
            self.model, self.images, self.labels, num_classes=3, client_classes=[[0, 1], [2]]
        )
        self.assertEqual(result.logits.dtype, np.float32)
        self.assertEqual(result.logits.shape, (6, 3))
        again = evaluation.evaluate_logits(result.logits, self.labels, 3, [[0, 1], [2]])
        np.testing.assert_equal(again.as_dict(), result.as_dict())  # NaN == NaN
        np.testing.assert_array_equal(again.confusion, result.confusion)

    def test_empty_images_give_empty_logits(self):
        logits = evaluation.predict_logits(self.model, np.zeros((0, *_SHAPE), np.uint8))
        self.assertEqual(logits.shape, (0, 3))

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "uint8"):
            evaluation.evaluate(self.model, self.images.astype(np.float32), self.labels, 3)
        with self.assertRaisesRegex(ValueError, r"\[0, 3\)"):
            evaluation.evaluate(self.model, self.images, self.labels + 1, 3)
        with self.assertRaisesRegex(ValueError, "6 labels for 5"):
            evaluation.evaluate(self.model, self.images[:5], self.labels, 3)
        with self.assertRaisesRegex(ValueError, "model output shape"):
            evaluation.evaluate(self.model, self.images, self.labels, 4)
        with self.assertRaisesRegex(ValueError, "empty"):
            evaluation.evaluate(self.model, self.images[:0], self.labels[:0], 3)


class MetricsTest(parameterized.TestCase):
    def test_macro_auc_equals_sklearn_all_classes(self):
        rng = np.random.default_rng(1)
        labels = np.tile(np.arange(4), 10)
        probs = _softmax(rng.normal(size=(40, 4)) + 1.5 * np.eye(4)[labels])
        expected = sk_metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        self.assertAlmostEqual(evaluation.macro_auc(labels, probs), expected, places=12)

    def test_binary_auc(self):
        labels = np.array([0, 0, 1, 1])
        probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
        # Positive/negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) = 3/4.
        self.assertAlmostEqual(evaluation.macro_auc(labels, probs), 0.75)
        self.assertAlmostEqual(
            evaluation.macro_auc(labels[:, None], probs),
            sk_metrics.roc_auc_score(labels, probs[:, 1]),
        )

    def test_absent_class_averages_present_ones(self):
        rng = np.random.default_rng(2)
        labels = np.array([0, 1, 3] * 6)
        probs = _softmax(rng.normal(size=(18, 4)))
        expected = np.mean([sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1, 3)])
        self.assertAlmostEqual(evaluation.macro_auc(labels, probs), expected, places=12)

    @parameterized.parameters(2, 3)
    def test_single_class_auc_is_nan(self, num_classes):
        probs = np.full((5, num_classes), 1.0 / num_classes)
        self.assertTrue(np.isnan(evaluation.macro_auc(np.ones(5, np.int64), probs)))

    def test_subset_accuracy_by_hand(self):
        labels = np.array([0, 1, 2, 2, 3])
        predictions = np.array([0, 2, 2, 1, 3])
        result = evaluation.subset_accuracy(labels, predictions, [[0, 1], (2, 3), [4]])
        self.assertEqual(set(result), {"0", "1", "2"})
        self.assertEqual(result["0"], 0.5)
        self.assertAlmostEqual(result["1"], 2 / 3)
        self.assertTrue(np.isnan(result["2"]))

    def test_cross_entropy_stable_for_large_logits(self):
        logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
        self.assertAlmostEqual(evaluation.cross_entropy(np.array([0, 0]), logits), 500.0)


def _classifier_logits(n, num_classes, seed, signal=1.0):
    """Labels `[n]` (every class present) and logits that favour the true class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    logits = rng.normal(size=(n, num_classes)) + signal * np.eye(num_classes)[labels]
    return labels, logits.astype(np.float32)


def _reference_bootstrap(labels, logits, seed, resamples):
    """The bootstrap written plainly: the documented resamples, then `macro_auc` on each."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(labels), size=(resamples, len(labels)))
    probs = evaluation.softmax(logits)
    correct = logits.argmax(axis=1) == labels
    accuracy = [correct[i].mean() for i in indices]
    auc = [evaluation.macro_auc(labels[i], probs[i]) for i in indices]
    return {
        "accuracy": np.percentile(accuracy, [2.5, 97.5]),
        "auc": np.nanpercentile(auc, [2.5, 97.5]),
    }


class BootstrapTest(parameterized.TestCase):
    def test_intervals_bracket_the_point_estimates(self):
        labels, logits = _classifier_logits(400, 5, seed=0)
        ci = evaluation.bootstrap_intervals(labels, logits, seed=0)
        accuracy = np.mean(logits.argmax(axis=1) == labels)
        auc = evaluation.macro_auc(labels, evaluation.softmax(logits))
        self.assertLess(ci["accuracy"][0], accuracy)
        self.assertGreater(ci["accuracy"][1], accuracy)
        self.assertLess(ci["auc"][0], auc)
        self.assertGreater(ci["auc"][1], auc)

    def test_accuracy_interval_has_the_binomial_width(self):
        # A percentile bootstrap of a mean of n Bernoulli(p) draws spans about
        # +-1.96 sqrt(p (1 - p) / n): resampling nothing, or the wrong level, misses it.
        labels, logits = _classifier_logits(400, 5, seed=1)
        p = np.mean(logits.argmax(axis=1) == labels)
        ci = evaluation.bootstrap_intervals(labels, logits, seed=0)
        expected = 2 * 1.96 * np.sqrt(p * (1 - p) / 400)
        self.assertBetween(ci["accuracy"][1] - ci["accuracy"][0], 0.85 * expected, 1.15 * expected)

    def test_intervals_shrink_with_more_examples(self):
        small = evaluation.bootstrap_intervals(*_classifier_logits(100, 5, seed=2), seed=0)
        large = evaluation.bootstrap_intervals(*_classifier_logits(1600, 5, seed=2), seed=0)
        for key in ("accuracy", "auc"):
            ratio = (small[key][1] - small[key][0]) / (large[key][1] - large[key][0])
            self.assertBetween(ratio, 2.5, 6.0, msg=key)  # sqrt(16) = 4.

    def test_reproducible_for_a_seed(self):
        labels, logits = _classifier_logits(200, 3, seed=3)
        first = evaluation.bootstrap_intervals(labels, logits, seed=7)
        self.assertEqual(evaluation.bootstrap_intervals(labels, logits, seed=7), first)
        self.assertNotEqual(evaluation.bootstrap_intervals(labels, logits, seed=8), first)

    @parameterized.named_parameters(
        ("five_classes_with_ties", 5, 400, True),
        ("binary", 2, 300, False),
        ("few_examples_some_resamples_lack_a_class", 3, 7, False),
    )
    def test_equals_macro_auc_on_each_resample(self, num_classes, n, ties):
        labels, logits = _classifier_logits(n, num_classes, seed=4)
        if ties:
            logits = np.round(logits)  # Many tied scores within each class column.
        got = evaluation.bootstrap_intervals(labels, logits, seed=5, resamples=300)
        expected = _reference_bootstrap(labels, logits, seed=5, resamples=300)
        for key in ("accuracy", "auc"):
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-12, err_msg=key)

    def test_single_class_has_no_auc_interval(self):
        logits = np.zeros((10, 3), np.float32)
        ci = evaluation.bootstrap_intervals(np.zeros(10, np.int64), logits, seed=0)
        self.assertEqual(ci["accuracy"], [1.0, 1.0])
        self.assertTrue(np.isnan(ci["auc"]).all())


if __name__ == "__main__":
    absltest.main()
