"""Runs one federated experiment on MedMNIST: a federated algorithm in TFF plus optional baselines.

Hospitals (clients) each hold part of a MedMNIST training split, chosen by a
partition (e.g. label exclusion: each lacks some disease classes). One model
is trained with a federated algorithm (--algorithm: FedAvg, FedProx, FedOpt
variants, ...) as TFF computations, its client updates combined by
--aggregator (mean, DP-FedAvg, secure aggregation, compression, robust); with
--baselines=local,centralized the same architecture is also trained on each
client's data alone and on all data pooled, with the same number of passes.

Example (the README demo):

  python -m experiments.run --dataset=retinamnist --data_dir=../shared/medmnist \\
      --model=resnet18 --partition=label_exclusion --num_clients=3 \\
      --exclude="1;2;3" --baselines=local,centralized --output_dir=/tmp/r1

Other algorithms, e.g.:

  --algorithm=fedprox --proximal_strength=0.1
  --algorithm=fedadam --server_lr=0.01          (FedOpt; also fedyogi, fedadagrad)
  --algorithm=fedavgm --server_momentum=0.9
  --aggregator=dp --dp_noise_multiplier=0.5 --dp_clip=1.0   (epsilon in summary.json)

Outputs in --output_dir: flags.json, partition.csv, metrics.csv (one row per
round), summary.json, curves.png, confusion_matrix.png, tb/ (TensorBoard) and
checkpoints/. Rerunning the same command resumes from the last checkpoint.
Exit status: 0 done, 2 bad input (one-line error), 130 interrupted (143 on SIGTERM).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments import cli
from tff_vision import config as config_lib
from tff_vision import data as data_lib
from tff_vision import experiment, interrupts, models, partition, runtime

# One flag per ExperimentConfig field (help, choices and bounds are declared there).
cli.define_config_flags(config_lib.ExperimentConfig, module_name=cli.flags_module_name(__name__))

FLAGS = flags.FLAGS

_INPUT_ERRORS = (
    config_lib.ConfigError,
    data_lib.DataError,
    partition.PartitionError,
    models.ModelError,
)


def config_from_flags() -> config_lib.ExperimentConfig:
    """The `ExperimentConfig` the command line asks for.

    "{seed}" in --output_dir becomes the seed, so that a config file serves every
    seed: `--flagfile=experiments/configs/retina_best.cfg --seed=N`.
    """
    values = cli.config_values(config_lib.ExperimentConfig, FLAGS)
    values["output_dir"] = values["output_dir"].replace("{seed}", str(values["seed"]))
    return config_lib.config_from_dict(values)


def run_parsed(argv: list[str]) -> int:
    """Runs the experiment the parsed flags ask for; returns the exit status.

    0 done; 2 bad input, after one `error: ...` line on stderr; stopped by
    Ctrl-C, SIGTERM or SIGHUP (a scheduler's preemption), 128 + the signal
    (130, 143, 129) after a line saying how to resume. TFF's workers are
    stopped however it ends. `experiments.cell_host` runs sweep cells through
    this same function.
    """
    interrupts.install_interrupt_guard()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFF/TF info logs drown the progress lines.
    if len(argv) > 1:
        return _error(
            f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)"
        )
    try:
        setup = experiment.setup(config_from_flags())
    except _INPUT_ERRORS as e:
        return _error(str(e))
    try:
        with interrupts.signals_interrupt():
            experiment.run_setup(setup)
    except (config_lib.ConfigError, runtime.RuntimeSetupError) as e:  # E.g. a worker not up.
        return _error(str(e))
    except KeyboardInterrupt:
        runtime.shutdown()
        stopped = interrupts.stop_signal()
        print(
            f"interrupted ({stopped.name}): rerun the same command to resume from the last "
            "checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return 128 + stopped
    finally:
        runtime.shutdown()
    return 0


def _error(message: str) -> int:
    """Stops TFF's workers, prints the one-line error of bad input; returns 2."""
    runtime.shutdown()
    return cli.report_error(message)


def main(argv: list[str]) -> int:
    return run_parsed(argv)  # `app.run` exits with it.


def entry_point() -> None:
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry_point()
