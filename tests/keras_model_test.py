"""Tests of the training loss (`tff_vision.algorithms.keras_model.loss`)."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision.algorithms import keras_model


def _reference(labels, logits, eps):
    """Mean over examples of -sum_k t_k log softmax(z)_k, t = (1 - eps) one-hot + eps / K."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    k = logits.shape[1]
    targets = (1 - eps) * np.eye(k)[labels] + eps / k
    return float(-(targets * log_p).sum(axis=1).mean())


class LossTest(parameterized.TestCase):
    @parameterized.parameters(0.0, 0.1, 0.3)
    def test_matches_the_smoothed_cross_entropy_by_hand(self, eps):
        rng = np.random.default_rng(0)
        logits = rng.normal(scale=3.0, size=(7, 5)).astype(np.float32)
        labels = rng.integers(0, 5, size=7)
        got = float(keras_model.loss(eps)(tf.constant(labels, tf.int64), tf.constant(logits)))
        self.assertAlmostEqual(got, _reference(labels, logits.astype(np.float64), eps), places=5)

    def test_zero_is_the_plain_loss_and_smoothing_changes_it(self):
        self.assertIsInstance(keras_model.loss(), tf.keras.losses.SparseCategoricalCrossentropy)
        logits = tf.constant([[4.0, 0.0, 0.0]])
        labels = tf.constant([0], tf.int64)
        self.assertGreater(
            float(keras_model.loss(0.1)(labels, logits)), keras_model.loss()(labels, logits)
        )

    def test_out_of_range_is_refused(self):
        with self.assertRaisesRegex(ValueError, r"in \[0, 1\)"):
            keras_model.loss(1.0)


if __name__ == "__main__":
    absltest.main()
