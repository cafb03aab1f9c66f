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
Exit status: 0 done, 2 bad input (one-line error), 130 interrupted.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments.cli import fail, parse_flags
from tff_vision import config as config_lib
from tff_vision import data as data_lib
from tff_vision import devices, experiment, interrupts, models, partition, privacy, runtime
from tff_vision.aggregators import AGGREGATORS
from tff_vision.algorithms import ALGORITHM_INFO, ALGORITHMS, OPTIMIZERS, SCHEDULES, fedopt
from tff_vision.client_data import AUGMENTATIONS

_DEFAULTS = config_lib.ExperimentConfig()

# Data and partition.
flags.DEFINE_string(
    "dataset",
    _DEFAULTS.dataset,
    "MedMNIST 2D dataset name (e.g. retinamnist, octmnist), or tfds:NAME for a TensorFlow "
    "Datasets image classification set (e.g. tfds:cifar10).",
)
flags.DEFINE_integer(
    "size",
    _DEFAULTS.size,
    f"Image size in pixels: one of {', '.join(map(str, data_lib.SIZES))} for MedMNIST; for "
    f"tfds: sets, images are resized to size x size ({data_lib.TFDS_SIZE_RANGE[0]}.."
    f"{data_lib.TFDS_SIZE_RANGE[1]}; the native size keeps them as they are).",
)
flags.DEFINE_string(
    "data_dir",
    None,
    f"Directory with the .npz files. Default: ${data_lib.DATA_DIR_ENV}, else data/.",
)
flags.DEFINE_string(
    "partition",
    _DEFAULTS.partition,
    f"How training data is split over clients: {', '.join(partition.VALID_SPECS)}.",
)
flags.DEFINE_integer("num_clients", _DEFAULTS.num_clients, "Number of clients.", lower_bound=1)
flags.DEFINE_string(
    "exclude",
    _DEFAULTS.exclude,
    "label_exclusion only: excluded classes per client, ';' between clients and ',' "
    "within one, e.g. '1;2;3' (client 0 lacks class 1, ...) or '1,2;;3'.",
)
# Model.
flags.DEFINE_enum("model", _DEFAULTS.model, models.MODEL_NAMES, "Architecture.")
flags.DEFINE_enum(
    "norm", _DEFAULTS.norm, models.NORMS, "Normalization layers (group is the FL default)."
)
flags.DEFINE_bool(
    "weight_standardization",
    _DEFAULTS.weight_standardization,
    "Weight-standardize the convolutions that feed GroupNorm (GroupNorm + WS, as Big "
    "Transfer); no effect with --norm=batch or none.",
)
flags.DEFINE_enum(
    "stem",
    _DEFAULTS.stem,
    models.STEMS,
    "ResNet-18 stem: imagenet (7x7/2 + pool), small (3x3/2), cifar (3x3/1); auto picks "
    "imagenet from 128px.",
)
# Federated training.
flags.DEFINE_enum(
    "algorithm",
    _DEFAULTS.algorithm,
    ALGORITHMS,
    "Federated algorithm: "
    + "; ".join(f"{name}: {info.description}" for name, info in ALGORITHM_INFO.items())
    + ".",
)
flags.DEFINE_float(
    "proximal_strength",
    _DEFAULTS.proximal_strength,
    "FedProx mu (> 0, required by --algorithm=fedprox; ignored otherwise): clients minimize "
    "loss + mu/2 ||w - w_global||^2. Typical 0.001 to 1.",
)
flags.DEFINE_integer("rounds", _DEFAULTS.rounds, "Federated rounds.", lower_bound=1)
flags.DEFINE_integer(
    "clients_per_round",
    _DEFAULTS.clients_per_round,
    "Clients sampled per round; 0 = all.",
    lower_bound=0,
)
flags.DEFINE_integer(
    "local_epochs", _DEFAULTS.local_epochs, "Passes over local data per round.", lower_bound=1
)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Client batch size.", lower_bound=1)
flags.DEFINE_enum("augment", _DEFAULTS.augment, AUGMENTATIONS, "Training augmentation.")
flags.DEFINE_enum("client_optimizer", _DEFAULTS.client_optimizer, OPTIMIZERS, "Client optimizer.")
flags.DEFINE_float("client_lr", _DEFAULTS.client_lr, "Client learning rate.")
flags.DEFINE_float("client_momentum", _DEFAULTS.client_momentum, "Client SGD momentum.")
flags.DEFINE_enum(
    "client_lr_schedule",
    _DEFAULTS.client_lr_schedule,
    SCHEDULES,
    "Client learning rate over rounds: constant, or cosine decay towards 0 at the last round.",
)
flags.DEFINE_enum(
    "server_optimizer",
    _DEFAULTS.server_optimizer,
    OPTIMIZERS,
    "Server optimizer of fedavg/fedprox (fedavgm, fedadam, fedyogi, fedadagrad set their own).",
)
flags.DEFINE_float(
    "server_lr",
    _DEFAULTS.server_lr,
    "Server learning rate (1.0 = plain FedAvg). fedadam/fedyogi/fedadagrad use "
    f"{fedopt.DEFAULT_ADAPTIVE_SERVER_LR} when this is left at 1.0; tune in 1e-3 to 1e-1.",
)
flags.DEFINE_float(
    "server_momentum",
    _DEFAULTS.server_momentum,
    f"Server SGD momentum; --algorithm=fedavgm uses {fedopt.DEFAULT_FEDAVGM_MOMENTUM} when "
    "this is left at 0.",
)
flags.DEFINE_float(
    "server_beta1",
    _DEFAULTS.server_beta1,
    "Adaptive server optimizers (fedadam, fedyogi; --server_optimizer=adam/yogi): first-moment "
    "decay.",
)
flags.DEFINE_float(
    "server_beta2", _DEFAULTS.server_beta2, "Adaptive server optimizers: second-moment decay."
)
flags.DEFINE_float(
    "server_epsilon",
    _DEFAULTS.server_epsilon,
    "Adaptive server optimizers: adaptivity epsilon (Reddi et al.'s tau; 1e-3 in their "
    "experiments).",
)
flags.DEFINE_integer(
    "local_steps",
    _DEFAULTS.local_steps,
    "If > 0, each client trains on exactly this many batches per round (its data repeated "
    "as needed) instead of --local_epochs passes.",
    lower_bound=0,
)
flags.DEFINE_enum(
    "step_heterogeneity",
    _DEFAULTS.step_heterogeneity,
    config_lib.STEP_HETEROGENEITY,
    "With --local_steps: none = every client takes --local_steps; proportional = steps in "
    "proportion to client data size (--local_steps for a client of mean size).",
)
# Aggregation and differential privacy.
flags.DEFINE_enum(
    "aggregator",
    _DEFAULTS.aggregator,
    AGGREGATORS,
    "How client updates are combined: mean (weighted); dp (DP-FedAvg: clip + Gaussian noise, "
    "unweighted); secure (secure-sum mean, simulated); compression (8-bit quantization of "
    "large tensors, adaptive clipping/zeroing); robust (adaptive clipping and zeroing).",
)
flags.DEFINE_float(
    "dp_noise_multiplier",
    _DEFAULTS.dp_noise_multiplier,
    "--aggregator=dp: Gaussian noise stddev / clip norm (>= 0).",
)
flags.DEFINE_string(
    "dp_clip",
    _DEFAULTS.dp_clip,
    "--aggregator=dp: L2 clip norm of each client update, or 'adaptive' (tracks "
    "--dp_target_quantile of the update norms; needs --dp_noise_multiplier < 0.1 x clients "
    "per round).",
)
flags.DEFINE_float(
    "dp_target_quantile",
    _DEFAULTS.dp_target_quantile,
    "--dp_clip=adaptive: quantile of client update norms left unclipped.",
)
flags.DEFINE_float(
    "dp_delta",
    _DEFAULTS.dp_delta,
    "--aggregator=dp: delta of the (epsilon, delta) guarantee; 0 = 1 / training examples.",
)
flags.DEFINE_enum(
    "dp_accountant",
    _DEFAULTS.dp_accountant,
    privacy.ACCOUNTANTS,
    "--aggregator=dp: privacy accountant (rdp = Renyi DP, pld = privacy loss distributions).",
)
flags.DEFINE_integer(
    "eval_every", _DEFAULTS.eval_every, "Evaluate on the test set every N rounds.", lower_bound=1
)
flags.DEFINE_list(
    "baselines",
    [],
    f"Comma-separated baselines trained in the same run: {', '.join(config_lib.BASELINES)}.",
)
flags.DEFINE_list(
    "workers",
    [],
    "Comma-separated host:port of TFF executor services (worker_binary) to spread each round's "
    "clients over; results equal a single-worker run. WARNING: they speak unauthenticated gRPC, "
    "so use loopback, an SSH tunnel or a private network (see README).",
)
flags.DEFINE_integer(
    "local_workers",
    _DEFAULTS.local_workers,
    "Start this many TFF worker services on 127.0.0.1 and spread each round's clients over "
    "them (0 = one in-process local context).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "restart_workers_every",
    _DEFAULTS.restart_workers_every,
    "Replace the local TFF workers by fresh ones after every N rounds (0 = never): a long-running "
    "worker_binary grows by ~0.5 MB per round. Results do not change.",
    lower_bound=0,
)
flags.DEFINE_enum(
    "op_determinism",
    _DEFAULTS.op_determinism,
    devices.OP_DETERMINISM_MODES,
    "TF op determinism (deterministic kernels, fixed op order): auto = on when a GPU is present. "
    "CPU runs reproduce exactly without it, ~10% faster.",
)
flags.DEFINE_bool(
    "mixed_precision",
    _DEFAULTS.mixed_precision,
    "bfloat16 compute with float32 weights, updates and aggregation (Keras mixed_bfloat16). "
    "For GPUs (or CPUs) with bfloat16 units.",
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for partition, initialization and data order.")
flags.DEFINE_string("output_dir", None, "Where results and checkpoints go (required).")

FLAGS = flags.FLAGS

_INPUT_ERRORS = (
    config_lib.ConfigError,
    data_lib.DataError,
    partition.PartitionError,
    models.ModelError,
)


def config_from_flags() -> config_lib.ExperimentConfig:
    values = FLAGS.flag_values_dict()
    values["output_dir"] = values["output_dir"] or ""
    values["baselines"] = tuple(dict.fromkeys(values["baselines"]))
    values["workers"] = tuple(values["workers"])
    return config_lib.config_from_dict(values)


def main(argv: list[str]) -> None:
    interrupts.install_interrupt_guard()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFF/TF info logs drown the progress lines.
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    try:
        setup = experiment.setup(config_from_flags())
    except _INPUT_ERRORS as e:
        fail(str(e))
    try:
        experiment.run_setup(setup)
    except (config_lib.ConfigError, runtime.RuntimeSetupError) as e:  # E.g. a worker not up.
        runtime.shutdown()
        fail(str(e))
    except KeyboardInterrupt:
        runtime.shutdown()
        print(
            "interrupted: rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)
    finally:
        runtime.shutdown()


def entry_point() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry_point()
