"""The per-hospital comparison: each arm's model for a hospital, on that hospital's classes."""

import math

from absl.testing import absltest

from tff_vision import hospitals


def _arm(accuracy, auc, **extra):
    """An arm's summary entry as summary.json holds it (client ids as string keys)."""
    return {
        "per_client_subset_accuracy": {str(k): v for k, v in enumerate(accuracy)},
        "per_client_subset_auc": {str(k): v for k, v in enumerate(auc)},
        **extra,
    }


class HospitalsTest(absltest.TestCase):
    def test_each_arm_its_worst_hospital_and_spread(self):
        summary = {
            "federated": _arm([0.6, 0.5, 0.7], [0.8, 0.7, 0.75], model="global"),
            # Local model k scored on every hospital's classes: only hospital k's counts.
            "local_only": {
                str(k): _arm(
                    [0.9 if i == k else 0.0 for i in range(3)],
                    [0.6 + 0.1 * k if i == k else 0.0 for i in range(3)],
                )
                for k in range(3)
            },
            "centralized": _arm([0.55, float("nan"), 0.65], [0.7, 0.9, 0.8], model="pooled"),
        }
        result = hospitals.comparison(summary)
        self.assertEqual(result["scored_on"], hospitals.SCORED_ON)
        fed = result["arms"]["federated"]
        self.assertEqual(fed["model"], "global")
        self.assertEqual(fed["accuracy"], {"0": 0.6, "1": 0.5, "2": 0.7})
        self.assertEqual((fed["worst_accuracy"], fed["worst_accuracy_hospital"]), (0.5, "1"))
        self.assertAlmostEqual(fed["accuracy_spread"], 0.2)
        self.assertEqual((fed["worst_auc"], fed["worst_auc_hospital"]), (0.7, "1"))
        local = result["arms"]["local_only"]
        self.assertEqual(local["model"], hospitals.LOCAL_ONLY_MODEL)
        self.assertEqual(local["accuracy"], {"0": 0.9, "1": 0.9, "2": 0.9})
        self.assertEqual(local["accuracy_spread"], 0.0)
        self.assertEqual(local["worst_auc_hospital"], "0")
        self.assertAlmostEqual(local["auc_spread"], 0.2)
        pooled = result["arms"]["centralized"]
        self.assertTrue(math.isnan(pooled["accuracy"]["1"]))  # No test example of its classes.
        self.assertEqual((pooled["worst_accuracy"], pooled["worst_accuracy_hospital"]), (0.55, "0"))
        self.assertAlmostEqual(pooled["accuracy_spread"], 0.1)

    def test_no_comparison_without_client_classes(self):
        self.assertIsNone(hospitals.comparison({"federated": {"test_accuracy": 0.5}}))


if __name__ == "__main__":
    absltest.main()
