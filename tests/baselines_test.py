"""The Keras baselines' round selection on real RetinaMNIST val/test: exact after a restart.

A local-only baseline (a tiny CNN on one hospital's share of 96 training
images) is trained for a few rounds with `baselines.run_baselines`, scored on
the real validation split after every round; it is stopped right after a
round's checkpoint and rerun, and must report exactly what an uninterrupted
run reports.
"""

import pathlib
import shutil
import tempfile

import fl_testing
import numpy as np
import pandas as pd
import run_testing
from absl.testing import absltest

from tff_vision import baselines, selection
from tff_vision import config as config_lib
from tff_vision import data as data_lib

_ROUNDS = 4


def _log(out):
    """The baseline's per-round CSV, floats read back exactly."""
    return pd.read_csv(out / "baselines" / "local_0.csv", float_precision="round_trip")


class BaselineSelectionTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        dataset = data_lib.load(
            "retinamnist", 28, data_dir=fl_testing.SHARED_MEDMNIST, allow_download=False
        )
        cls.held_out = selection.held_out(dataset, None, seed=0)
        cls.jobs = [
            ("local_0", baselines.client_round_datasets(fl_testing.retina_federated(0), "0"))
        ]
        cls.full_dir = pathlib.Path(tempfile.mkdtemp(prefix="tff_vision_baselines_"))
        cls.full = cls._run(cls.full_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.full_dir, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def _run(cls, out, select="best_val", printer=lambda _: None):
        config = config_lib.ExperimentConfig(
            rounds=_ROUNDS, client_optimizer="sgd", client_lr=0.3, select=select
        )
        return baselines.run_baselines(
            config, cls.jobs, fl_testing.tiny_model, cls.held_out, None, out, printer
        )["local_0"]

    def test_restarted_baseline_selects_exactly_as_an_uninterrupted_one(self):
        full, log = self.full, _log(self.full_dir)
        stopped_dir = pathlib.Path(self.create_tempdir().full_path)
        self.assertEqual(log["round"].tolist(), list(range(1, _ROUNDS + 1)))
        best = int(log["round"][log["val_auc"].idxmax()])  # idxmax: the first of ties.
        self.assertEqual(full["selected_round"], best)
        self.assertLess(best, _ROUNDS)  # This setting peaks on val before its last round.
        self.assertEqual(full["val_auc"], log["val_auc"].max())
        self.assertEqual(full["final"]["round"], _ROUNDS)

        with self.assertRaises(run_testing.Stop):
            self._run(stopped_dir, printer=run_testing.stop_after_round("local_0", 2))
        # A row of a round trained but not checkpointed (a kill before the checkpoint):
        # the rerun redoes that round and replaces it.
        partial = _log(stopped_dir)
        extra = partial.iloc[[-1]].assign(round=3, val_auc=0.99)
        pd.concat([partial, extra]).to_csv(stopped_dir / "baselines" / "local_0.csv", index=False)
        lines = []
        resumed = self._run(stopped_dir, printer=lines.append)
        self.assertIn("[local_0] resuming after round 2", lines)
        self.assertEqual(resumed, full)
        pd.testing.assert_frame_equal(_log(stopped_dir), log)

    def test_final_selection_reports_the_last_round(self):
        final_dir = pathlib.Path(self.create_tempdir().full_path)
        best, final = self.full, self._run(final_dir, select="final")
        self.assertEqual((final["select"], final["selected_round"]), ("final", _ROUNDS))
        self.assertEqual(final["final"], best["final"])
        for key in ("test_accuracy", "test_auc", "test_loss"):
            self.assertEqual(final[key], best["final"][key])
        last = _log(final_dir).iloc[-1]
        self.assertEqual(final["val_auc"], last["val_auc"])
        self.assertTrue(np.all(np.diff(final["ci95"]["test_auc"]) >= 0))


if __name__ == "__main__":
    absltest.main()
