"""The runner with --algorithm / --aggregator: real short runs, and bad combinations refused.

Each run is a real `python -m experiments.run` subprocess on RetinaMNIST with
a small CNN (see tests/run_test.py for the runner's general behaviour).
"""

import json

import numpy as np
import pandas as pd
import run_testing
from absl.testing import absltest, parameterized

from tff_vision import client_data, privacy

_BASE_FLAGS = run_testing.runner_flags(
    rounds=2,
    eval_every=1,
    client_optimizer="sgd",
    client_lr=0.05,
    local_epochs=1,
    augment="none",
)


_TEST_EXAMPLES = 400  # RetinaMNIST's test split.


def _run(*flags, timeout=600):
    return run_testing.run_runner(*_BASE_FLAGS, *flags, timeout=timeout)


def _read_log(path):
    return pd.read_csv(path, float_precision="round_trip")


class AlgorithmsRunTest(run_testing.RunnerTestCase):
    def test_dp_fedprox_with_local_steps_reports_privacy(self):
        out = self.tmp / "dp"
        result = _run(
            "--algorithm=fedprox",
            "--proximal_strength=0.1",
            "--aggregator=dp",
            "--dp_noise_multiplier=0.8",
            "--dp_clip=2.0",
            "--clients_per_round=2",
            "--local_steps=2",
            f"--output_dir={out}",
        )
        summary = self.assertFinished(result, out)
        delta = 1 / 3**1.1  # Client-level default: 1 / num_clients^1.1.
        expected = {
            "unit": "client",
            "epsilon": privacy.compute_epsilon(0.8, 2 / 3, 2, delta),
            "delta": delta,
            "delta_choice": privacy.DEFAULT_DELTA_RULE,
            "accountant": "rdp",
            "noise_multiplier": 0.8,
            "sampling_rate": 2 / 3,
            "num_clients": 3,
            "rounds": 2,
            "training_metrics_released_without_noise": True,
        }
        reported = summary["privacy"]
        self.assertEqual({k: reported[k] for k in expected}, expected)
        self.assertIn("(2 of 3 clients per round)", reported["sampling"])
        self.assertIn("only 3 clients", reported["warning"])
        self.assertEqual(summary["algorithm"]["name"], "fedprox")
        self.assertEqual(summary["algorithm"]["aggregator"], "dp")
        self.assertEqual(summary["algorithm"]["steps"], {"0": 2, "1": 2, "2": 2})
        metrics = pd.read_csv(out / "metrics.csv")
        for round_num in (1, 2):
            row = metrics[metrics["round"] == round_num].iloc[0]
            self.assertAlmostEqual(
                row["eval_epsilon"], privacy.compute_epsilon(0.8, 2 / 3, round_num, delta), 9
            )
            # 2 sampled clients x 2 local steps x full batches of 32.
            self.assertEqual(row["train_examples"], 128)
        self.assertRegex(result.stdout, r"privacy: epsilon [0-9.]+ at delta")

    def test_scaffold_with_partial_participation(self):
        out = self.tmp / "scaffold"
        result = _run(
            "--algorithm=scaffold",
            "--clients_per_round=2",
            "--client_momentum=0",
            "--client_lr_schedule=constant",
            "--rounds=1",
            f"--output_dir={out}",
        )
        summary = self.assertFinished(result, out)
        fed = summary["federated"]
        self.assertEqual(fed["rounds"], 1)
        self.assertNotIn("privacy", summary)
        metrics = _read_log(out / "metrics.csv")
        self.assertEqual(metrics["round"].tolist(), [1])
        row = metrics.iloc[0]
        # Round 1 trains one epoch over each of the 2 clients drawn by the seeded sample
        # (seed 0, round 1) and nothing else: their partition.csv sizes add up exactly.
        sizes = pd.read_csv(out / "partition.csv", index_col=0)["total"]
        rng = np.random.default_rng(client_data.derive_seed(0, "sample", 1))
        sampled = sorted(rng.choice(3, size=2, replace=False))
        self.assertEqual(row["train_examples"], sum(sizes[str(c)] for c in sampled))
        # Every pair of the 3 clients has a different size: the count names the pair.
        pair_sums = [sizes["0"] + sizes["1"], sizes["0"] + sizes["2"], sizes["1"] + sizes["2"]]
        self.assertLen(set(pair_sums), 3)
        # The one round is the one reported, exactly as metrics.csv logged it.
        self.assertEqual(fed["selected_round"], 1)
        for key in ("accuracy", "auc", "loss"):
            self.assertEqual(fed[f"test_{key}"], row[f"eval_{key}"], msg=key)
            self.assertEqual(fed["final"][f"test_{key}"], row[f"eval_{key}"], msg=key)
        for client, accuracy in fed["per_client_subset_accuracy"].items():
            self.assertEqual(accuracy, row[f"eval_subset_accuracy/{client}"], msg=client)

    def test_mixed_precision_run(self):
        out = self.tmp / "mixed"
        result = _run(
            "--mixed_precision", "--rounds=2", "--baselines=centralized", f"--output_dir={out}"
        )
        summary = self.assertFinished(result, out)
        self.assertIn("mixed_bfloat16", result.stdout)
        self.assertTrue(json.loads((out / "flags.json").read_text())["mixed_precision"])
        metrics = _read_log(out / "metrics.csv")
        fed, central = summary["federated"], summary["centralized"]
        for section, log in (
            (fed, metrics),
            (central, _read_log(out / "baselines/centralized.csv")),
        ):
            self.assertGreater(section["test_auc"], 0.5)
            # The reported round is the one --select picks from the logged val metrics.
            self.assertEqual(section["selected_round"], run_testing.expected_round(section, log))
            chosen = log[log["round"] == section["selected_round"]].iloc[0]
            self.assertEqual(section["val_auc"], chosen["val_auc"])
            self.assertEqual(section["val_accuracy"], chosen["val_accuracy"])
            # Accuracies count whole test images; the reported one lies in its bootstrap interval.
            for accuracy in (section["test_accuracy"], section["final"]["test_accuracy"]):
                self.assertAlmostEqual(accuracy * _TEST_EXAMPLES, round(accuracy * _TEST_EXAMPLES))
            low, high = section["ci95"]["test_accuracy"]
            self.assertBetween(section["test_accuracy"], low, high)
        # The federated numbers are metrics.csv's: its selected row, and its last row as final.
        chosen = metrics[metrics["round"] == fed["selected_round"]].iloc[0]
        self.assertEqual(fed["test_accuracy"], chosen["eval_accuracy"])
        self.assertEqual(fed["test_auc"], chosen["eval_auc"])
        self.assertEqual(fed["final"]["test_accuracy"], metrics["eval_accuracy"].iloc[-1])
        self.assertEqual(fed["final"]["test_auc"], metrics["eval_auc"].iloc[-1])
        # The confusion matrix is the reported model's: 400 images, its accuracy on the diagonal.
        confusion = np.array(summary["confusion_matrix"])
        self.assertEqual(confusion.sum(), _TEST_EXAMPLES)
        self.assertAlmostEqual(np.trace(confusion) / _TEST_EXAMPLES, fed["test_accuracy"])
        self.assertTrue(metrics["train_loss"].notna().all())
        self.assertTrue((metrics["train_loss"] < 10).all())

    @parameterized.named_parameters(
        ("fedbn_needs_batch_norm", ["--algorithm=fedbn", "--norm=group"], "--norm=batch"),
        ("fedprox_needs_strength", ["--algorithm=fedprox"], "--proximal_strength"),
        (
            "negative_noise",
            ["--aggregator=dp", "--dp_noise_multiplier=-0.5"],
            "--dp_noise_multiplier",
        ),
        ("scaffold_refuses_dp", ["--algorithm=scaffold", "--aggregator=dp"], "--aggregator=dp"),
    )
    def test_bad_combination_one_line_exit_2(self, flags, expected):
        out = self.tmp / "bad"
        result = _run(*flags, f"--output_dir={out}", timeout=120)
        self.assertOneLineError(result, expected)
        self.assertFalse(out.exists())


if __name__ == "__main__":
    absltest.main()
