"""The runner with --algorithm / --aggregator: real short runs, and bad combinations refused.

Each run is a real `python -m experiments.run` subprocess on RetinaMNIST with
a small CNN (see tests/run_test.py for the runner's general behaviour).
"""

import json

import pandas as pd
import run_testing
from absl.testing import absltest, parameterized

from tff_vision import privacy

_BASE_FLAGS = run_testing.runner_flags(
    rounds=2,
    eval_every=1,
    client_optimizer="sgd",
    client_lr=0.05,
    local_epochs=1,
    augment="none",
)


def _run(*flags, timeout=600):
    return run_testing.run_runner(*_BASE_FLAGS, *flags, timeout=timeout)


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
        delta = 1 / 1080  # Default: 1 / training examples.
        self.assertEqual(
            summary["privacy"],
            {
                "epsilon": privacy.compute_epsilon(0.8, 2 / 3, 2, delta),
                "delta": delta,
                "accountant": "rdp",
                "noise_multiplier": 0.8,
                "sampling_rate": 2 / 3,
                "rounds": 2,
            },
        )
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
        self.assertEqual(summary["federated"]["rounds"], 1)
        self.assertNotIn("privacy", summary)
        metrics = pd.read_csv(out / "metrics.csv")
        self.assertTrue((metrics["train_examples"] < 1080).all())  # 2 of 3 clients per round.

    def test_mixed_precision_run(self):
        out = self.tmp / "mixed"
        result = _run(
            "--mixed_precision", "--rounds=2", "--baselines=centralized", f"--output_dir={out}"
        )
        summary = self.assertFinished(result, out)
        self.assertIn("mixed_bfloat16", result.stdout)
        self.assertTrue(json.loads((out / "flags.json").read_text())["mixed_precision"])
        for section in (summary["federated"], summary["centralized"]):
            self.assertGreater(section["test_auc"], 0.5)
            self.assertTrue(0 <= section["test_accuracy"] <= 1)
        metrics = pd.read_csv(out / "metrics.csv")
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
