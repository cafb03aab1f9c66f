"""Unreliable clients: which sampled clients report in a round, and how much local work each does.

Real federations lose clients mid-round and have slow ones that stop early.
`--client_dropout=p`: each sampled client fails to report with probability p;
the round aggregates the others (a round where none reports leaves the server
state unchanged). `--partial_work=p`: each reporting client, with probability
p, stops after a uniform random fraction of its round's batches (at least
one), the systems heterogeneity FedNova was made for (Wang et al., 2020).
Every draw derives from (seed, round, client) alone, so the draws do not
depend on the order of rounds, and a resumed run makes exactly the same ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tff_vision.client_data import derive_seed


@dataclasses.dataclass(frozen=True)
class Availability:
    """How unreliable the clients are: dropout and partial-work probabilities, and the seed."""

    dropout: float = 0.0
    partial_work: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise ValueError(f"client dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.partial_work <= 1:
            raise ValueError(f"partial work must be in [0, 1], got {self.partial_work}")

    @property
    def active(self) -> bool:
        return bool(self.dropout or self.partial_work)

    def _uniform(self, kind: str, round_num: int, client: str) -> float:
        return float(
            np.random.default_rng(derive_seed(self.seed, kind, round_num, client)).random()
        )

    def reporting(self, round_num: int, clients: Sequence[str]) -> list[str]:
        """The clients of `clients` that report in round `round_num`, in order."""
        if not self.dropout:
            return list(clients)
        return [c for c in clients if self._uniform("dropout", round_num, c) >= self.dropout]

    def batches(self, round_num: int, client: str, full: int) -> int:
        """Batches `client` finishes in round `round_num` out of its `full` ones."""
        if (
            not self.partial_work
            or self._uniform("partial", round_num, client) >= self.partial_work
        ):
            return full
        fraction = self._uniform("fraction", round_num, client)
        return max(1, math.floor(fraction * full))


def num_batches(dataset: tf.data.Dataset) -> int:
    """The number of elements of a finite `dataset` (counted if TF does not know it)."""
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
