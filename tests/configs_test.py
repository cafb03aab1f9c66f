"""The shipped experiment configs (`experiments/configs/*.cfg`) parse into valid settings."""

import pathlib

from absl import flags
from absl.testing import absltest, parameterized

from experiments import cli
from experiments import run as run_lib  # Defines the experiments.run flags.

_CONFIGS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "experiments/configs").glob("*.cfg")
)


def _config(*argv):
    """The runner's config for `argv`; every flag is back at its default afterwards."""
    flags.FLAGS.unparse_flags()
    try:
        cli.parse_flags(["experiments.run", *argv])
        return run_lib.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
        flags.FLAGS.mark_as_parsed()  # As conftest leaves them: later tests read FLAGS.


class ConfigFilesTest(parameterized.TestCase):
    def test_there_are_configs(self):
        self.assertGreaterEqual(len(_CONFIGS), 3)

    @parameterized.parameters(*_CONFIGS)
    def test_parses_and_validates(self, path):
        config = _config(f"--flagfile={path}", "--seed=2")
        config.validate()
        self.assertEqual(config.seed, 2)
        self.assertTrue(config.output_dir)

    def test_seed_in_the_output_dir(self):
        config = _config("--output_dir=runs/x/seed_{seed}", "--seed=3")
        self.assertEqual(config.output_dir, "runs/x/seed_3")
        self.assertEqual(_config("--output_dir=runs/plain").output_dir, "runs/plain")


if __name__ == "__main__":
    absltest.main()
