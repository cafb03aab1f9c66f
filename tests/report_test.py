"""Tests for tff_vision.report and `python -m experiments.report` on synthetic sweeps.

Each test writes a sweep directory by hand (sweep.json through `tff_vision.sweep`,
then flags.json, summary.json and partition.csv per cell with known metrics),
so every mean, standard deviation, interval and verdict below is checked
against numbers worked out here, not recomputed by the code under test.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
import pandas as pd
from absl.testing import absltest, parameterized

from tff_vision import plots, report, report_plots, sweep

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Grid order on purpose not alphabetical: the report must keep it.
_PARTITIONS = ["iid", "dirichlet:0.1", "dirichlet:1", "classes:2"]
_BASE = {"iid": 0.60, "dirichlet:0.1": 0.40, "dirichlet:1": 0.50, "classes:2": 0.30}
_DELTA = {"fedavg": 0.0, "fedprox": 0.05}
_SEED_OFFSET = {0: -0.1, 1: 0.0, 2: 0.1}  # Mean 0, sample std (ddof=1) exactly 0.1.
# 95% t-interval half widths: t(0.975, 2) 0.1 / sqrt(3) and t(0.975, 1) sqrt(0.005) / sqrt(2).
_HALF_3_SEEDS = 4.302653 * 0.1 / 3**0.5  # 0.248414
_HALF_2_SEEDS = 12.706205 * 0.05  # 0.635310


_MB = {"fedavg": 1_000_000, "fedprox": 2_000_000, "fedper": 1_000_000}


def _accuracy(partition, algorithm, seed):
    return _BASE[partition] + _DELTA[algorithm] + _SEED_OFFSET[seed]


def _write_cell(sweep_dir, cell, accuracy, auc=None, loss=1.0, finished=True, counts=None):
    out = cell.output_dir(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    flags = {"partition": cell.partition, "algorithm": cell.algorithm, "model": cell.model}
    (out / "flags.json").write_text(json.dumps({**flags, "seed": cell.seed, "rounds": 3}))
    if counts is not None:
        counts.to_csv(out / "partition.csv")
    if finished:
        summary = {
            "federated": {
                "test_accuracy": accuracy,
                "test_auc": accuracy + 0.2 if auc is None else auc,
                "test_loss": loss,
                "worst_subset_accuracy": accuracy - 0.05,
                "rounds": 3,
            },
            "wall_seconds": 12.5,
            # FedProx moves twice as much as FedAvg here: 2 MB against 1 MB each way.
            "communication": {
                "total": {"total_down": _MB[cell.algorithm], "total_up": _MB[cell.algorithm]}
            },
        }
        (out / "summary.json").write_text(json.dumps(summary))


def _counts(seed):
    """A partition.csv frame as the run writes it: index 'client', totals last."""
    values = np.array([[10 + seed, 0, 5], [3, 7, 1]])
    frame = pd.DataFrame(values, columns=["0", "1", "2"], index=pd.Index(["0", "1"], name="client"))
    frame["total"] = frame.sum(axis=1)
    frame.loc["total"] = frame.sum(axis=0)
    return frame


def _make_sweep(sweep_dir, partitions, algorithms, models, seeds, skip=()):
    cells = sweep.expand_grid(partitions, algorithms, models, seeds, {"rounds": "3"})
    state = sweep.SweepState(sweep_dir)
    state.merge({"partitions": partitions}, cells, {"rounds": "3"})
    state.save()
    for cell in cells:
        _write_cell(
            sweep_dir,
            cell,
            _accuracy(cell.partition, cell.algorithm, cell.seed),
            finished=(cell.partition, cell.algorithm, cell.seed) not in skip,
            counts=_counts(cell.seed),
        )
    return cells


def _sweep_of(sweep_dir, accuracies):
    """A one-partition sweep whose cells have the accuracies {(algorithm, seed): accuracy}."""
    algorithms = list(dict.fromkeys(a for a, _ in accuracies))
    seeds = sorted({s for _, s in accuracies})
    cells = sweep.expand_grid(["iid"], algorithms, ["cnn"], seeds, {})
    state = sweep.SweepState(sweep_dir)
    state.merge({}, cells, {})
    state.save()
    for cell in cells:
        accuracy = accuracies[(cell.algorithm, cell.seed)]
        _write_cell(sweep_dir, cell, accuracy, loss=1.0 - accuracy)


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == _PNG_SIGNATURE


class ReportTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = pathlib.Path(self.create_tempdir().full_path)

    def test_load_cells_one_row_per_finished_cell(self):
        _make_sweep(self.dir, _PARTITIONS, ["fedavg"], ["cnn"], [0, 1], skip={("iid", "fedavg", 1)})
        frame, notes = report.load_cells(self.dir)
        self.assertLen(frame, 7)
        self.assertEqual(list(frame.columns), list(report.CELL_COLUMNS))
        row = frame[(frame["partition"] == "dirichlet:1") & (frame["seed"] == 1)].iloc[0]
        self.assertAlmostEqual(row["test_accuracy"], 0.50)
        self.assertAlmostEqual(row["test_auc"], 0.70)
        self.assertAlmostEqual(row["worst_subset_accuracy"], 0.45)
        self.assertEqual(row["rounds"], 3)
        self.assertEqual(row["wall_seconds"], 12.5)
        self.assertEqual(row["algorithm"], "fedavg")
        self.assertLen(notes, 1)
        self.assertIn("1 cell(s) not finished", notes[0])
        self.assertIn("partition=iid__algorithm=fedavg__model=cnn__seed=1", notes[0])

    def _three_seed_report(self):
        """fedavg and fedprox over three seeds; dirichlet:0.1 x fedprox lacks seed 2 (n = 2)."""
        _make_sweep(
            self.dir,
            _PARTITIONS,
            ["fedavg", "fedprox"],
            ["cnn"],
            [0, 1, 2],
            skip={("dirichlet:0.1", "fedprox", 2)},
        )
        return report.write_report(self.dir)

    def test_aggregate_means_stds_and_intervals(self):
        agg = self._three_seed_report().aggregate.set_index(["partition", "algorithm"])
        # Three seeds: mean = base + delta, std = 0.1 exactly.
        self.assertEqual(agg.loc[("iid", "fedavg"), "n"], 3)
        self.assertAlmostEqual(agg.loc[("iid", "fedavg"), "test_accuracy_mean"], 0.60)
        self.assertAlmostEqual(agg.loc[("iid", "fedavg"), "test_accuracy_std"], 0.1)
        self.assertAlmostEqual(agg.loc[("iid", "fedprox"), "test_auc_mean"], 0.85)
        # Two seeds (0.35, 0.45): mean 0.40, std sqrt(0.005) = 0.0707.
        self.assertEqual(agg.loc[("dirichlet:0.1", "fedprox"), "n"], 2)
        self.assertAlmostEqual(agg.loc[("dirichlet:0.1", "fedprox"), "test_accuracy_mean"], 0.40)
        self.assertAlmostEqual(
            agg.loc[("dirichlet:0.1", "fedprox"), "test_accuracy_std"], 0.0707107, places=6
        )
        self.assertAlmostEqual(
            agg.loc[("iid", "fedavg"), "test_accuracy_ci_low"], 0.60 - _HALF_3_SEEDS, places=5
        )
        self.assertAlmostEqual(
            agg.loc[("dirichlet:0.1", "fedprox"), "test_accuracy_ci_high"],
            0.40 + _HALF_2_SEEDS,
            places=5,
        )

    def test_worst_hospital_and_communication_columns_are_aggregated(self):
        agg = self._three_seed_report().aggregate.set_index(["partition", "algorithm"])
        self.assertEqual(agg.loc[("iid", "fedprox"), "total_mb_mean"], 4.0)
        self.assertAlmostEqual(agg.loc[("iid", "fedprox"), "worst_subset_accuracy_mean"], 0.60)
        self.assertAlmostEqual(agg.loc[("iid", "fedprox"), "worst_subset_accuracy_std"], 0.1)

    def test_plot_error_bars_are_the_95_percent_intervals(self):
        agg = self._three_seed_report().aggregate.set_index(["partition", "algorithm"])
        bars = report_plots._half_widths(agg, "test_accuracy")
        self.assertAlmostEqual(bars[agg.index.get_loc(("iid", "fedavg"))], _HALF_3_SEEDS, places=5)
        self.assertAlmostEqual(
            bars[agg.index.get_loc(("dirichlet:0.1", "fedprox"))], _HALF_2_SEEDS, places=5
        )

    def test_table_marks_a_paired_best_and_writes_every_file(self):
        result = self._three_seed_report()
        table = pd.read_csv(self.dir / "report" / "table.csv", keep_default_na=False)
        self.assertEqual(table["partition"].tolist(), _PARTITIONS)  # Grid order kept.
        self.assertEqual(
            list(table.columns),
            [
                "model",
                "partition",
                "fedavg accuracy",
                "fedavg accuracy 95% CI",
                "fedavg AUC",
                "fedavg AUC 95% CI",
                "fedavg n",
                "fedprox accuracy",
                "fedprox accuracy 95% CI",
                "fedprox AUC",
                "fedprox AUC 95% CI",
                "fedprox n",
                "best",
                "comparison",
            ],
        )
        iid = table.iloc[0]
        self.assertEqual(iid["fedavg accuracy"], "0.600 ± 0.100")
        self.assertEqual(iid["fedavg accuracy 95% CI"], "[0.352, 0.848]")
        self.assertEqual(iid["fedavg AUC"], "0.800 ± 0.100")
        self.assertEqual(iid["fedprox accuracy"], "0.650 ± 0.100")
        self.assertEqual(iid["fedavg n"], 3)
        self.assertEqual(table.iloc[1]["fedprox accuracy"], "0.400 ± 0.071")
        self.assertEqual(table.iloc[1]["fedprox accuracy 95% CI"], "[-0.235, 1.035]")
        self.assertEqual(table.iloc[1]["fedprox n"], 2)
        # fedprox is 0.05 better than fedavg on every seed. On dirichlet:0.1 the means are
        # equal (0.40) only because fedprox lacks seed 2; paired by seed, fedprox still wins.
        self.assertEqual(table["best"].tolist(), ["fedprox"] * 4)
        self.assertStartsWith(table.iloc[1]["comparison"], "fedprox is best: fedprox − fedavg")
        self.assertIn("over 2 paired seeds", table.iloc[1]["comparison"])

        markdown = (self.dir / "report" / "table.md").read_text()
        self.assertEqual(markdown, result.markdown)
        self.assertIn("| partition | fedavg | fedprox | comparison |", markdown)
        self.assertIn(
            "| iid | 0.600 ± 0.100 [0.352, 0.848] / 0.800 ± 0.100 [0.552, 1.048] (n=3) | "
            "**0.650 ± 0.100 [0.402, 0.898] / 0.850 ± 0.100 [0.602, 1.098] (n=3)** | "
            "fedprox is best: fedprox − fedavg accuracy +0.050, 95% CI [+0.050, +0.050] "
            "over 3 paired seeds |",
            markdown,
        )
        self.assertIn("paired comparison across seeds", markdown)
        self.assertLess(markdown.index("| iid |"), markdown.index("| classes:2 |"))

        cells = pd.read_csv(self.dir / "report" / "cells.csv")
        self.assertLen(cells, 4 * 2 * 3 - 1)
        self.assertEqual(set(cells["total_mb"]), {2.0, 4.0})
        names = (
            "accuracy_vs_alpha.png",
            "accuracy_vs_k.png",
            "algorithms.png",
            "accuracy_vs_mb.png",
        )
        for name in names:
            self.assertTrue(_is_png(self.dir / "report" / name), name)
        for name in ("iid", "dirichlet-0.1", "dirichlet-1", "classes-2"):
            self.assertTrue(_is_png(self.dir / "report" / "partitions" / f"{name}.png"), name)
        self.assertEqual(
            result.notes,
            [
                "1 cell(s) not finished (no summary.json), not in the report: "
                + "partition=dirichlet-0.1__algorithm=fedprox__model=cnn__seed=2"
            ],
        )

    def test_single_seed_shows_mean_only(self):
        _make_sweep(self.dir, ["iid"], ["fedavg"], ["cnn"], [1])
        result = report.write_report(self.dir)
        self.assertEqual(result.table.iloc[0]["fedavg accuracy"], "0.600")
        self.assertEqual(result.table.iloc[0]["fedavg n"], 1)
        self.assertEqual(result.table.iloc[0]["fedavg accuracy 95% CI"], "–")
        self.assertIn(
            "| iid | 0.600 / 0.800 (n=1) | only fedavg: nothing to compare |", result.markdown
        )
        self.assertTrue(np.isnan(result.aggregate.iloc[0]["test_accuracy_std"]))
        self.assertTrue(np.isnan(result.aggregate.iloc[0]["test_accuracy_ci_low"]))

    def test_clear_paired_winner_is_best(self):
        # Per seed fedprox is 0.030-0.040 better: paired difference 0.035, 95% CI
        # 0.035 ± 0.0124, though the seed-to-seed spread (std 0.05) dwarfs it.
        base = {0: 0.50, 1: 0.55, 2: 0.45}
        gain = {0: 0.030, 1: 0.040, 2: 0.035}
        accuracies = {("fedavg", s): a for s, a in base.items()}
        accuracies.update({("fedprox", s): a + gain[s] for s, a in base.items()})
        _sweep_of(self.dir, accuracies)
        result = report.write_report(self.dir)
        row = result.table.iloc[0]
        self.assertEqual(row["best"], "fedprox")
        self.assertEqual(
            row["comparison"],
            "fedprox is best: fedprox − fedavg accuracy +0.035, 95% CI [+0.023, +0.047] "
            "over 3 paired seeds",
        )
        self.assertIn("| **0.535 ± 0.053 [0.404, 0.666] / ", result.markdown)

    def test_difference_within_noise_is_a_tie(self):
        # fedprox's mean is 0.0047 higher, but per seed it is +0.004, -0.030, +0.040.
        base = {0: 0.50, 1: 0.55, 2: 0.45}
        change = {0: 0.004, 1: -0.030, 2: 0.040}
        accuracies = {("fedavg", s): a for s, a in base.items()}
        accuracies.update({("fedprox", s): a + change[s] for s, a in base.items()})
        _sweep_of(self.dir, accuracies)
        result = report.write_report(self.dir)
        row = result.table.iloc[0]
        self.assertEqual(row["best"], "")
        self.assertEqual(
            row["comparison"],
            "tie (fedprox, fedavg): fedprox − fedavg accuracy +0.005, 95% CI [-0.082, +0.092] "
            "over 3 paired seeds includes 0",
        )
        self.assertNotIn("| **", result.markdown)
        csv = pd.read_csv(self.dir / "report" / "table.csv", keep_default_na=False)
        self.assertEqual(csv["best"].tolist(), [""])
        self.assertStartsWith(csv["comparison"][0], "tie (fedprox, fedavg)")

    def test_one_seed_never_has_a_best(self):
        _sweep_of(self.dir, {("fedavg", 0): 0.40, ("fedprox", 0): 0.70})
        row = report.write_report(self.dir).table.iloc[0]
        self.assertEqual(row["best"], "")
        self.assertEqual(
            row["comparison"],
            "no best: 1 paired seed(s) of fedprox and fedavg; comparing needs 2 or more",
        )

    def test_loss_metric_prefers_lower(self):
        # fedavg has the higher accuracy on every seed, but also the higher loss (1.5).
        accuracies = {("fedavg", s): 0.7 + 0.01 * s for s in (0, 1, 2)}
        accuracies.update({("fedprox", s): 0.6 + 0.02 * s for s in (0, 1, 2)})
        _sweep_of(self.dir, accuracies)
        for cell in sweep.expand_grid(["iid"], ["fedavg"], ["cnn"], [0, 1, 2], {}):
            _write_cell(self.dir, cell, accuracies[("fedavg", cell.seed)], loss=1.5)
        self.assertEqual(report.write_report(self.dir).table["best"].tolist(), ["fedavg"])
        by_loss = report.write_report(self.dir, metric="test_loss")
        self.assertEqual(by_loss.table["best"].tolist(), ["fedprox"])
        self.assertIn("fedprox loss", by_loss.table.columns)
        self.assertIn("best loss", by_loss.markdown)
        self.assertFalse((self.dir / "report" / "loss_vs_alpha.png").exists())
        self.assertFalse((self.dir / "report" / "accuracy_vs_alpha.png").exists())

    def test_several_models_one_block_each_and_missing_cells(self):
        cells = sweep.expand_grid(
            ["iid", "dirichlet:0.5"], ["fedavg"], ["cnn", "resnet18"], [0], {}
        )
        state = sweep.SweepState(self.dir)
        state.merge({}, cells, {})
        state.save()
        for cell in cells:
            if cell.model == "resnet18" and cell.partition == "iid":
                continue  # Never ran.
            _write_cell(self.dir, cell, 0.5 if cell.model == "cnn" else 0.7)
        result = report.write_report(self.dir)
        self.assertEqual(
            result.table[["model", "partition"]].values.tolist(),
            [["cnn", "iid"], ["cnn", "dirichlet:0.5"], ["resnet18", "dirichlet:0.5"]],
        )
        self.assertIn("### model: cnn", result.markdown)
        self.assertIn("### model: resnet18", result.markdown)
        self.assertLess(
            result.markdown.index("### model: cnn"), result.markdown.index("### model: resnet18")
        )
        self.assertTrue(_is_png(self.dir / "report" / "algorithms.png"))

    def test_missing_plots_are_skipped_with_a_note(self):
        _make_sweep(self.dir, ["iid"], ["fedavg"], ["cnn"], [0])
        stale = self.dir / "report" / "accuracy_vs_k.png"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"old")
        result = report.write_report(self.dir)
        self.assertFalse((self.dir / "report" / "accuracy_vs_alpha.png").exists())
        self.assertFalse(stale.exists())
        self.assertTrue(any("skipped accuracy_vs_alpha.png" in n for n in result.notes))
        self.assertTrue(any("skipped accuracy_vs_k.png" in n for n in result.notes))
        self.assertTrue(_is_png(self.dir / "report" / "algorithms.png"))

    def test_heat_map_from_first_seed_without_totals(self):
        cells = _make_sweep(self.dir, ["dirichlet:1"], ["fedavg"], ["cnn"], [2, 0, 1])
        (cells[1].output_dir(self.dir) / "partition.csv").unlink()  # Seed 0: none; seed 1 next.
        calls = []
        real = plots.plot_class_counts

        def record(counts, path, title=""):
            calls.append((counts.copy(), pathlib.Path(path), title))
            return real(counts, path, title)

        with mock.patch.object(plots, "plot_class_counts", side_effect=record):
            report.write_report(self.dir)
        self.assertLen(calls, 1)
        counts, path, title = calls[0]
        self.assertEqual(path, self.dir / "report" / "partitions" / "dirichlet-1.png")
        self.assertIn("seed 1", title)
        self.assertEqual(counts.index.tolist(), ["0", "1"])
        self.assertEqual(counts.columns.tolist(), ["0", "1", "2"])
        self.assertEqual(counts.to_numpy().tolist(), [[11, 0, 5], [3, 7, 1]])
        self.assertTrue(_is_png(path))

    def test_no_finished_cell_is_an_error(self):
        cells = sweep.expand_grid(["iid"], ["fedavg"], ["cnn"], [0], {})
        _write_cell(self.dir, cells[0], 0.5, finished=False)
        with self.assertRaisesRegex(report.ReportError, "no finished cell.*run the sweep first"):
            report.write_report(self.dir)
        with self.assertRaisesRegex(report.ReportError, "does not exist"):
            report.write_report(self.dir / "nothing")
        with self.assertRaisesRegex(report.ReportError, "unknown metric"):
            report.write_report(self.dir, metric="f1")

    def test_markdown_helper_escapes_pipes(self):
        frame = pd.DataFrame({"a": ["x|y", 1.5], "b c": ["", "z"]})
        self.assertEqual(
            report.to_markdown(frame), "| a | b c |\n|---|---|\n| x\\|y |  |\n| 1.5 | z |"
        )


# Each hospital's accuracy on its own classes, by method (AUC is accuracy + 0.2). Against
# local-only, fine-tuning falls short at hospital 1 by 0.02 and FedPer holds everywhere
# (smallest margin +0.01 at hospital 1); against FedAvg both hold, with margin +0.02 and
# +0.01 at hospital 0.
_HOSPITALS = {
    "local-only": (0.55, 0.62, 0.58),
    "fedavg": (0.62, 0.56, 0.56),
    "fedavg + fine-tuning": (0.64, 0.60, 0.60),
    "fedper": (0.63, 0.63, 0.60),
}


def _arm(method, seed):
    accuracy = {str(h): v + _SEED_OFFSET[seed] for h, v in enumerate(_HOSPITALS[method])}
    return {"accuracy": accuracy, "auc": {h: v + 0.2 for h, v in accuracy.items()}}


def _hospital_sweep(sweep_dir):
    """label_exclusion x {fedavg, fedper} x 3 seeds; fedavg cells also fine-tune."""
    cells = sweep.expand_grid(["label_exclusion"], ["fedavg", "fedper"], ["cnn"], [0, 1, 2], {})
    state = sweep.SweepState(sweep_dir)
    state.merge({}, cells, {})
    state.save()
    for cell in cells:
        _write_cell(sweep_dir, cell, 0.5)
        path = cell.output_dir(sweep_dir) / "summary.json"
        summary = json.loads(path.read_text())
        arms = {"federated": _arm(cell.algorithm, cell.seed)}
        arms["local_only"] = _arm("local-only", cell.seed)
        if cell.algorithm == "fedavg":
            arms["personalized"] = _arm("fedavg + fine-tuning", cell.seed)
        summary["per_hospital"] = {"arms": arms}
        path.write_text(json.dumps(summary))


class HospitalReportTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = pathlib.Path(self.create_tempdir().full_path)

    def test_per_hospital_means_intervals_and_worst_over_seeds(self):
        _hospital_sweep(self.dir)
        result = report.write_report(self.dir)
        agg = result.hospitals
        self.assertEqual(
            list(dict.fromkeys(agg["method"])),
            ["local-only", "fedavg", "fedavg + fine-tuning", "fedper"],
        )
        self.assertEqual(list(dict.fromkeys(agg["hospital"])), ["0", "1", "2", "worst"])
        rows = agg.set_index(["method", "hospital"])
        for method, values in _HOSPITALS.items():
            for hospital, value in [*enumerate(values), ("worst", min(values))]:
                row = rows.loc[(method, str(hospital))]
                self.assertEqual(row["n"], 3)  # Local-only: three seeds, not six cells.
                self.assertAlmostEqual(row["accuracy_mean"], value)
                self.assertAlmostEqual(row["accuracy_ci_low"], value - _HALF_3_SEEDS, places=5)
                self.assertAlmostEqual(row["accuracy_ci_high"], value + _HALF_3_SEEDS, places=5)
                self.assertAlmostEqual(row["auc_mean"], value + 0.2)

    def test_verdicts_give_the_smallest_paired_difference(self):
        _hospital_sweep(self.dir)
        result = report.write_report(self.dir)
        verdicts = result.hospital_verdicts
        accuracy = verdicts[verdicts["metric"] == "accuracy"].set_index(["method", "reference"])
        for method, reference, margin, hospital in (
            ("fedavg + fine-tuning", "local-only", -0.02, "1"),
            ("fedavg + fine-tuning", "fedavg", 0.02, "0"),
            ("fedper", "local-only", 0.01, "1"),
            ("fedper", "fedavg", 0.01, "0"),
        ):
            row = accuracy.loc[(method, reference)]
            self.assertAlmostEqual(row["margin"], margin)
            self.assertEqual(row["hospital"], hospital)
            self.assertEqual(row["n"], 3)
            self.assertAlmostEqual(row["ci_low"], margin)  # The same difference every seed.
            self.assertEqual(row["at_least_as_good"], margin > 0)
        markdown = result.hospitals_markdown
        self.assertIn(
            "- fedper (accuracy): **at least as good as every reference at every hospital**",
            markdown,
        )
        self.assertIn("short of local-only at hospital 1 by 0.020", markdown)
        self.assertIn("| local-only | 0.550 [0.302, 0.798] |", markdown)
        out = self.dir / "report"
        self.assertEqual((out / "hospitals.md").read_text(), markdown)
        self.assertLen(pd.read_csv(out / "hospital_verdicts.csv"), 8)
        self.assertTrue(_is_png(out / "hospitals" / "cnn__label_exclusion.png"))

    def test_cells_of_several_sweeps_are_reported_together_through_links(self):
        _hospital_sweep(self.dir)
        whole = report.write_report(self.dir).hospitals
        linked = pathlib.Path(self.create_tempdir().full_path)
        (linked / "cells").mkdir()
        for cell in (self.dir / "cells").iterdir():
            (linked / "cells" / cell.name).symlink_to(cell)
        together = report.write_report(linked).hospitals  # No sweep.json there.
        pd.testing.assert_frame_equal(together, whole)

    def test_no_per_hospital_scores_no_tables(self):
        _hospital_sweep(self.dir)
        report.write_report(self.dir)
        _make_sweep(self.dir, ["iid"], ["fedavg"], ["cnn"], [0])  # Overwrites sweep.json.
        for path in self.dir.glob("cells/*label_exclusion*"):
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        result = report.write_report(self.dir)
        self.assertTrue(result.hospitals.empty)
        self.assertEqual(result.hospitals_markdown, "")
        self.assertFalse((self.dir / "report" / "hospitals.md").exists())
        self.assertFalse((self.dir / "report" / "hospital_verdicts.csv").exists())


class CliTest(absltest.TestCase):
    def _run(self, *args):
        return subprocess.run(
            [sys.executable, "-m", "experiments.report", *args],
            check=False,
            cwd=_ROOT,
            env=dict(os.environ, PYTHONPATH=str(_ROOT)),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_prints_markdown_and_writes_files(self):
        sweep_dir = pathlib.Path(self.create_tempdir().full_path)
        _make_sweep(sweep_dir, ["iid", "classes:2"], ["fedavg"], ["cnn"], [0, 1])
        result = self._run(f"--sweep_dir={sweep_dir}", "--metric=test_auc")
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout, (sweep_dir / "report" / "table.md").read_text())
        self.assertIn(
            "| classes:2 | 0.250 ± 0.071 [-0.385, 0.885] / 0.450 ± 0.071 [-0.185, 1.085] (n=2) | "
            "only fedavg: nothing to compare |",
            result.stdout,
        )
        self.assertIn("best AUC", result.stdout)
        self.assertIn("note: no finished dirichlet: cells; skipped auc_vs_alpha.png", result.stderr)
        self.assertTrue(_is_png(sweep_dir / "report" / "auc_vs_k.png"))

    def test_bad_input_exit_2_one_line(self):
        missing = pathlib.Path(self.create_tempdir().full_path) / "missing"
        for args, expected in (
            ([f"--sweep_dir={missing}"], "does not exist"),
            ([], "--sweep_dir is required"),
            ([f"--sweep_dir={missing}", "--metric=f1"], "metric"),
        ):
            result = self._run(*args)
            self.assertEqual(result.returncode, 2, msg=result.stderr)
            lines = result.stderr.strip().splitlines()
            self.assertLen(lines, 1, msg=result.stderr)
            self.assertStartsWith(lines[0], "error: ")
            self.assertIn(expected, lines[0])


if __name__ == "__main__":
    absltest.main()
