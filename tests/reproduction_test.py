"""Tests of MedMNIST v2's centralized protocol (`tff_vision.reproduction`) on real RetinaMNIST."""

import dataclasses
import json
import pathlib

import fl_testing
import numpy as np
from absl.testing import absltest

from tff_vision import reproduction
from tff_vision.data import Split

# Two short epochs, the rate dropping after the first, on a small real subset.
_PROTOCOL = reproduction.Protocol(epochs=2, milestones=(1,), batch_size=32)
_TIMES = ("wall_seconds", "resumed_after_epoch")


def _subset(ds, train=96, held=48):
    cut = lambda split, n: Split(split.images[:n], split.labels[:n])  # noqa: E731
    return dataclasses.replace(
        ds, train=cut(ds.train, train), val=cut(ds.val, held), test=cut(ds.test, held)
    )


class ProtocolTest(absltest.TestCase):
    def test_the_papers_schedule(self):
        protocol = reproduction.Protocol()
        rates = [protocol.learning_rate_at(e) for e in range(protocol.epochs)]
        np.testing.assert_allclose(rates[:50], 1e-3)
        np.testing.assert_allclose(rates[50:75], 1e-4)
        np.testing.assert_allclose(rates[75:], 1e-5)
        self.assertEqual(protocol.batch_size, 128)

    def test_the_papers_model(self):
        model = reproduction.build_model(fl_testing.retina_dataset(), seed=0)
        names = [layer.__class__.__name__ for layer in model.layers]
        self.assertIn("BatchNormalization", names)
        self.assertNotIn("GroupNormalization", names)
        self.assertNotIn("MaxPooling2D", names)
        first_conv = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
        self.assertEqual((first_conv.kernel_size, first_conv.strides), ((3, 3), (1, 1)))


class ComparisonTableTest(absltest.TestCase):
    def test_published_reproduced_and_federated_rows_with_means_and_intervals(self):
        reproduced = {
            "retinamnist": [
                {"test_accuracy": a, "test_auc": 0.7, "wall_seconds": 600.0}
                for a in (0.50, 0.52, 0.54)
            ]
        }
        fed = lambda alg, acc: {  # noqa: E731
            "federated": {"test_accuracy": acc, "test_auc": 0.75},
            "algorithm": {"name": alg},
            "partition": {"spec": "label_exclusion", "client_examples": {"0": 1, "1": 1, "2": 1}},
            "wall_seconds": 300.0,
        }
        federated = {"retinamnist": [fed("fedavg", 0.55), fed("fedavg", 0.57), fed("fedprox", 0.5)]}
        table = reproduction.comparison_table(reproduced, federated).set_index("source")
        published = table.loc["MedMNIST v2 ResNet-18 (28), published"]
        self.assertEqual((published.test_accuracy, published.test_auc), (0.524, 0.717))
        ours = table.loc["this protocol, centralized (reproduction)"]
        self.assertAlmostEqual(ours.test_accuracy, 0.52)
        self.assertAlmostEqual(ours.test_accuracy_vs_published, -0.004)
        # t(0.975, 2) = 4.303, std 0.02, 3 seeds: half-width 0.0497.
        np.testing.assert_allclose(ours.test_accuracy_ci95, (0.4703, 0.5697), atol=1e-4)
        self.assertAlmostEqual(ours.wall_minutes, 10.0)
        fedavg = table.loc["federated: fedavg, label_exclusion, 3 hospitals"]
        self.assertEqual(fedavg.seeds, 2)
        self.assertAlmostEqual(fedavg.test_accuracy, 0.56)
        self.assertAlmostEqual(fedavg.test_auc_vs_published, 0.033)
        self.assertEqual(table.loc["federated: fedprox, label_exclusion, 3 hospitals"].seeds, 1)
        self.assertLen(table, 4)
        shown = reproduction.formatted(table.reset_index()).set_index("source")
        row = shown.loc["this protocol, centralized (reproduction)"]
        self.assertEqual(row["ACC"], "0.520 [0.470, 0.570]")
        self.assertEqual(row["ACC vs published"], "-0.004")
        self.assertEqual(row["wall min"], "10.0")
        self.assertEqual(shown.loc["MedMNIST v2 ResNet-18 (28), published", "AUC"], "0.717")
        self.assertEqual(shown.loc["MedMNIST v2 ResNet-18 (28), published", "AUC vs published"], "")


class TrainTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ds = _subset(fl_testing.retina_dataset())

    def setUp(self):
        super().setUp()
        self.tmp = pathlib.Path(self.create_tempdir().full_path)

    def test_killed_run_resumes_to_the_uninterrupted_result_and_is_then_read_back(self):
        whole = reproduction.train(
            self.ds, 1, self.tmp / "whole", _PROTOCOL, printer=lambda _: None
        )
        self.assertIn(whole["selected_round"], (1, 2))
        self.assertEqual(whole["select"], "best_val")
        self.assertEqual(whole["final"]["round"], 2)
        self.assertLen((self.tmp / "whole" / "epochs.csv").read_text().splitlines(), 3)
        lo, hi = whole["ci95"]["test_accuracy"]
        self.assertLessEqual(lo, whole["test_accuracy"])
        self.assertLessEqual(whole["test_accuracy"], hi)

        def stop_after_epoch_1(line):
            if " round 1/2" in line:
                raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            reproduction.train(self.ds, 1, self.tmp / "cut", _PROTOCOL, printer=stop_after_epoch_1)
        self.assertFalse((self.tmp / "cut" / "summary.json").exists())
        resumed = reproduction.train(self.ds, 1, self.tmp / "cut", _PROTOCOL, printer=print)
        self.assertEqual(resumed["resumed_after_epoch"], 1)
        strip = lambda s: {k: v for k, v in s.items() if k not in _TIMES}  # noqa: E731
        self.assertEqual(
            json.dumps(strip(resumed), sort_keys=True), json.dumps(strip(whole), sort_keys=True)
        )
        lines = []
        again = reproduction.train(self.ds, 1, self.tmp / "cut", _PROTOCOL, printer=lines.append)
        self.assertEqual(again, json.loads((self.tmp / "cut" / "summary.json").read_text()))
        self.assertIn("finished earlier", lines[0])
        self.assertIn(f"epoch {whole['selected_round']}  test_acc ", lines[0])


if __name__ == "__main__":
    absltest.main()
