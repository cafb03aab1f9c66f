"""Every setting of one experiment, and the checks that each can work.

`ExperimentConfig` is the one description of an experiment: the runner's
flags map onto its fields one to one, `flags.json` records its
`result_fields()`, and `validate()` raises `ConfigError` (one line naming the
fix) for any setting that cannot work, before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tff_vision import data as data_lib

BASELINES = ("local", "centralized")
STEP_HETEROGENEITY = ("none", "proportional")


# Settings whose default changed after runs were recorded without them: the
# value those runs had. Weight standardization came with default True.
_DEFAULTS_BEFORE_CHANGE = {"weight_standardization": False}


class ConfigError(ValueError):
    """An invalid experiment setting; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of one experiment. See `experiments/run.py` for the flags."""

    dataset: str = "retinamnist"
    size: int = 28
    data_dir: str | None = None
    model: str = "resnet18"
    norm: str = "group"
    stem: str = "auto"
    weight_standardization: bool = True
    algorithm: str = "fedavg"
    partition: str = "label_exclusion"
    num_clients: int = 3
    exclude: str = ""
    clients_per_round: int = 0
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 32
    augment: str = "none"
    client_optimizer: str = "adam"
    client_lr: float = 0.001
    client_momentum: float = 0.9
    client_lr_schedule: str = "cosine"
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    # Algorithms, aggregation and privacy (issue #3); see experiments/run.py.
    proximal_strength: float = 0.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_epsilon: float = 1e-3
    local_steps: int = 0
    step_heterogeneity: str = "none"
    aggregator: str = "mean"
    dp_noise_multiplier: float = 1.0
    dp_clip: str = "1.0"
    dp_target_quantile: float = 0.5
    dp_delta: float = 0.0
    dp_accountant: str = "rdp"
    eval_every: int = 1
    baselines: tuple[str, ...] = ()
    seed: int = 0
    output_dir: str = ""
    # Where TFF runs: remote executor services, or N started on loopback (0: one local context).
    workers: tuple[str, ...] = ()
    local_workers: int = 0
    # Fresh local TFF workers after every this many rounds (bounds their memory; 0 = never).
    restart_workers_every: int = 50
    # TF op determinism: "auto" (on with a GPU), "on" or "off"; see devices.set_op_determinism.
    # Either way CPU runs reproduce exactly, but the two modes differ in the last bits.
    op_determinism: str = "auto"
    # bfloat16 compute with float32 weights (see devices.set_mixed_precision); for GPUs.
    mixed_precision: bool = False

    # Settings that do not change results: a resumed run may differ in these.
    NON_RESULT_FIELDS = (
        "data_dir",
        "output_dir",
        "workers",
        "local_workers",
        "restart_workers_every",
    )

    def result_fields(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        for name in self.NON_RESULT_FIELDS:
            fields.pop(name)
        fields["baselines"] = list(self.baselines)
        return fields

    def validate(self) -> None:
        """Raises `ConfigError` for any setting that cannot work."""
        # pylint: disable=g-import-not-at-top
        from tff_vision import aggregators, algorithms, client_data, devices, models, privacy

        _check(self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}; pass e.g. --rounds=10")
        _check(
            self.local_epochs >= 1,
            f"--local_epochs must be >= 1, got {self.local_epochs}",
        )
        _check(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_clients >= 1, f"--num_clients must be >= 1, got {self.num_clients}")
        _check(
            0 <= self.clients_per_round,
            f"--clients_per_round must be >= 0 (0 = all), got {self.clients_per_round}",
        )
        _check(self.eval_every >= 1, f"--eval_every must be >= 1, got {self.eval_every}")
        _check(
            self.restart_workers_every >= 0,
            f"--restart_workers_every must be >= 0 (0 = never), got {self.restart_workers_every}",
        )
        _check(self.local_workers >= 0, f"--local_workers must be >= 0, got {self.local_workers}")
        _check(
            self.op_determinism in devices.OP_DETERMINISM_MODES,
            f"--op_determinism must be auto, on or off, got {self.op_determinism!r}",
        )
        _check(
            not (self.workers and self.local_workers),
            "--workers and --local_workers exclude each other; give one of them",
        )
        for target in self.workers:
            host, _, port = target.rpartition(":")
            _check(
                bool(host) and port.isdigit() and 0 < int(port) < 65536,
                f"bad --workers entry {target!r}; use host:port, e.g. 127.0.0.1:8000",
            )
        if data_lib.is_tfds(self.dataset):
            low, high = data_lib.TFDS_SIZE_RANGE
            _check(low <= self.size <= high, f"--size must be in {low}..{high} for tfds: sets")
        else:
            _check(
                self.size in data_lib.SIZES,
                f"--size must be one of {', '.join(map(str, data_lib.SIZES))} for MedMNIST, "
                f"got {self.size}",
            )
        _one_of("--model", self.model, models.MODEL_NAMES)
        _one_of("--norm", self.norm, models.NORMS)
        _one_of("--stem", self.stem, models.STEMS)
        _one_of("--algorithm", self.algorithm, algorithms.ALGORITHMS)
        if (self.workers or self.local_workers) and algorithms.ALGORITHM_INFO[
            self.algorithm
        ].indexed_clients:
            raise ConfigError(
                f"--algorithm={self.algorithm} keeps per-client state on the server and runs on "
                "one TFF worker; drop --workers/--local_workers"
            )
        _one_of("--augment", self.augment, client_data.AUGMENTATIONS)
        _one_of("--client_optimizer", self.client_optimizer, algorithms.OPTIMIZERS)
        _one_of("--server_optimizer", self.server_optimizer, algorithms.OPTIMIZERS)
        _one_of("--client_lr_schedule", self.client_lr_schedule, algorithms.SCHEDULES)
        for name in self.baselines:
            _one_of("--baselines entry", name, BASELINES)
        if "local" in self.baselines and self.client_optimizer == "yogi":
            raise ConfigError("--baselines=local needs a Keras optimizer; use sgd, adam or adagrad")
        for flag, lr in (("--client_lr", self.client_lr), ("--server_lr", self.server_lr)):
            _check(lr > 0, f"{flag} must be > 0, got {lr}")
        for flag, m in (
            ("--client_momentum", self.client_momentum),
            ("--server_momentum", self.server_momentum),
        ):
            _check(0 <= m < 1, f"{flag} must be in [0, 1), got {m}")
        if self.stem != "auto" and self.model != "resnet18":
            raise ConfigError(f"--stem applies to resnet18 only; drop it for --model={self.model}")
        self._validate_algorithm(algorithms, aggregators, privacy)
        _check(bool(self.output_dir), "--output_dir is required; pass e.g. --output_dir=/tmp/run1")

    def _validate_algorithm(self, algorithms, aggregators, privacy) -> None:
        """Checks the algorithm, aggregator, privacy and local-step settings."""
        info = algorithms.ALGORITHM_INFO[self.algorithm]
        _one_of("--aggregator", self.aggregator, aggregators.AGGREGATORS)
        _one_of("--step_heterogeneity", self.step_heterogeneity, STEP_HETEROGENEITY)
        _one_of("--dp_accountant", self.dp_accountant, privacy.ACCOUNTANTS)
        _check(
            self.proximal_strength >= 0,
            f"--proximal_strength must be >= 0, got {self.proximal_strength}",
        )
        if self.algorithm == "fedprox":
            _check(
                self.proximal_strength > 0,
                "--algorithm=fedprox needs --proximal_strength > 0 (mu, e.g. 0.01 to 1)",
            )
        if info.norms is not None and self.norm not in info.norms:
            raise ConfigError(
                f"--algorithm={self.algorithm} needs --norm={' or '.join(info.norms)}, "
                f"got --norm={self.norm}"
            )
        if self.aggregator != "mean" and not info.takes_aggregator:
            raise ConfigError(
                f"--algorithm={self.algorithm} aggregates its own way; drop "
                f"--aggregator={self.aggregator} (only mean)"
            )
        if (self.aggregator == "dp" and not info.takes_dp) or (
            self.aggregator == "secure" and not info.takes_secure
        ):
            raise ConfigError(
                f"--aggregator={self.aggregator} does not work with --algorithm={self.algorithm} "
                "(see tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant"
            )
        if (
            info.client_optimizers is not None
            and self.client_optimizer not in info.client_optimizers
        ):
            raise ConfigError(
                f"--algorithm={self.algorithm} trains clients with "
                f"{' or '.join(info.client_optimizers)}; "
                f"got --client_optimizer={self.client_optimizer}"
            )
        if not info.takes_client_momentum and self.client_momentum:
            raise ConfigError(
                f"--algorithm={self.algorithm} runs plain local SGD; pass --client_momentum=0"
            )
        if self.client_lr_schedule != "constant" and not info.takes_schedule:
            raise ConfigError(
                f"--algorithm={self.algorithm} has no client learning-rate schedule; "
                "pass --client_lr_schedule=constant"
            )
        for flag, beta in (
            ("--server_beta1", self.server_beta1),
            ("--server_beta2", self.server_beta2),
        ):
            _check(0 <= beta < 1, f"{flag} must be in [0, 1), got {beta}")
        _check(self.server_epsilon > 0, f"--server_epsilon must be > 0, got {self.server_epsilon}")
        try:
            self.server_optimizer_spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(
            self.local_steps >= 0,
            f"--local_steps must be >= 0 (0 = use --local_epochs), got {self.local_steps}",
        )
        if self.step_heterogeneity != "none" and not self.local_steps:
            raise ConfigError("--step_heterogeneity needs --local_steps > 0")
        # DP flags are checked whatever the aggregator, so that a typo never passes silently.
        _check(
            self.dp_noise_multiplier >= 0,
            f"--dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}",
        )
        _check(
            self.dp_delta == 0 or 0 < self.dp_delta < 1,
            f"--dp_delta must be in (0, 1), or 0 for 1/N_train; got {self.dp_delta}",
        )
        try:
            aggregators.parse_dp_clip(self.dp_clip)
            if self.aggregator == "dp":
                aggregators.check_dp_settings(
                    self.dp_noise_multiplier,
                    self.dp_clip,
                    self.clients_per_round or self.num_clients,
                    self.dp_target_quantile,
                )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def server_optimizer_spec(self):
        """The server optimizer the algorithm runs with (`algorithms.ServerOptimizerSpec`)."""
        from tff_vision import algorithms  # pylint: disable=g-import-not-at-top

        return algorithms.server_optimizer_spec(
            self.algorithm,
            self.server_optimizer,
            self.server_lr,
            self.server_momentum,
            self.server_beta1,
            self.server_beta2,
            self.server_epsilon,
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(flag: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {flag} {value!r}; use one of: {', '.join(choices)}")


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """An `ExperimentConfig` from flag values (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    kwargs = {k: v for k, v in values.items() if k in names}
    if "baselines" in kwargs:
        kwargs["baselines"] = tuple(kwargs["baselines"] or ())
    return ExperimentConfig(**kwargs)
