"""Client-level (epsilon, delta) of DP-FedAvg runs with `dp_accounting`, and what it assumes.

The DP aggregator (`tff_vision.aggregators`, ``dp``) protects *clients*:
neighbouring datasets differ in all of one client's data (add or remove one
client). Each round the sampled clients clip their updates to L2 norm C and
the sum gets N(0, (z C)^2) noise, so R rounds are the DP event

    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), R)

accounted with the Renyi DP accountant (``rdp``, `dp_accounting.rdp`) or the
tighter privacy loss distribution accountant (``pld``).

What the numbers assume, stated in summary.json's "privacy" entry
(`PrivacyAccounting.report`) so that they are read right:

* Sampling: the trainer draws a fixed number k of the n clients without
  replacement each round; it is accounted as Poisson sampling with q = k/n,
  the usual approximation (as in DP-FedAvg and TF Privacy), not a bound
  proven for the draw actually made. With every client in every round
  (q = 1) nothing is sampled and the event is the composed Gaussian mechanism.
* delta defaults to 1 / n^1.1 for n clients, the choice of McMahan et al.
  (2018), "Learning Differentially Private Recurrent Language Models": below
  1/n, since a delta of 1/n admits leaking one client's data outright.
* Training loss and accuracy are aggregated without noise, outside the guarantee.
* Over fewer than `FEW_CLIENTS` clients a client-level guarantee is near
  meaningless (delta alone is then large); the report carries a warning.
* noise_multiplier = 0 gives epsilon = inf (null in JSON).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

ACCOUNTANTS = ("rdp", "pld")
# Fewer clients than this: the report warns that the guarantee means little.
FEW_CLIENTS = 100
DEFAULT_DELTA_RULE = "1/num_clients^1.1, the client-level default of McMahan et al. 2018"


def dp_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """The DP event of `rounds` rounds of the (Poisson-)sampled Gaussian mechanism."""
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


def default_delta(num_clients: int) -> float:
    """1 / n^1.1 for n clients (at least 2 counted), as `DEFAULT_DELTA_RULE` says."""
    return 1.0 / max(int(num_clients), 2) ** 1.1


@dataclasses.dataclass(frozen=True)
class PrivacyAccounting:
    """The fixed parameters of a run's client-level accounting; `epsilon(r)` after r rounds.

    Attributes:
        noise_multiplier: z, noise stddev over clip norm.
        num_clients: n, the clients in the federation.
        clients_per_round: k, drawn per round without replacement; 0 = all.
        delta: The delta of the (epsilon, delta) guarantee; None = `default_delta(n)`.
        accountant: One of `ACCOUNTANTS`.
    """

    noise_multiplier: float
    num_clients: int
    clients_per_round: int = 0
    delta: float | None = None
    accountant: str = "rdp"
    delta_given: bool = dataclasses.field(init=False, default=True)

    def __post_init__(self):
        if self.delta is None:
            object.__setattr__(self, "delta", default_delta(self.num_clients))
            object.__setattr__(self, "delta_given", False)
        _check(self.noise_multiplier, self.sampling_rate, 0)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"Unknown accountant {self.accountant!r}")

    @property
    def sampling_rate(self) -> float:
        return sampling_rate(self.clients_per_round, self.num_clients)

    def epsilon(self, rounds: int) -> float:
        return compute_epsilon(
            self.noise_multiplier, self.sampling_rate, rounds, self.delta, self.accountant
        )

    def sampling(self) -> str:
        """The sampling done and the model it is accounted under."""
        n, q = self.num_clients, self.sampling_rate
        if q == 1.0:
            return f"full participation (all {n} clients every round; q = 1, nothing sampled)"
        return (
            f"fixed-size without replacement ({self.clients_per_round} of {n} clients per "
            f"round), accounted as Poisson with q = k/n = {q:.4g}"
        )

    def warning(self) -> str | None:
        """Why the guarantee means little with few clients, or None with enough of them."""
        if self.num_clients >= FEW_CLIENTS:
            return None
        return (
            f"only {self.num_clients} clients: a client-level epsilon over fewer than "
            f"{FEW_CLIENTS} clients is near meaningless as privacy (delta {self.delta:.2g})"
        )

    def describe(self, rounds: int, clip: Any) -> str:
        """The run's DP line: settings, epsilon after `rounds` rounds, what it assumes."""
        chosen = "--dp_delta" if self.delta_given else DEFAULT_DELTA_RULE
        line = (
            f"DP (unit: client): noise multiplier {self.noise_multiplier}, clip {clip}, "
            f"sampling {self.sampling()}: epsilon after {rounds} rounds "
            f"{self.epsilon(rounds):.4g} at delta {self.delta:.3g} ({chosen}), accountant "
            f"{self.accountant}; training metrics are released without noise"
        )
        warning = self.warning()
        return line + (f"; warning: {warning}" if warning else "")

    def report(self, rounds: int, epsilon: float | None = None) -> dict[str, Any]:
        """The summary.json "privacy" entry for a run of `rounds` rounds."""
        entry = {
            "unit": "client",
            "epsilon": self.epsilon(rounds) if epsilon is None else epsilon,
            "delta": self.delta,
            "delta_choice": "--dp_delta" if self.delta_given else DEFAULT_DELTA_RULE,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sampling": self.sampling(),
            "sampling_rate": self.sampling_rate,
            "num_clients": self.num_clients,
            "rounds": rounds,
            "training_metrics_released_without_noise": True,
        }
        warning = self.warning()
        if warning:
            entry["warning"] = warning
        return entry


def _check(noise_multiplier: float, sampling_rate: float, rounds: int) -> None:
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
