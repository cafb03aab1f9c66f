"""(epsilon, delta) of DP-FedAvg runs with `dp_accounting`.

The DP aggregator (`tff_vision.aggregators`, ``dp``) is a sampled Gaussian
mechanism over *clients* (user-level DP: neighbouring datasets differ in one
client's data): each round samples a fraction q of the clients, clips each
delta to L2 norm C and adds N(0, (z C)^2) noise to the sum. Over R rounds that
is the DP event

    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), R)

accounted with the Renyi DP accountant (`dp_accounting.rdp.RdpAccountant`,
add-or-remove-one relation; `accountant="pld"` uses the tighter privacy-loss
distribution accountant instead).

Caveats, so that the numbers are read right:

* q = clients_per_round / num_clients (1.0 when all take part). The trainer
  samples a fixed number of clients without replacement; accounting for it
  as Poisson sampling with the same rate is the standard approximation
  (exact when q = 1, where the event is the plain Gaussian mechanism).
* delta defaults to 1 / (number of training examples). With user-level DP
  over few clients, the natural choice is delta << 1 / num_clients; with
  3-10 clients no setting gives a meaningful guarantee, and these numbers
  are there to be reported, not relied upon.
* noise_multiplier = 0 gives epsilon = inf (written as null in JSON).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

ACCOUNTANTS = ("rdp", "pld")


def dp_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """The DP event of `rounds` rounds of the sampled Gaussian mechanism."""
    _check(noise_multiplier, sampling_rate, rounds)
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


def compute_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon after `rounds` rounds at `delta` (inf without noise, 0 for 0 rounds)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "rdp":
        acc = rdp.RdpAccountant()
    elif accountant == "pld":
        acc = pld.PLDAccountant()
    else:
        raise ValueError(f"Unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    acc.compose(dp_event(noise_multiplier, sampling_rate, rounds))
    return float(acc.get_epsilon(delta))


def sampling_rate(clients_per_round: int, num_clients: int) -> float:
    """q = clients_per_round / num_clients; clients_per_round 0 (or >= all) means 1.0."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if clients_per_round <= 0 or clients_per_round >= num_clients:
        return 1.0
    return clients_per_round / num_clients


def default_delta(num_train_examples: int) -> float:
    """1 / N_train, the default delta (at least 2 examples counted)."""
    return 1.0 / max(int(num_train_examples), 2)


@dataclasses.dataclass(frozen=True)
class PrivacyAccounting:
    """The fixed parameters of a run's accounting; `epsilon(r)` after r rounds.

    Attributes:
        noise_multiplier: z, noise stddev over clip norm.
        sampling_rate: q, the fraction of clients per round.
        delta: The delta of the (epsilon, delta) guarantee.
        accountant: One of `ACCOUNTANTS`.
    """

    noise_multiplier: float
    sampling_rate: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self):
        _check(self.noise_multiplier, self.sampling_rate, 0)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"Unknown accountant {self.accountant!r}")

    def epsilon(self, rounds: int) -> float:
        return compute_epsilon(
            self.noise_multiplier, self.sampling_rate, rounds, self.delta, self.accountant
        )

    def report(self, rounds: int, epsilon: float | None = None) -> dict[str, Any]:
        """The summary.json "privacy" entry for a run of `rounds` rounds."""
        return {
            "epsilon": self.epsilon(rounds) if epsilon is None else epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "rounds": rounds,
        }


def _check(noise_multiplier: float, sampling_rate: float, rounds: int) -> None:
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
