"""The experiment runner end to end on real RetinaMNIST, killed and resumed, and misused.

Every run here is a real `python -m experiments.run` subprocess (a small CNN
and few rounds keep it quick), so these tests also prove that no TFF
`worker_binary` outlives the runner on any exit path.
"""

import json
import pathlib
import signal
import subprocess
import time

import fl_testing
import numpy as np
import pandas as pd
import psutil
import run_testing
from absl.testing import absltest, parameterized
from run_testing import run_runner as _run

from tff_vision import runtime

_SHARED = fl_testing.SHARED_MEDMNIST
_BASE_FLAGS = run_testing.runner_flags(
    rounds=4,
    local_epochs=1,
    eval_every=2,
    client_lr=0.05,
    baselines="local,centralized",
    personalize_epochs=1,
)
_TIMING_COLUMNS = ("round_seconds", "seconds")


def _workers_of(pid):
    return runtime.find_workers(owner_pid=pid)


def _wait_no_workers(pid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while _workers_of(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _workers_of(pid)


def _comparable_metrics(output_dir):
    frame = pd.read_csv(pathlib.Path(output_dir) / "metrics.csv")
    return frame.drop(columns=[c for c in _TIMING_COLUMNS if c in frame.columns])


def _results(output_dir):
    summary = json.loads((pathlib.Path(output_dir) / "summary.json").read_text())
    return {k: summary[k] for k in ("federated", "local_only", "centralized", "personalized")}


class RunnerTest(run_testing.RunnerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.reference_dir = cls.tmp / "reference"
        cls.reference = _run(*_BASE_FLAGS, f"--output_dir={cls.reference_dir}")

    def test_end_to_end_outputs(self):
        result, out = self.reference, self.reference_dir
        summary = self.assertFinished(result, out)
        for name in (
            "flags.json",
            "partition.csv",
            "metrics.csv",
            "summary.json",
            "curves.png",
            "confusion_matrix.png",
            "per_hospital.png",
        ):
            self.assertTrue((out / name).is_file(), name)
        self.assertTrue(any((out / "tb").rglob("events.out.tfevents.*")))
        self.assertTrue(any((out / "checkpoints" / "federated").iterdir()))
        self.assertEqual(list(out.glob("**/*.tmp*")), [])

        fed = summary["federated"]
        self.assertEqual(fed["rounds"], 4)
        self.assertEqual(sorted(fed["per_client_subset_accuracy"]), ["0", "1", "2"])
        self.assertEqual(sorted(summary["local_only"]), ["0", "1", "2"])
        self._check_reported_numbers(summary, out)
        self.assertGreater(summary["wall_seconds"], 0)
        # Subset accuracy by hand from the saved confusion matrix: client i lacks class i+1.
        confusion = summary["confusion_matrix"]
        for client, excluded in (("0", 1), ("1", 2), ("2", 3)):
            rows = [r for c, r in enumerate(confusion) if c != excluded]
            correct = sum(r[c] for c, r in enumerate(confusion) if c != excluded)
            self.assertAlmostEqual(
                fed["per_client_subset_accuracy"][client],
                correct / sum(map(sum, rows)),
                places=6,
            )

        # Each hospital's own model per arm, on its own classes: local-only is model k at k.
        arms = summary["per_hospital"]["arms"]
        self.assertEqual(list(arms), ["federated", "local_only", "centralized", "personalized"])
        tuned = summary["personalized"]
        self.assertEqual((tuned["epochs"], tuned["base_round"]), (1, 4))
        self.assertEqual(tuned, json.loads((out / "personalized.json").read_text()))
        for client in ("0", "1", "2"):
            self.assertEqual(
                arms["personalized"]["accuracy"][client],
                tuned["per_client_subset_accuracy"][client],
            )
            self.assertEqual(
                tuned["per_client"][client]["subset_accuracy"],
                tuned["per_client_subset_accuracy"][client],
            )
        for client in ("0", "1", "2"):
            own = summary["local_only"][client]["per_client_subset_accuracy"][client]
            self.assertEqual(arms["local_only"]["accuracy"][client], own)
            self.assertEqual(
                arms["federated"]["accuracy"][client], fed["per_client_subset_accuracy"][client]
            )
        self.assertEqual(
            arms["federated"]["worst_accuracy"], min(fed["per_client_subset_accuracy"].values())
        )
        self.assertEqual(fed["model"], "the global model (the server's after each round)")

        partition = pd.read_csv(out / "partition.csv", index_col=0)
        self.assertEqual(partition.loc["total", "total"], 1080)
        for client, excluded in (("0", "1"), ("1", "2"), ("2", "3")):
            self.assertEqual(partition.loc[client, excluded], 0)

        metrics = pd.read_csv(out / "metrics.csv", float_precision="round_trip")
        self.assertEqual(metrics["round"].tolist(), [1, 2, 3, 4])
        self.assertEqual(metrics["eval_accuracy"].notna().tolist(), [False, True, False, True])
        self.assertEqual(metrics["val_auc"].notna().tolist(), [False, True, False, True])
        self.assertEqual(metrics["eval_accuracy"].iloc[-1], fed["final"]["test_accuracy"])
        self.assertTrue((metrics["train_examples"] == 1080).all())
        self._check_selection(summary, metrics)

        # Progress lines on the terminal: round, loss, accuracy, s/round, ETA.
        self.assertRegex(result.stdout, r"\[federated\] round 4/4 .*loss .*acc .*s/round .*ETA")
        self.assertIn("centralized", result.stdout)
        self.assertNotIn("Traceback", result.stderr)

    def _check_selection(self, summary, metrics):
        """Every result reports the round of best val AUC (the first of ties), with intervals."""
        evaluated = metrics[metrics["val_auc"].notna()]
        best = evaluated.loc[evaluated["val_auc"].idxmax()]
        fed = summary["federated"]
        self.assertEqual(fed["selected_round"], best["round"])
        for key in ("accuracy", "auc"):
            self.assertEqual(fed[f"test_{key}"], best[f"eval_{key}"])
            self.assertEqual(fed[f"val_{key}"], best[f"val_{key}"])
        local = {f"local_{c}": r for c, r in summary["local_only"].items()}
        for name, result in dict(local, centralized=summary["centralized"]).items():
            log = pd.read_csv(self.reference_dir / "baselines" / f"{name}.csv")
            self.assertEqual(log["round"].tolist(), [1, 2, 3, 4])
            self.assertEqual(result["selected_round"], log["round"][log["val_auc"].idxmax()])
        for name, result in dict(local, federated=fed, centralized=summary["centralized"]).items():
            self.assertEqual(result["select"], "best_val", msg=name)
            self.assertEqual(result["final"]["round"], 4, msg=name)
            self.assertBetween(result["final"]["test_accuracy"], 0.0, 1.0)
            for key in ("test_accuracy", "test_auc"):
                low, high = result["ci95"][key]
                self.assertBetween(result[key], low, high, msg=name)
                self.assertLess(high - low, 0.2, msg=name)

    def _check_reported_numbers(self, summary, out):
        """Each arm's numbers are those its per-round log holds for the reported round.

        The federated model's test and val metrics are metrics.csv's row of its selected
        round (and its last row under "final"); each baseline's val metrics are its
        baselines/<name>.csv row of its selected round; every test accuracy counts whole
        images of the 400 in the test split, and the confusion matrix's rows are the
        test split's true class counts.
        """
        metrics = pd.read_csv(out / "metrics.csv", float_precision="round_trip")
        fed = summary["federated"]
        arms = {"federated": (fed, metrics), "centralized": (summary["centralized"], None)}
        arms.update({f"local_{c}": (r, None) for c, r in summary["local_only"].items()})
        for name, (result_, log) in arms.items():
            if log is None:
                log = pd.read_csv(out / "baselines" / f"{name}.csv", float_precision="round_trip")
            row = log[log["round"] == result_["selected_round"]].iloc[0]
            for key in ("val_accuracy", "val_auc"):
                self.assertEqual(result_[key], row[key], msg=(name, key))
            for accuracy in (result_["test_accuracy"], result_["final"]["test_accuracy"]):
                self.assertAlmostEqual(accuracy * 400, round(accuracy * 400), places=6, msg=name)
        selected = metrics[metrics["round"] == fed["selected_round"]].iloc[0]
        for final, row in ((False, selected), (True, metrics.iloc[-1])):
            reported = fed["final"] if final else fed
            for key in ("accuracy", "auc", "loss"):
                self.assertEqual(reported[f"test_{key}"], row[f"eval_{key}"], msg=(final, key))
            for client, accuracy in reported["per_client_subset_accuracy"].items():
                self.assertEqual(accuracy, row[f"eval_subset_accuracy/{client}"], msg=client)
        confusion = np.array(summary["confusion_matrix"])
        with np.load(_SHARED / "retinamnist.npz") as official:
            test_labels = official["test_labels"].reshape(-1)
        np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(test_labels))
        self.assertEqual(np.trace(confusion), round(fed["test_accuracy"] * 400))

    def test_rerun_of_finished_run_recomputes_nothing(self):
        before = _results(self.reference_dir)
        again = _run(*_BASE_FLAGS, f"--output_dir={self.reference_dir}")
        self.assertEqual(again.returncode, 0, msg=again.stderr[-3000:])
        self.assertNotIn("[federated] round", again.stdout)
        self.assertIn("finished earlier", again.stdout)
        self.assertEqual(_results(self.reference_dir), before)

    def test_killed_run_resumes_to_identical_results(self):
        out = self.tmp / "killed"
        proc = run_testing.start_runner(
            *_BASE_FLAGS,
            f"--output_dir={out}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        workers = []
        run_testing.kill_after_checkpoint(
            proc, out, 2, before_kill=lambda: workers.extend(_workers_of(proc.pid))
        )
        self.assertLen(workers, 1)
        self.assertEqual(_wait_no_workers(proc.pid), [])
        self.assertFalse(any(psutil.pid_exists(p) for p in workers if _alive(p)))
        self.assertFalse((out / "summary.json").exists())

        resumed = _run(*_BASE_FLAGS, f"--output_dir={out}")
        summary = self.assertFinished(resumed, out)
        self.assertIn("resuming after round", resumed.stdout)
        self.assertGreaterEqual(summary["resumed_from_round"], 2)
        self.assertEqual(_results(out), _results(self.reference_dir))
        pd.testing.assert_frame_equal(
            _comparable_metrics(out), _comparable_metrics(self.reference_dir)
        )

    def test_two_local_workers_give_the_single_worker_results(self):
        out = self.tmp / "two_workers"
        # Only the centralized baseline here: the reference trained it on the model and
        # optimizer its three local baselines used before (reset in between), this run on
        # fresh ones, so equal results show the reset is complete.
        # Fresh workers after every round: results stay the same.
        # --select=final: every result is then the last round's, the reference's "final".
        result = _run(
            *_BASE_FLAGS,
            "--baselines=centralized",
            "--local_workers=2",
            "--restart_workers_every=1",
            "--select=final",
            f"--output_dir={out}",
        )
        summary = self.assertFinished(result, out)
        self.assertIn("TFF workers: unix:", result.stdout)
        self.assertIn("[federated] fresh TFF worker(s) after round 1", result.stdout)
        self.assertEqual(
            sorted(p.name for p in out.glob("worker_*.log")), ["worker_0.log", "worker_1.log"]
        )
        reference = _results(self.reference_dir)
        fed, centralized = summary["federated"], summary["centralized"]
        self.assertEqual((fed["select"], fed["selected_round"]), ("final", 4))
        for key in ("test_accuracy", "test_auc"):
            self.assertAlmostEqual(fed[key], reference["federated"]["final"][key], places=4)
            self.assertEqual(fed[key], fed["final"][key])
        self.assertEqual(centralized["final"], reference["centralized"]["final"])
        self.assertEqual((centralized["select"], centralized["selected_round"]), ("final", 4))
        for key in ("test_accuracy", "test_auc", "test_loss"):
            self.assertEqual(centralized[key], reference["centralized"]["final"][key])
        metrics, expected = _comparable_metrics(out), _comparable_metrics(self.reference_dir)
        pd.testing.assert_frame_equal(metrics, expected, atol=1e-4, rtol=1e-4)

    def test_ctrl_c_and_sigterm_stop_cleanly_and_leave_no_worker(self):
        for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with self.subTest(signal.Signals(signum).name):
                out = self.tmp / f"interrupted_{signum}"
                proc = run_testing.start_runner(
                    *_BASE_FLAGS,
                    "--rounds=50",
                    "--worker_concurrency=1",
                    f"--output_dir={out}",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                run_testing.wait_for_checkpoint(proc, out, 1)
                (worker,) = _workers_of(proc.pid)  # Serving the run, one computation at a time.
                self.assertIn(
                    "--max_concurrent_computation_calls=1", psutil.Process(worker).cmdline()
                )
                proc.send_signal(signum)
                _, stderr = proc.communicate(timeout=60)
                self.assertEqual(proc.returncode, status, msg=stderr[-2000:])
                self.assertIn(
                    f"interrupted ({signal.Signals(signum).name}): rerun the same command to "
                    "resume",
                    stderr,
                )
                # Values TFF releases after the channel closed raise nothing (runtime's stub).
                self.assertNotIn("Traceback", stderr)
                self.assertEqual(_wait_no_workers(proc.pid), [])


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class BadInputTest(run_testing.RunnerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        corrupt = cls.tmp / "corrupt"
        corrupt.mkdir()
        data = (_SHARED / "retinamnist.npz").read_bytes()
        (corrupt / "retinamnist.npz").write_bytes(data[: len(data) // 2])
        (cls.tmp / "a_file").write_text("")

    def _flags(self, **overrides):
        flags = {f.split("=", 1)[0]: f for f in _BASE_FLAGS}
        flags["--output_dir"] = f"--output_dir={self.tmp / 'out'}"
        for name, value in overrides.items():
            flags[f"--{name}"] = f"--{name}={value}"
        return list(flags.values())

    @parameterized.named_parameters(
        ("unknown_dataset", dict(dataset="nosuchmnist"), "nosuchmnist"),
        ("unknown_model", dict(model="vgg16"), "vgg16"),
        ("rounds_zero", dict(rounds=0), "rounds"),
        ("bad_exclude_class", dict(exclude="1;9;3"), "9"),
        ("bad_exclude_clients", dict(exclude="1;2"), "exclude"),
        ("class_excluded_everywhere", dict(exclude="1;1;1"), "1"),
        ("missing_file", dict(data_dir="{tmp}/empty"), "retinamnist.npz"),
        ("corrupt_file", dict(data_dir="{tmp}/corrupt"), "md5"),
        ("unwritable_output_dir", dict(output_dir="{tmp}/a_file/out"), "output_dir"),
        ("bad_lr", dict(client_lr=-1), "client_lr"),
        ("bad_worker_address", dict(workers="localhost"), "host:port"),
        (
            "scaffold_on_workers",
            dict(
                algorithm="scaffold",
                client_optimizer="sgd",
                client_momentum=0,
                client_lr_schedule="constant",
                local_workers=2,
            ),
            "--local_workers",
        ),
    )
    def test_one_line_error_exit_2(self, overrides, expected):
        overrides = {k: str(v).format(tmp=self.tmp) for k, v in overrides.items()}
        (self.tmp / "empty").mkdir(exist_ok=True)
        result = _run(*self._flags(**overrides), timeout=120)
        self.assertOneLineError(result, expected)
        self.assertFalse((self.tmp / "out" / "summary.json").exists())

    def test_changed_flags_refuse_to_resume_and_corrupt_nothing(self):
        out = self.tmp / "existing"
        out.mkdir()
        previous = {"dataset": "retinamnist", "rounds": 99}
        (out / "flags.json").write_text(json.dumps(previous))
        (out / "summary.json").write_text('{"kept": true}')
        result = _run(*self._flags(output_dir=out), timeout=120)
        self.assertEqual(result.returncode, 2, msg=result.stderr[-2000:])
        self.assertIn("other settings", result.stderr)
        self.assertEqual(json.loads((out / "flags.json").read_text()), previous)
        self.assertEqual((out / "summary.json").read_text(), '{"kept": true}')
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["flags.json", "summary.json"])


if __name__ == "__main__":
    absltest.main()
