"""Tests for tff_vision.selection: the round each arm reports, kept across restarts."""

import dataclasses
import pathlib

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision import evaluation, selection
from tff_vision.data import Split

_NUM_CLASSES = 3
_TEST_LABELS = np.arange(30) % _NUM_CLASSES


def _held_out():
    images = np.zeros((30, 2, 2, 1), np.uint8)
    return selection.HeldOut(
        test=Split(images, _TEST_LABELS),
        val=Split(images[:12], _TEST_LABELS[:12]),
        num_classes=_NUM_CLASSES,
        client_classes=[[0, 1], [2]],
        bootstrap_seed=3,
    )


def _test_result(round_num):
    """A distinct test evaluation per round: round r gets r more examples right."""
    logits = np.zeros((30, _NUM_CLASSES), np.float32)
    right = np.arange(30) < 10 + round_num
    logits[np.arange(30), np.where(right, _TEST_LABELS, (_TEST_LABELS + 1) % 3)] = 2.0
    logits[:, 0] += 0.01 * round_num * np.linspace(0, 1, 30, dtype=np.float32)
    return evaluation.evaluate_logits(logits, _TEST_LABELS, _NUM_CLASSES, [[0, 1], [2]])


def _val_result(auc, accuracy=0.5):
    return dataclasses.replace(_test_result(0), auc=auc, accuracy=accuracy)


# Val AUC per round: round 3 is best, round 5 ties it (the earlier one wins), round 4 has none.
_VAL_AUCS = {1: 0.6, 2: 0.7, 3: 0.8, 4: float("nan"), 5: 0.8, 6: 0.75}


class HeldOutTest(absltest.TestCase):
    def test_flips_score_test_and_val_by_the_mean_logits_over_flips(self):
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, size=(30, 2, 2, 1), dtype=np.uint8)
        model = tf.keras.Sequential(
            [tf.keras.Input((2, 2, 1)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(3)]
        )
        model.set_weights([rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)])
        held_out = dataclasses.replace(
            _held_out(),
            test=Split(images, _TEST_LABELS),
            val=Split(images[:12], _TEST_LABELS[:12]),
            flips=True,
        )
        flipped = evaluation.predict_logits(model, images, flips=True)
        self.assertGreater(np.abs(flipped - evaluation.predict_logits(model, images)).max(), 0.01)
        np.testing.assert_array_equal(held_out.evaluate_test(model).logits, flipped)
        np.testing.assert_array_equal(held_out.evaluate_val(model).logits, flipped[:12])


class SelectionTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.path = pathlib.Path(self.create_tempdir().full_path) / "selected" / "arm.npz"

    def _offer_rounds(self, chosen, rounds):
        kept = []
        for r in rounds:
            val = _val_result(_VAL_AUCS[r], accuracy=r / 10)
            if chosen.offer(r, val, lambda r=r: _test_result(r)):
                kept.append(r)
        return kept

    def test_best_val_keeps_the_earliest_highest_val_auc(self):
        chosen = selection.Selection("best_val", _held_out(), self.path)
        self.assertEqual(self._offer_rounds(chosen, range(1, 7)), [1, 2, 3])
        summary, test = chosen.report(6, _test_result(6), _val_result(0.75, 0.6))
        self.assertEqual(summary["selected_round"], 3)
        self.assertEqual(summary["select"], "best_val")
        self.assertEqual((summary["val_auc"], summary["val_accuracy"]), (0.8, 0.3))
        np.testing.assert_equal(test.as_dict(), _test_result(3).as_dict())
        expected = _test_result(3).summary()
        np.testing.assert_equal({k: summary[k] for k in expected}, expected)
        np.testing.assert_equal(summary["final"], {"round": 6, **_test_result(6).summary()})
        ci = summary["ci95"]
        self.assertEqual(set(ci), {"test_accuracy", "test_auc"})
        self.assertLessEqual(ci["test_accuracy"][0], summary["test_accuracy"])
        self.assertGreaterEqual(ci["test_accuracy"][1], summary["test_accuracy"])
        bootstrap = evaluation.bootstrap_intervals(_TEST_LABELS, test.logits, seed=3)
        self.assertEqual(ci["test_auc"], bootstrap["auc"])

    def test_test_evaluation_runs_only_for_kept_rounds(self):
        chosen = selection.Selection("best_val", _held_out(), self.path)
        chosen.offer(1, _val_result(0.9), _test_result(1))
        chosen.offer(2, _val_result(0.5), lambda: self.fail("evaluated a round not kept"))

    def test_a_restart_continues_from_the_kept_round(self):
        uninterrupted = selection.Selection("best_val", _held_out(), self.path.with_name("a.npz"))
        self._offer_rounds(uninterrupted, range(1, 7))
        # Killed after round 4 was offered but before its checkpoint; resumed after round 2,
        # the rerun offers rounds 3 and 4 again.
        first = selection.Selection("best_val", _held_out(), self.path)
        self._offer_rounds(first, range(1, 5))
        resumed = selection.Selection("best_val", _held_out(), self.path)
        self.assertEqual(resumed.kept.round, 3)
        self._offer_rounds(resumed, range(3, 7))
        final = (6, _test_result(6), _val_result(0.75))
        np.testing.assert_equal(resumed.report(*final)[0], uninterrupted.report(*final)[0])

    def test_final_reports_the_last_round_and_keeps_nothing(self):
        chosen = selection.Selection("final", _held_out(), self.path)
        self.assertEqual(self._offer_rounds(chosen, range(1, 7)), [])
        self.assertFalse(self.path.exists())
        summary, test = chosen.report(6, _test_result(6), _val_result(0.75, 0.6))
        self.assertEqual(summary["selected_round"], 6)
        self.assertEqual(summary["select"], "final")
        self.assertEqual((summary["val_auc"], summary["val_accuracy"]), (0.75, 0.6))
        expected = _test_result(6).summary()
        np.testing.assert_equal({k: summary[k] for k in expected}, expected)
        np.testing.assert_equal(summary["final"], {"round": 6, **expected})
        np.testing.assert_equal(test.as_dict(), _test_result(6).as_dict())

    def test_nan_val_auc_is_kept_only_without_a_better_round(self):
        chosen = selection.Selection("best_val", _held_out(), self.path)
        self.assertTrue(chosen.offer(1, _val_result(float("nan")), _test_result(1)))
        self.assertFalse(chosen.offer(2, _val_result(float("nan")), _test_result(2)))
        self.assertTrue(chosen.offer(3, _val_result(0.1), _test_result(3)))

    def test_unknown_rule(self):
        with self.assertRaisesRegex(ValueError, "best_val, final"):
            selection.Selection("best_test", _held_out(), self.path)


if __name__ == "__main__":
    absltest.main()
