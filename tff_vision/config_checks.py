"""The checks that every setting of an `ExperimentConfig` can work, section by section.

`validate` raises `ConfigError`, whose message is one line naming the
problem and its fix, before anything is loaded or written. Combinations of an
algorithm with other settings are the algorithm registry's to judge
(`algorithms.check_combination`); this module asks it and words the answer.
Modules that load TensorFlow are imported only when a check needs them.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING

from tff_vision import data as data_lib
from tff_vision import settings

if TYPE_CHECKING:
    from tff_vision.config import ExperimentConfig


class ConfigError(ValueError):
    """An invalid experiment setting; the message is one line naming the fix."""


def validate(c: ExperimentConfig) -> None:
    """Raises `ConfigError` for the first setting that cannot work."""
    for check in _SECTIONS:
        check(c)


@contextlib.contextmanager
def _as_config_error():
    """Raises a `ValueError` of the checked code (whose message names the fix) as `ConfigError`."""
    try:
        yield
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_declared(c: ExperimentConfig) -> None:
    """The lower bounds and choices the settings declare."""
    with _as_config_error():
        settings.check_bounds(c)
        settings.check_choices(c)


def _check_data(c: ExperimentConfig) -> None:
    if data_lib.is_tfds(c.dataset):
        low, high = data_lib.TFDS_SIZE_RANGE
        _check(low <= c.size <= high, f"--size must be in {low}..{high} for tfds: sets")
    else:
        _check(
            c.size in data_lib.SIZES,
            f"--size must be one of {', '.join(map(str, data_lib.SIZES))} for MedMNIST, "
            f"got {c.size}",
        )


def _check_model(c: ExperimentConfig) -> None:
    if c.stem != "auto" and c.model != "resnet18":
        raise ConfigError(f"--stem applies to resnet18 only; drop it for --model={c.model}")


def _check_client_optimizer(c: ExperimentConfig) -> None:
    _check(c.client_lr > 0, f"--client_lr must be > 0, got {c.client_lr}")
    _check(
        0 <= c.client_momentum < 1, f"--client_momentum must be in [0, 1), got {c.client_momentum}"
    )
    _check(
        0 <= c.label_smoothing < 1,
        f"--label_smoothing must be in [0, 1) (0.1 is usual), got {c.label_smoothing}",
    )
    if "local" in c.baselines and c.client_optimizer == "yogi":
        raise ConfigError("--baselines=local needs a Keras optimizer; use sgd, adam or adagrad")


def _check_server_optimizer(c: ExperimentConfig) -> None:
    _check(c.server_lr > 0, f"--server_lr must be > 0, got {c.server_lr}")
    for flag, value in (
        ("--server_momentum", c.server_momentum),
        ("--server_beta1", c.server_beta1),
        ("--server_beta2", c.server_beta2),
    ):
        _check(0 <= value < 1, f"{flag} must be in [0, 1), got {value}")
    _check(c.server_epsilon > 0, f"--server_epsilon must be > 0, got {c.server_epsilon}")
    with _as_config_error():
        c.server_optimizer_spec()


def _check_algorithm(c: ExperimentConfig) -> None:
    """The algorithm's own parameter, then what the algorithm registry accepts with it."""
    _check(
        c.proximal_strength >= 0,
        f"--proximal_strength must be >= 0, got {c.proximal_strength}",
    )
    _check(c.ditto_lambda >= 0, f"--ditto_lambda must be >= 0, got {c.ditto_lambda}")
    with _as_config_error():
        importlib.import_module("tff_vision.algorithms").check_combination(
            c.algorithm,
            norm=c.norm,
            aggregator=c.aggregator,
            client_optimizer=c.client_optimizer,
            client_momentum=c.client_momentum,
            client_lr_schedule=c.client_lr_schedule,
            proximal_strength=c.proximal_strength,
            distributed=bool(c.workers or c.local_workers),
            ema_decay=c.ema_decay,
        )


def _check_privacy(c: ExperimentConfig) -> None:
    """The DP settings, whatever the aggregator, so that a typo never passes silently."""
    _check(
        c.dp_noise_multiplier >= 0,
        f"--dp_noise_multiplier must be >= 0, got {c.dp_noise_multiplier}",
    )
    _check(
        c.dp_delta == 0 or 0 < c.dp_delta < 1,
        f"--dp_delta must be in (0, 1), or 0 for 1/num_clients^1.1; got {c.dp_delta}",
    )
    aggregators = importlib.import_module("tff_vision.aggregators")
    with _as_config_error():
        aggregators.parse_dp_clip(c.dp_clip)
        if c.aggregator == "dp":
            aggregators.check_dp_settings(
                c.dp_noise_multiplier,
                c.dp_clip,
                c.clients_per_round or c.num_clients,
                c.dp_target_quantile,
            )


def _check_schedule(c: ExperimentConfig) -> None:
    if c.step_heterogeneity != "none" and not c.local_steps:
        raise ConfigError("--step_heterogeneity needs --local_steps > 0")
    _check(0 <= c.client_dropout < 1, f"--client_dropout must be in [0, 1), got {c.client_dropout}")
    _check(0 <= c.partial_work <= 1, f"--partial_work must be in [0, 1], got {c.partial_work}")
    _check(
        not (c.client_dropout and c.aggregator == "dp"),
        "--client_dropout with --aggregator=dp: the accountant assumes a fixed number of "
        "clients per round; drop --client_dropout or use --clients_per_round for sampling",
    )


def _check_runtime(c: ExperimentConfig) -> None:
    _check(
        not (c.workers and c.local_workers),
        "--workers and --local_workers exclude each other; give one of them",
    )
    for target in c.workers:
        host, _, port = target.rpartition(":")
        _check(
            bool(host) and port.isdigit() and 0 < int(port) < 65536,
            f"bad --workers entry {target!r}; use host:port, e.g. 127.0.0.1:8000",
        )


def _check_outputs(c: ExperimentConfig) -> None:
    _check(bool(c.output_dir), "--output_dir is required; pass e.g. --output_dir=/tmp/run1")
    _check(0 <= c.ema_decay < 1, f"--ema_decay must be in [0, 1) (e.g. 0.9), got {c.ema_decay}")


_SECTIONS = (
    _check_declared,
    _check_runtime,
    _check_data,
    _check_model,
    _check_client_optimizer,
    _check_server_optimizer,
    _check_algorithm,
    _check_schedule,
    _check_privacy,
    _check_outputs,
)
