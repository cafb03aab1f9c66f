"""Fine-tuning evaluation: each client trains its starting model on its own data, then is scored.

Real RetinaMNIST (three hospitals lacking grades 1, 2 and 3) and the tiny CNN.
The reference fine-tunes by hand: plain-Keras SGD over exactly the batches
of the client's rounds after training (`fl_testing.train_keras`).
"""

import fl_testing
import numpy as np
import tensorflow as tf
from absl.testing import absltest

from tff_vision import data, evaluation, personalization, selection
from tff_vision.algorithms import keras_model

_LR = 0.5
_FIRST_ROUND = 4  # The federated run's last round: fine-tuning passes are rounds 5, 6, ...


class FineTuningTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fed = fl_testing.retina_federated(0)
        dataset = data.load("retinamnist", 28, fl_testing.SHARED_MEDMNIST, allow_download=False)
        cls.held_out = selection.HeldOut(
            dataset.test, dataset.val, 5, cls.fed.partition.client_classes
        )
        cls.global_model = fl_testing.tiny_model(seed=3)
        cls.start = keras_model.initial_weights(cls.global_model)

    def _fine_tune(self, epochs):
        return personalization.fine_tune_and_score(
            [self.start] * 3,
            [lambda r, c=c: self.fed.round_dataset(c, r) for c in self.fed.client_ids],
            epochs=epochs,
            build_model=fl_testing.tiny_model,
            build_optimizer=lambda: tf.keras.optimizers.SGD(_LR),
            held_out=self.held_out,
            first_round=_FIRST_ROUND,
            description="fine-tuned",
            printer=lambda _: None,
        )

    def test_zero_epochs_scores_the_global_model(self):
        result = self._fine_tune(0)
        expected = self.held_out.evaluate_test(self.global_model)
        for client in ("0", "1", "2"):
            np.testing.assert_array_equal(result.clients[client].logits, expected.logits)
        self.assertEqual(result.accuracy, expected.accuracy)
        self.assertEqual(result.per_client_subset_accuracy, expected.per_client_subset_accuracy)

    def test_each_client_trains_on_its_own_rounds(self):
        result = self._fine_tune(2)
        self.assertIsInstance(result, evaluation.ClientModelsResult)
        self.assertEqual(result.summary()["model"], "fine-tuned")
        for client in ("0", "1", "2"):
            model = fl_testing.tiny_model()
            self.start.assign_weights_to(model)
            for round_num in (_FIRST_ROUND + 1, _FIRST_ROUND + 2):
                fl_testing.train_keras(model, self.fed.round_dataset(client, round_num), _LR)
            expected = self.held_out.evaluate_test(model)
            np.testing.assert_allclose(
                result.clients[client].logits, expected.logits, rtol=1e-4, atol=1e-4
            )
            self.assertEqual(
                result.per_client_subset_accuracy[client],
                expected.per_client_subset_accuracy[client],
            )
        # Teeth: the clients' models differ from each other and from the global model.
        logits = [result.clients[c].logits for c in ("0", "1", "2")]
        global_logits = self.held_out.evaluate_test(self.global_model).logits
        for i, a in enumerate(logits):
            self.assertGreater(np.abs(a - global_logits).max(), 1e-2)
            for b in logits[:i]:
                self.assertGreater(np.abs(a - b).max(), 1e-2)


if __name__ == "__main__":
    absltest.main()
