"""Stopped and resumed runs end exactly where uninterrupted ones do, for every stateful algorithm.

SCAFFOLD (control variates), FedOpt (server Adam moments), FedBN (per-client
BatchNorm tables), FedPer and FedRep (per-client heads), Ditto (personal
models) and DP-FedAvg with adaptive clipping (clip-norm estimate, noise seed)
keep state beyond the model weights. Each case runs an
experiment to the end, then the same experiment again in a new directory,
stopped right after round 2 is checkpointed, and rerun. The stop is the runner's
Ctrl-C path (KeyboardInterrupt), except for the personalized algorithms, whose
per-client state is the most to lose: there a real `experiments.run` process
gets SIGKILL once round 2's checkpoint exists. Metrics of every round and the
final summary must match exactly. run_test.py covers SIGKILL for FedAvg.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import time

import fl_testing
import pandas as pd
import run_testing
from absl.testing import absltest, parameterized

from tff_vision import config as config_lib
from tff_vision import experiment, runtime

_ROUNDS = 4
_STOP_AFTER = 2
_COMMON = dict(
    fl_testing.RETINA_LABEL_EXCLUSION,
    rounds=_ROUNDS,
    eval_every=1,
    local_steps=4,
    client_optimizer="sgd",
    client_lr=0.05,
    client_lr_schedule="constant",
)
_TIMING = ["round_seconds", "seconds"]

_KILLED = ("fedper", "fedrep", "ditto")  # Stopped by SIGKILL of a runner process.
CASES = {
    "scaffold": dict(algorithm="scaffold", client_momentum=0.0, clients_per_round=2),
    "fedadam": dict(algorithm="fedadam", server_lr=0.01),
    "fedbn": dict(algorithm="fedbn", norm="batch"),
    "fedper": dict(algorithm="fedper", clients_per_round=2),
    "fedrep": dict(algorithm="fedrep", fedrep_head_epochs=2),
    "ditto": dict(algorithm="ditto", ditto_lambda=0.5, clients_per_round=2),
    "dp_adaptive_clip": dict(
        algorithm="fedavg",
        aggregator="dp",
        dp_clip="adaptive",
        dp_noise_multiplier=0.2,  # Adaptive clipping over 3 clients allows at most 0.3.
    ),
}


class ResumeTest(run_testing.RunnerTestCase):
    def _config(self, case, out):
        return config_lib.config_from_dict(dict(_COMMON, **CASES[case], output_dir=str(out)))

    @parameterized.named_parameters((name, name) for name in CASES)
    def test_stopped_run_resumes_exactly(self, case):
        quiet = lambda _: None  # noqa: E731
        full_dir, stopped_dir = self.tmp / f"{case}_full", self.tmp / f"{case}_stopped"
        full = experiment.run_setup(experiment.setup(self._config(case, full_dir)), printer=quiet)

        if case in _KILLED:
            self._kill_after_checkpoint(case, stopped_dir)
        else:
            with self.assertRaises(run_testing.Stop):
                experiment.run_setup(
                    experiment.setup(self._config(case, stopped_dir)),
                    printer=run_testing.stop_after_round("federated", _STOP_AFTER),
                )
        self.assertEqual(runtime.find_workers(owner_pid=os.getpid()), [])
        self.assertFalse((stopped_dir / "summary.json").exists())

        lines = []
        resumed = experiment.run_setup(
            experiment.setup(self._config(case, stopped_dir)), printer=lines.append
        )
        done = resumed["resumed_from_round"]
        self.assertIn(f"[federated] resuming after round {done}", "\n".join(lines))
        self.assertBetween(done, _STOP_AFTER, _ROUNDS - 1)
        for key in ("federated", "privacy", "confusion_matrix"):
            self.assertEqual(resumed.get(key), full.get(key), msg=key)
        pd.testing.assert_frame_equal(
            pd.read_csv(stopped_dir / "metrics.csv").drop(columns=_TIMING),
            pd.read_csv(full_dir / "metrics.csv").drop(columns=_TIMING),
        )

    def _kill_after_checkpoint(self, case, out):
        """Runs `case` as `python -m experiments.run` and SIGKILLs it after round 2's checkpoint."""
        settings = dict(_COMMON, **CASES[case], output_dir=out)
        proc = run_testing.start_runner(
            *run_testing.runner_flags(**settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run_testing.kill_after_checkpoint(proc, out, _STOP_AFTER)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        deadline = time.monotonic() + 30
        while runtime.find_workers(owner_pid=proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(runtime.find_workers(owner_pid=proc.pid), [])


class OutputDirSettingsTest(absltest.TestCase):
    def test_run_recorded_before_weight_standardization_resumes_only_without_it(self):
        # Runs from before the setting existed trained plain GroupNorm convolutions.
        out = pathlib.Path(self.create_tempdir().full_path)
        config = config_lib.ExperimentConfig(output_dir=str(out), exclude="1;2;3")
        recorded = config.result_fields()
        del recorded["weight_standardization"]
        (out / "flags.json").write_text(json.dumps(recorded))
        with self.assertRaisesRegex(
            config_lib.ConfigError, "weight_standardization: False -> True"
        ):
            experiment.prepare_output_dir(config)
        without = dataclasses.replace(config, weight_standardization=False)
        self.assertEqual(experiment.prepare_output_dir(without), out)
        self.assertEqual(json.loads((out / "flags.json").read_text()), recorded)

    def test_run_recorded_before_select_resumes_only_reporting_its_last_round(self):
        # Runs from before the setting existed reported their last round, with no val scores.
        out = pathlib.Path(self.create_tempdir().full_path)
        config = config_lib.ExperimentConfig(output_dir=str(out), exclude="1;2;3")
        recorded = config.result_fields()
        del recorded["select"]
        (out / "flags.json").write_text(json.dumps(recorded))
        with self.assertRaisesRegex(config_lib.ConfigError, "select: 'final' -> 'best_val'"):
            experiment.prepare_output_dir(config)
        final = dataclasses.replace(config, select="final")
        self.assertEqual(experiment.prepare_output_dir(final), out)


if __name__ == "__main__":
    absltest.main()
