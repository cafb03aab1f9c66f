"""ExperimentConfig: settings declared once, the flags generated from them, the checks."""

import dataclasses
import subprocess
import sys

from absl import flags
from absl.testing import absltest, parameterized

from experiments import cli
from tff_vision import config as config_lib
from tff_vision import settings

_SECTIONS = (
    config_lib.DataSettings,
    config_lib.PartitionSettings,
    config_lib.ModelSettings,
    config_lib.ClientOptimizerSettings,
    config_lib.ServerOptimizerSettings,
    config_lib.AlgorithmSettings,
    config_lib.PrivacySettings,
    config_lib.ScheduleSettings,
    config_lib.RuntimeSettings,
    config_lib.OutputSettings,
)


def _flag_values(*argv):
    values = flags.FlagValues()
    cli.define_config_flags(config_lib.ExperimentConfig, "experiments.run", flag_values=values)
    values(["prog", *argv])
    return values


def _valid(**overrides):
    return config_lib.ExperimentConfig(output_dir="/tmp/unused", exclude="1;2;3", **overrides)


class DeclarationTest(absltest.TestCase):
    def test_sections_hold_every_field_once_in_order(self):
        names = [f.name for section in _SECTIONS for f in dataclasses.fields(section)]
        self.assertEqual(names, [f.name for f in dataclasses.fields(config_lib.ExperimentConfig)])
        self.assertLen(set(names), len(names))

    def test_every_setting_has_help(self):
        for option in settings.options(config_lib.ExperimentConfig):
            self.assertTrue(option.help.strip(), msg=option.name)

    def test_importing_config_loads_no_tensorflow(self):
        code = (
            "import sys; import tff_vision.config as c; c.ExperimentConfig().result_fields(); "
            "print('tensorflow' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertEqual(out.stdout.split(), ["False"], msg=out.stderr[-2000:])

    def test_result_fields_leave_out_paths_and_workers(self):
        fields = config_lib.ExperimentConfig(baselines=("local",)).result_fields()
        left_out = (
            "data_dir",
            "output_dir",
            "workers",
            "local_workers",
            "restart_workers_every",
            "worker_concurrency",
            "lean_memory",
        )
        for name in left_out:
            self.assertNotIn(name, fields)
        self.assertEqual(fields["baselines"], ["local"])
        self.assertLen(fields, len(dataclasses.fields(config_lib.ExperimentConfig)) - len(left_out))


class FlagsTest(absltest.TestCase):
    def test_flag_kinds_defaults_and_bounds(self):
        values = _flag_values()
        defaults = config_lib.ExperimentConfig()
        for field in dataclasses.fields(config_lib.ExperimentConfig):
            self.assertIn(field.name, values, msg=field.name)
        kinds = {
            "model": "string enum",
            "aggregator": "string enum",
            "select": "string enum",
            "baselines": "comma separated list of strings",
            "workers": "comma separated list of strings",
            "mixed_precision": "bool",
            "dataset": "string",
            "rounds": "int",
            "client_lr": "float",
        }
        self.assertEqual({name: values[name].flag_type() for name in kinds}, kinds)
        self.assertEqual(values["rounds"].default, defaults.rounds)
        self.assertEqual(values["select"].default, "best_val")  # MedMNIST's protocol.
        self.assertIsNone(values["output_dir"].default)
        self.assertIsNone(values["data_dir"].default)
        with self.assertRaises(flags.IllegalFlagValueError):
            _flag_values("--rounds=0")
        with self.assertRaises(flags.IllegalFlagValueError):
            _flag_values("--model=vgg16")
        names = {f.name for f in values.flags_by_module_dict()["experiments.run"]}
        self.assertEqual(names, {f.name for f in dataclasses.fields(config_lib.ExperimentConfig)})

    def test_flags_give_the_config(self):
        values = _flag_values(
            "--rounds=3", "--baselines=local,centralized,local", "--workers=h:1,h:2"
        )
        config = config_lib.config_from_dict(cli.config_values(config_lib.ExperimentConfig, values))
        self.assertEqual(
            config,
            config_lib.ExperimentConfig(
                rounds=3, baselines=("local", "centralized"), workers=("h:1", "h:2")
            ),
        )
        self.assertEqual(config.output_dir, "")


class ValidateTest(parameterized.TestCase):
    def test_valid_config_passes(self):
        _valid().validate()

    @parameterized.named_parameters(
        ("rounds", dict(rounds=0), "--rounds must be >= 1, got 0; pass e.g. --rounds=10"),
        ("clients_per_round", dict(clients_per_round=-1), "--clients_per_round must be >= 0 (0"),
        ("model", dict(model="vgg16"), "unknown --model 'vgg16'; use one of: cnn"),
        ("baseline", dict(baselines=("remote",)), "unknown --baselines entry 'remote'"),
        ("select", dict(select="best_test"), "unknown --select 'best_test'; use one of: best_val"),
        ("size", dict(size=30), "--size must be one of 28, 64, 128, 224 for MedMNIST"),
        ("stem", dict(model="cnn", stem="cifar"), "--stem applies to resnet18 only"),
        ("client_lr", dict(client_lr=0), "--client_lr must be > 0"),
        ("label_smoothing", dict(label_smoothing=1.0), "--label_smoothing must be in [0, 1)"),
        ("ema_decay", dict(ema_decay=1.0), "--ema_decay must be in [0, 1)"),
        (
            "ema_own_models",
            dict(algorithm="fedper", client_lr_schedule="constant", ema_decay=0.9),
            "--algorithm=fedper scores each client's own model, and --ema_decay averages",
        ),
        ("server_beta2", dict(server_beta2=1.0), "--server_beta2 must be in [0, 1)"),
        ("fedprox", dict(algorithm="fedprox"), "--algorithm=fedprox needs --proximal_strength"),
        ("fedbn", dict(algorithm="fedbn"), "--algorithm=fedbn needs --norm=batch"),
        ("heterogeneity", dict(step_heterogeneity="proportional"), "needs --local_steps > 0"),
        ("dp_delta", dict(dp_delta=1.5), "--dp_delta must be in (0, 1)"),
        ("dp_clip", dict(dp_clip="big"), "--dp_clip must be a positive number"),
        ("workers", dict(workers=("localhost",)), "bad --workers entry 'localhost'"),
        ("output_dir", dict(output_dir=""), "--output_dir is required"),
        ("dropout", dict(client_dropout=1.0), "--client_dropout must be in [0, 1), got 1.0"),
        ("partial_work", dict(partial_work=2.0), "--partial_work must be in [0, 1], got 2.0"),
        (
            "dropout_dp",
            dict(client_dropout=0.5, aggregator="dp"),
            "--client_dropout with --aggregator=dp: the accountant assumes a fixed number",
        ),
        ("ditto_lambda", dict(ditto_lambda=-1.0), "--ditto_lambda must be >= 0, got -1.0"),
        ("personalize", dict(personalize_epochs=-1), "--personalize_epochs must be >= 0"),
    )
    def test_one_line_error(self, overrides, expected):
        config = dataclasses.replace(_valid(), **overrides)
        with self.assertRaises(config_lib.ConfigError) as raised:
            config.validate()
        self.assertIn(expected, str(raised.exception))
        self.assertNotIn("\n", str(raised.exception))


if __name__ == "__main__":
    absltest.main()
