"""`tff.learning.optimizers` and learning-rate schedules by name, for the runner's flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")


def build_optimizer(
    name: str, learning_rate: float, momentum: float = 0.0
) -> tff.learning.optimizers.Optimizer:
    """A TFF optimizer.

    Args:
        name: One of `OPTIMIZERS`. "sgd" is plain SGD, or SGD with heavy-ball
            momentum when `momentum > 0`.
        learning_rate: Step size, > 0 (a tensor inside a scheduled process).
        momentum: SGD momentum in [0, 1); ignored by the adaptive optimizers.

    Returns:
        A `tff.learning.optimizers.Optimizer`.

    Raises:
        ValueError: For an unknown name or an out-of-range value.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ValueError(f"learning rate must be > 0, got {learning_rate}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if name == "sgd":
        return tff.learning.optimizers.build_sgdm(learning_rate, momentum=momentum or None)
    if name == "adam":
        return tff.learning.optimizers.build_adam(learning_rate)
    if name == "adagrad":
        return tff.learning.optimizers.build_adagrad(learning_rate)
    return tff.learning.optimizers.build_yogi(learning_rate)


SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(
    name: str, learning_rate: float, rounds: int
) -> Callable[[Any], Any] | None:
    """A per-round learning-rate function, or None for a constant rate.

    Args:
        name: One of `SCHEDULES`. "cosine" decays from `learning_rate` at round
            index 0 towards 0 at index `rounds` (half a cosine period).
        learning_rate: The initial rate.
        rounds: Number of rounds of the run.

    Returns:
        `fn(round_index) -> rate`, usable both in TFF's traced computations
        (tensor index, 0-based as in TFF's round counter) and eagerly.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    if name == "constant":
        return None

    def cosine(round_index):
        progress = tf.cast(round_index, tf.float32) / float(max(rounds, 1))
        return learning_rate * 0.5 * (1.0 + tf.cos(np.pi * tf.minimum(progress, 1.0)))

    return cosine
