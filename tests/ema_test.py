"""The trainer's moving average of the global weights (`FederatedTrainer(ema_decay=...)`)."""

import pathlib
import shutil
import tempfile

import fl_testing
import numpy as np
from absl.testing import absltest

from tff_vision import training
from tff_vision.algorithms import keras_model

_DECAY = 0.5


class MovingAverageTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fed = fl_testing.retina_federated(0)
        cls.process = fl_testing.tiny_fedavg(cls.fed)
        cls.held_out = fl_testing.retina_held_out()
        cls.root = pathlib.Path(tempfile.mkdtemp())
        cls.addClassCleanup(shutil.rmtree, cls.root)

    def _train(self, out, rounds, decay=_DECAY):
        return fl_testing.train_tiny(
            self.process, self.fed, self.held_out, self.root / out, rounds, ema_decay=decay
        )

    def test_scores_the_average_of_the_rounds_and_resumes_it_exactly(self):
        outcome = self._train("full", rounds=3)
        # The same rounds by hand: the global weights after each, averaged.
        model = fl_testing.tiny_model(seed=5)
        step = training.RoundStep(self.process, self.fed, keras_model.initial_weights(model))
        state, average = step.initial_state(), None
        for round_num in (1, 2, 3):
            state = step.next(state, round_num).state
            weights = step.model_weights(state)
            current = list(weights.trainable) + list(weights.non_trainable)
            if average is None:
                average = current
            else:
                average = [_DECAY * a + (1 - _DECAY) * w for a, w in zip(average, current)]
        fl_testing.assert_states_equal(outcome.state, state)  # Training itself is unchanged.
        model.set_weights(average)
        expected = self.held_out.evaluate_test(model)
        np.testing.assert_allclose(outcome.final_eval.logits, expected.logits, rtol=1e-5, atol=1e-6)
        plain = self.held_out.evaluate_test(_with(model, step.model_weights(state)))
        self.assertGreater(np.abs(plain.logits - expected.logits).max(), 1e-3)
        self.assertIn("moving average (decay 0.5)", outcome.summary["model"])
        # Stopped after round 2 (its checkpoint holds the average), then rerun: the same end.
        self._train("stopped", rounds=2)
        resumed = self._train("stopped", rounds=3)
        self.assertEqual(resumed.resumed_from, 2)
        np.testing.assert_array_equal(resumed.final_eval.logits, outcome.final_eval.logits)

    def test_decay_out_of_range_is_refused(self):
        with self.assertRaisesRegex(ValueError, r"ema_decay must be in \[0, 1\)"):
            self._train("bad", rounds=1, decay=1.0)


def _with(model, weights):
    weights.assign_weights_to(model)
    return model


if __name__ == "__main__":
    absltest.main()
