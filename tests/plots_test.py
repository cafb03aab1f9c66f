"""Tests for tff_vision.plots: valid PNGs, robustness to gaps, atomic writes."""

import pathlib
import warnings
from unittest import mock

import matplotlib.figure
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from absl.testing import absltest, parameterized

from tff_vision import plots

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics():
    rounds = np.arange(1, 7)
    eval_rows = rounds % 3 == 0
    return pd.DataFrame(
        {
            "round": rounds,
            "train_loss": [1.5, 1.2, np.nan, 0.9, 0.8, 0.7],
            "train_accuracy": [0.4, 0.5, np.nan, 0.6, 0.65, 0.7],
            "eval_loss": np.where(eval_rows, [1.0] * 6, np.nan),
            "eval_accuracy": np.where(eval_rows, [0.6] * 6, np.nan),
            "eval_auc": np.where(eval_rows, [0.8] * 6, np.nan),
        }
    )


class PlotsTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = pathlib.Path(self.create_tempdir().full_path)

    def assertValidPng(self, path, min_width=50, min_height=50):
        self.assertTrue(path.is_file(), path)
        self.assertEqual(path.read_bytes()[:8], _PNG_SIGNATURE)
        pixels = matplotlib.image.imread(path)
        self.assertEqual(pixels.ndim, 3)
        self.assertIn(pixels.shape[2], (3, 4))
        self.assertGreaterEqual(pixels.shape[1], min_width)
        self.assertGreaterEqual(pixels.shape[0], min_height)
        return pixels

    def assertOnlyFiles(self, *names):
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), sorted(names))
        self.assertEqual(plt.get_fignums(), [])

    def test_curves_with_nan_eval_rows_and_baselines(self):
        path = self.tmp / "curves.png"
        baselines = {"centralized": {"accuracy": 0.9, "loss": 0.3}, "local 0": {"accuracy": 0.5}}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = plots.plot_curves(_metrics(), path, baselines=baselines, title="fedavg")
        self.assertEqual(result, path)
        pixels = self.assertValidPng(path)
        self.assertGreater(pixels.shape[1], pixels.shape[0])  # two panels side by side
        self.assertOnlyFiles("curves.png")

    def test_curves_show_test_and_val_and_the_reported_round(self):
        metrics = _metrics().assign(
            val_auc=lambda m: m["eval_auc"] - 0.1, val_loss=lambda m: m["eval_loss"] + 0.1
        )
        figures = []
        with mock.patch.object(plots, "save_figure", lambda fig, path: figures.append(fig)):
            plots.plot_curves(metrics, self.tmp / "c.png", selected_round=3)
        acc_ax, loss_ax = figures[0].axes
        self.assertEqual(
            acc_ax.get_legend_handles_labels()[1],
            ["train accuracy", "test accuracy", "test AUC", "val AUC", "reported round"],
        )
        self.assertEqual(
            loss_ax.get_legend_handles_labels()[1],
            ["train loss", "test loss", "val loss", "reported round"],
        )
        np.testing.assert_array_equal(acc_ax.lines[-1].get_xdata(), [3, 3])
        plt.close(figures[0])

    @parameterized.named_parameters(
        ("train_only", pd.DataFrame({"round": [1, 2], "train_loss": [1.0, 0.5]})),
        ("eval_only_no_auc", pd.DataFrame({"round": [5], "eval_accuracy": [0.5]})),
        ("no_round_column", pd.DataFrame({"train_accuracy": [0.1, 0.2, 0.3]})),
        ("all_nan", pd.DataFrame({"round": [1, 2], "eval_loss": [np.nan, np.nan]})),
        ("empty", pd.DataFrame()),
    )
    def test_curves_missing_columns(self, metrics):
        path = plots.plot_curves(metrics, str(self.tmp / "c.png"), baselines={"x": {}})
        self.assertValidPng(path)
        self.assertOnlyFiles("c.png")

    def test_confusion_matrix_zero_row_and_long_names(self):
        confusion = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
        names = ["choroidal neovascularization", "diabetic macular edema", "normal"]
        path = self.tmp / "sub" / "confusion.png"
        with warnings.catch_warnings(), np.errstate(all="raise"):
            warnings.simplefilter("error")
            plots.plot_confusion_matrix(confusion, names, path, title="test")
        self.assertValidPng(path)
        self.assertEqual([p.name for p in path.parent.iterdir()], ["confusion.png"])
        self.assertEqual(plt.get_fignums(), [])

    def test_confusion_matrix_counts_and_shape_check(self):
        path = plots.plot_confusion_matrix(
            np.zeros((2, 2), np.int64), ["a", "b"], self.tmp / "z.png", normalize=False
        )
        self.assertValidPng(path)
        with self.assertRaisesRegex(ValueError, "3 class names"):
            plots.plot_confusion_matrix(np.eye(2), ["a", "b", "c"], self.tmp / "bad.png")
        self.assertOnlyFiles("z.png")

    def test_row_fractions(self):
        fractions = plots.row_fractions(np.array([[1, 3], [0, 0]]))
        np.testing.assert_array_equal(fractions, [[0.25, 0.75], [0.0, 0.0]])

    def test_truncate_label(self):
        self.assertEqual(plots.truncate_label("short"), "short")
        long = plots.truncate_label("x" * 40)
        self.assertEqual(len(long), 24)
        self.assertTrue(long.endswith("\u2026"))

    def test_class_counts(self):
        counts = pd.DataFrame(
            [[10, 0, 3], [0, 8, 4]], index=["client 0", "client 1"], columns=["a", "b", "c"]
        )
        path = plots.plot_class_counts(counts, self.tmp / "counts.png", title="partition")
        self.assertValidPng(path)
        self.assertOnlyFiles("counts.png")

    def test_existing_file_replaced(self):
        path = self.tmp / "curves.png"
        path.write_bytes(b"old")
        plots.plot_curves(_metrics(), path)
        self.assertValidPng(path)
        self.assertOnlyFiles("curves.png")

    def test_failed_write_keeps_old_file_and_no_temp(self):
        path = self.tmp / "curves.png"
        path.write_bytes(b"old contents")
        targets = []

        def broken_savefig(fig, fname, **kwargs):
            del fig, kwargs
            targets.append(pathlib.Path(fname))
            pathlib.Path(fname).write_bytes(_PNG_SIGNATURE + b"partial")
            raise OSError("disk full")

        patch = mock.patch.object(
            matplotlib.figure.Figure, "savefig", autospec=True, side_effect=broken_savefig
        )
        with patch, self.assertRaisesRegex(OSError, "disk full"):
            plots.plot_curves(_metrics(), path)
        self.assertLen(targets, 1)
        self.assertEqual(targets[0].parent, self.tmp)
        self.assertNotEqual(targets[0], path)
        self.assertEqual(path.read_bytes(), b"old contents")
        self.assertOnlyFiles("curves.png")


if __name__ == "__main__":
    absltest.main()
