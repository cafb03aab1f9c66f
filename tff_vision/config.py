"""Every setting of one experiment, declared once, with its help text, choices and bounds.

`ExperimentConfig` is the one description of an experiment, flat (field
names are flag names) but declared in sections: data, partition, model,
client optimizer, server optimizer, algorithm, aggregation and privacy,
schedule, runtime, outputs. Each setting is written once, as a
`settings.option` field with its help text and, where they apply, its
choices and lower bound; the runner generates its flags from these
(`experiments/cli.py`), `flags.json` records `result_fields()`, and
`validate()` raises `ConfigError` (one line naming the fix) for any setting
that cannot work, before anything is loaded or written (`config_checks`).

Choices and help texts kept by modules that load TensorFlow (models,
algorithms, aggregators, ...) are looked up only when asked for: importing
this module loads neither TF nor absl, so sweeps and tools read defaults
cheaply.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from tff_vision import config_checks, settings
from tff_vision import data as data_lib
from tff_vision import partition as partition_lib
from tff_vision.settings import lazy, option

BASELINES = ("local", "centralized")
SELECTIONS = ("best_val", "final")
STEP_HETEROGENEITY = ("none", "proportional")


# Settings whose default changed after runs were recorded without them: the
# value those runs had. Weight standardization came with default True; runs
# before --select reported their last round.
_DEFAULTS_BEFORE_CHANGE = {"weight_standardization": False, "select": "final"}

# What `validate()` raises; callers know it as `config.ConfigError`.
ConfigError = config_checks.ConfigError


def _lib(module: str):
    """`tff_vision.<module>`, imported when first needed (most of them load TensorFlow)."""
    return importlib.import_module(f"tff_vision.{module}")


def _from(module: str, name: str) -> Callable[[], Any]:
    """`tff_vision.<module>.<name>`, looked up when needed."""
    return lazy(f"tff_vision.{module}", name)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Which images, at what size, from where, and how training images are varied."""

    dataset: str = option(
        "retinamnist",
        "MedMNIST 2D dataset name (e.g. retinamnist, octmnist), or tfds:NAME for a TensorFlow "
        "Datasets image classification set (e.g. tfds:cifar10).",
    )
    size: int = option(
        28,
        f"Image size in pixels: one of {', '.join(map(str, data_lib.SIZES))} for MedMNIST; for "
        f"tfds: sets, images are resized to size x size ({data_lib.TFDS_SIZE_RANGE[0]}.."
        f"{data_lib.TFDS_SIZE_RANGE[1]}; the native size keeps them as they are).",
    )
    data_dir: str | None = option(
        None,
        f"Directory with the .npz files. Default: ${data_lib.DATA_DIR_ENV}, else data/.",
        affects_results=False,
    )
    augment: str = option(
        "none",
        "Training augmentation: flip (random horizontal and vertical flips), fundus (the flips, "
        "a rotation up to 15 degrees, brightness +-0.1, contrast x0.9-1.1; for fundus photos).",
        choices=_from("augmentation", "AUGMENTATIONS"),
    )
    seed: int = option(0, "Seed for partition, initialization and data order.")


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """How the training split is divided over the clients."""

    partition: str = option(
        "label_exclusion",
        f"How training data is split over clients: {', '.join(partition_lib.VALID_SPECS)}.",
    )
    num_clients: int = option(3, "Number of clients.", lower_bound=1)
    exclude: str = option(
        "",
        "label_exclusion only: excluded classes per client, ';' between clients and ',' "
        "within one, e.g. '1;2;3' (client 0 lacks class 1, ...) or '1,2;;3'.",
    )


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The architecture every participant trains."""

    model: str = option("resnet18", "Architecture.", choices=_from("models", "MODEL_NAMES"))
    norm: str = option(
        "group",
        "Normalization layers (group is the FL default).",
        choices=_from("models", "NORMS"),
    )
    stem: str = option(
        "auto",
        "ResNet-18 stem: imagenet (7x7/2 + pool), small (3x3/2), cifar (3x3/1); auto picks "
        "imagenet from 128px.",
        choices=_from("models", "STEMS"),
    )
    weight_standardization: bool = option(
        True,
        "Weight-standardize the convolutions that feed GroupNorm (GroupNorm + WS, as Big "
        "Transfer); no effect with --norm=batch or none.",
    )


@dataclasses.dataclass(frozen=True)
class ClientOptimizerSettings:
    """How clients (and the Keras baselines) take their local steps."""

    client_optimizer: str = option(
        "adam", "Client optimizer.", choices=_from("algorithms", "OPTIMIZERS")
    )
    client_lr: float = option(0.001, "Client learning rate.")
    client_momentum: float = option(0.9, "Client SGD momentum.")
    client_lr_schedule: str = option(
        "cosine",
        "Client learning rate over rounds: constant, or cosine decay towards 0 at the last round.",
        choices=_from("algorithms", "SCHEDULES"),
    )
    label_smoothing: float = option(
        0.0,
        "Label smoothing eps of the training loss (clients, baselines, fine-tuning): the target "
        "is 1 - eps on the label plus eps/K on each of the K classes; 0 = plain cross-entropy. "
        "Evaluation losses stay plain.",
    )


def _server_lr_help() -> str:
    lr = _lib("algorithms.fedopt").DEFAULT_ADAPTIVE_SERVER_LR
    return (
        "Server learning rate (1.0 = plain FedAvg). fedadam/fedyogi/fedadagrad use "
        f"{lr} when this is left at 1.0; tune in 1e-3 to 1e-1."
    )


def _server_momentum_help() -> str:
    momentum = _lib("algorithms.fedopt").DEFAULT_FEDAVGM_MOMENTUM
    return f"Server SGD momentum; --algorithm=fedavgm uses {momentum} when this is left at 0."


@dataclasses.dataclass(frozen=True)
class ServerOptimizerSettings:
    """How the server applies the aggregated update (FedOpt algorithms set some of these)."""

    server_optimizer: str = option(
        "sgd",
        "Server optimizer of fedavg/fedprox (fedavgm, fedadam, fedyogi, fedadagrad set their own).",
        choices=_from("algorithms", "OPTIMIZERS"),
    )
    server_lr: float = option(1.0, _server_lr_help)
    server_momentum: float = option(0.0, _server_momentum_help)
    server_beta1: float = option(
        0.9,
        "Adaptive server optimizers (fedadam, fedyogi; --server_optimizer=adam/yogi): "
        "first-moment decay.",
    )
    server_beta2: float = option(0.99, "Adaptive server optimizers: second-moment decay.")
    server_epsilon: float = option(
        1e-3,
        "Adaptive server optimizers: adaptivity epsilon (Reddi et al.'s tau; 1e-3 in their "
        "experiments).",
    )


def _algorithm_help() -> str:
    info = _lib("algorithms").ALGORITHM_INFO
    return (
        "Federated algorithm: "
        + "; ".join(f"{name}: {spec.description}" for name, spec in info.items())
        + "."
    )


@dataclasses.dataclass(frozen=True)
class AlgorithmSettings:
    """The federated algorithm and its own parameter."""

    algorithm: str = option("fedavg", _algorithm_help, choices=_from("algorithms", "ALGORITHMS"))
    proximal_strength: float = option(
        0.0,
        "FedProx mu (> 0, required by --algorithm=fedprox; ignored otherwise): clients minimize "
        "loss + mu/2 ||w - w_global||^2. Typical 0.001 to 1.",
    )
    ditto_lambda: float = option(
        0.1,
        "Ditto (--algorithm=ditto): strength lambda (>= 0) pulling each client's personal model "
        "towards the global one: it minimizes loss + lambda/2 ||v - w_global||^2; 0 = local "
        "training alone, large = the global model.",
    )
    fedrep_head_epochs: int = option(
        1,
        "FedRep (--algorithm=fedrep): passes over each round's client data (--local_epochs "
        "epochs or --local_steps batches each) that train the head, body frozen, before the "
        "round's body pass.",
        lower_bound=1,
    )


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """How client updates are combined, and the differential-privacy settings of --aggregator=dp."""

    aggregator: str = option(
        "mean",
        "How client updates are combined: mean (weighted); dp (DP-FedAvg: clip + Gaussian noise, "
        "unweighted); secure (secure-sum mean, simulated); compression (8-bit quantization of "
        "large tensors, adaptive clipping/zeroing); robust (adaptive clipping and zeroing).",
        choices=_from("aggregators", "AGGREGATORS"),
    )
    dp_noise_multiplier: float = option(
        1.0, "--aggregator=dp: Gaussian noise stddev / clip norm (>= 0)."
    )
    dp_clip: str = option(
        "1.0",
        "--aggregator=dp: L2 clip norm of each client update, or 'adaptive' (tracks "
        "--dp_target_quantile of the update norms; needs --dp_noise_multiplier < 0.1 x clients "
        "per round).",
    )
    dp_target_quantile: float = option(
        0.5, "--dp_clip=adaptive: quantile of client update norms left unclipped."
    )
    dp_delta: float = option(
        0.0,
        "--aggregator=dp: delta of the client-level (epsilon, delta) guarantee; 0 = "
        "1/num_clients^1.1, below 1/num_clients as a client-level delta must be (McMahan et al. "
        "2018, Learning Differentially Private Recurrent Language Models).",
    )
    dp_accountant: str = option(
        "rdp",
        "--aggregator=dp: privacy accountant (rdp = Renyi DP, pld = privacy loss distributions).",
        choices=_from("privacy", "ACCOUNTANTS"),
    )


@dataclasses.dataclass(frozen=True)
class ScheduleSettings:
    """Rounds, who takes part in each, and how much each client trains per round."""

    rounds: int = option(20, "Federated rounds.", lower_bound=1, example="10")
    clients_per_round: int = option(
        0, "Clients sampled per round; 0 = all.", lower_bound=0, bound_note="0 = all"
    )
    local_epochs: int = option(1, "Passes over local data per round.", lower_bound=1)
    local_steps: int = option(
        0,
        "If > 0, each client trains on exactly this many batches per round (its data repeated "
        "as needed) instead of --local_epochs passes.",
        lower_bound=0,
        bound_note="0 = use --local_epochs",
    )
    step_heterogeneity: str = option(
        "none",
        "With --local_steps: none = every client takes --local_steps; proportional = steps in "
        "proportion to client data size (--local_steps for a client of mean size).",
        choices=STEP_HETEROGENEITY,
    )
    batch_size: int = option(32, "Client batch size.", lower_bound=1)
    client_dropout: float = option(
        0.0,
        "Probability in [0, 1) that a sampled client fails to report in a round (seeded); the "
        "round aggregates the others. metrics.csv records who reported.",
    )
    partial_work: float = option(
        0.0,
        "Probability in [0, 1] that a reporting client stops after a uniform random fraction of "
        "its round's batches (seeded; FedNova's setting). metrics.csv records the batches done.",
    )


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """Where and how TFF and TF run; none of these changes results."""

    workers: tuple[str, ...] = option(
        (),
        "Comma-separated host:port of TFF executor services (worker_binary) to spread each "
        "round's clients over; results equal a single-worker run. WARNING: they speak "
        "unauthenticated gRPC, so use loopback, an SSH tunnel or a private network (see README).",
        affects_results=False,
    )
    local_workers: int = option(
        0,
        "Start this many local TFF worker services (each in a private network) and spread each "
        "round's clients over them (0 = one local worker).",
        lower_bound=0,
        affects_results=False,
    )
    restart_workers_every: int = option(
        50,
        "Replace the local TFF workers by fresh ones after every N rounds (0 = never): a "
        "long-running worker_binary grows by ~0.5 MB per round. Results do not change.",
        lower_bound=0,
        bound_note="0 = never",
        affects_results=False,
    )
    worker_concurrency: int = option(
        0,
        "Computations a local TFF worker runs at once (0 = automatic: 1 with lean memory, else "
        "no limit, so that all clients of a round train together). 1 trains them one after "
        "another: less memory for large models (ResNet-18: ~0.5 GB less per worker), slower "
        "rounds for small ones. Results do not change.",
        lower_bound=0,
        bound_note="0 = automatic",
        affects_results=False,
    )
    lean_memory: str = option(
        "auto",
        "Keep the run's peak memory low: build the federated process in a fresh process, train "
        "one client at a time per local worker, return large freed blocks to the OS at once. "
        "auto = on for every model but the small CNN. Off saves a few seconds per run, and "
        "round time with small models. Results do not change.",
        choices=_from("memory", "LEAN_MEMORY_MODES"),
        affects_results=False,
    )
    # On and off differ in the last bits (each reproduces exactly on CPU), so both are recorded.
    op_determinism: str = option(
        "auto",
        "TF op determinism (deterministic kernels, fixed op order): auto = on when a GPU is "
        "present. CPU runs reproduce exactly without it, ~10% faster.",
        choices=_from("devices", "OP_DETERMINISM_MODES"),
    )
    mixed_precision: bool = option(
        False,
        "bfloat16 compute with float32 weights, updates and aggregation (Keras mixed_bfloat16). "
        "For GPUs (or CPUs) with bfloat16 units.",
    )


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """What is evaluated and trained besides the federated model, and where results go."""

    eval_every: int = option(
        1, "Evaluate the federated model on the test and val sets every N rounds.", lower_bound=1
    )
    baselines: tuple[str, ...] = option(
        (),
        f"Comma-separated baselines trained in the same run: {', '.join(BASELINES)}.",
        choices=BASELINES,
    )
    personalize_epochs: int = option(
        0,
        "After training, fine-tune the reported federated model for this many local epochs on "
        "each client's data and score each client's fine-tuned model (summary.json "
        '"personalized"); 0 = off.',
        lower_bound=0,
        bound_note="0 = no fine-tuning",
    )
    select: str = option(
        "best_val",
        "Which round each result (federated, each local-only baseline, centralized) reports: "
        "best_val = the round with the highest validation-split AUC, the earliest of ties "
        "(MedMNIST's protocol; the federated model is scored on val at its --eval_every rounds), "
        "final = the last round. summary.json also holds the last round's test metrics.",
        choices=SELECTIONS,
    )
    ema_decay: float = option(
        0.0,
        "Report an exponential moving average of the global model's weights instead of the "
        "round's own: after round r, ema = d * ema + (1 - d) * w_r (starting at w_1), scored "
        "on test and val every evaluated round (so --select picks among averages). Training, "
        "the baselines and fine-tuning are unchanged; 0 = off.",
    )
    test_time_flips: bool = option(
        False,
        "Score every model (federated, local-only, pooled, fine-tuned; test and validation, so "
        "--select too) by the mean of its logits over the image and its horizontal, vertical "
        "and double flip (test-time augmentation, 4x the evaluation cost).",
    )
    output_dir: str = option(
        "",
        'Where results and checkpoints go (required); "{seed}" in it becomes --seed.',
        flag_default=None,
        affects_results=False,
    )


# A dataclass lists the fields of its last base first: the sections run from data to outputs.
@dataclasses.dataclass(frozen=True)
class ExperimentConfig(
    OutputSettings,
    RuntimeSettings,
    ScheduleSettings,
    PrivacySettings,
    AlgorithmSettings,
    ServerOptimizerSettings,
    ClientOptimizerSettings,
    ModelSettings,
    PartitionSettings,
    DataSettings,
):
    """Every setting of one experiment, flat: field names are the runner's flag names."""

    def result_fields(self) -> dict[str, Any]:
        """The settings that determine results (what flags.json records and a resume compares)."""
        return settings.result_fields(self)

    def differences_from(self, recorded: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """`(name, recorded value, value here)` of each result setting that differs, by name.

        `recorded` is a flags.json; a run recorded before a setting existed ran
        with the setting's default then.
        """
        current = self.result_fields()
        defaults = {**ExperimentConfig().result_fields(), **_DEFAULTS_BEFORE_CHANGE}
        recorded = {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}
        names = sorted(set(recorded) | set(current))
        return [
            (k, recorded.get(k), current.get(k)) for k in names if recorded.get(k) != current.get(k)
        ]

    def validate(self) -> None:
        """Raises `ConfigError` for any setting that cannot work, section by section."""
        config_checks.validate(self)

    def server_optimizer_spec(self):
        """The server optimizer the algorithm runs with (`algorithms.ServerOptimizerSpec`)."""
        return _lib("algorithms").server_optimizer_spec(
            self.algorithm,
            self.server_optimizer,
            self.server_lr,
            self.server_momentum,
            self.server_beta1,
            self.server_beta2,
            self.server_epsilon,
        )


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """An `ExperimentConfig` from flag values (unknown keys ignored; lists become tuples)."""
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    kwargs = {k: v for k, v in values.items() if k in fields}
    for name, value in kwargs.items():
        if isinstance(fields[name].default, tuple):
            kwargs[name] = tuple(value or ())
    if "baselines" in kwargs:
        kwargs["baselines"] = tuple(dict.fromkeys(kwargs["baselines"]))  # Each one once.
    return ExperimentConfig(**kwargs)
