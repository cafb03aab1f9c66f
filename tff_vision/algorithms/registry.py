"""The algorithm registry: every `--algorithm` name, what it accepts, and its builder.

This module is the only place where an algorithm's settings are accepted or
refused. `check_combination` checks a run's flags before anything is loaded;
`build_process` checks a library caller's arguments and builds the process.
Both read the same `AlgorithmSpec`s, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow_federated as tff

from tff_vision import aggregators as aggregators_lib
from tff_vision.algorithms import _batchnorm, ditto, fedbn, fednova, fedper, fedrep, scaffold
from tff_vision.algorithms.fedavg import build_fedavg
from tff_vision.algorithms.fedopt import ServerOptimizerSpec, server_optimizer_spec
from tff_vision.algorithms.fedprox import build_fedprox

OptimizerArg = Any  # A tff.learning Optimizer, or learning_rate -> Optimizer with a schedule.

_FEDAVG_ARGS = ("client_optimizer", "client_learning_rate_fn")
# How `build_process` passes an argument on to a builder.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "proximal_strength": float,
    "client_learning_rate": float,
    "client_momentum": float,
    "num_clients": int,
    "ditto_lambda": float,
    "head_epochs": int,
}


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm: its help line, the settings it takes, and how to build it.

    Attributes:
        name: The `--algorithm` value.
        description: One line for help texts.
        build: The builder; called with `model_fn` and the keyword arguments
            `server_optimizer`, `model_aggregator` and those in `build_args`.
        build_args: The further `build_process` arguments `build` takes, by
            name, plus `client_weighting` for a builder that weights clients
            uniformly under DP. Taking `client_learning_rate_fn` is what
            accepting a client learning-rate schedule means.
        norms: Normalization layers it works with; None for any. FedPer,
            FedRep and Ditto refuse BatchNorm: nothing here keeps the
            statistics of a client's own model.
        takes_client_momentum: Accepts client SGD momentum.
        takes_dp: Accepts the dp aggregator. False for SCAFFOLD, FedBN and the
            personalized ones, whose clients also send the server per-client
            values in the clear (control variates, local BatchNorm variables,
            heads, personal models: no DP guarantee would hold), and for
            FedNova, whose normalized averaging needs the client weights that
            the unweighted DP mean drops.
        takes_secure: Accepts the secure aggregator (False for SCAFFOLD, FedBN
            and the personalized ones, for the same reason: secure summation
            would hide nothing).
        needs_proximal_strength: Needs mu > 0 (FedProx).
        indexed_clients: `next` takes `(client_index, dataset)` pairs (the
            process keeps per-client state, see `_client_state`), so it needs
            `num_clients` and runs on one TFF worker.
        recomputes_batch_statistics: Each round ends with the clients
            sending the BatchNorm statistics of the new global model
            (`_batchnorm`): outside DP noise and secure summation, so those
            aggregators are refused with BatchNorm, and in a second client
            pass, which does not split over TFF workers. False for FedBN,
            whose normalization stays local.
        own_client_models: Each client deploys a model of its own (FedBN's
            norms, FedPer's and FedRep's heads, Ditto's personal model), and the
            federated metrics score those: there is no one global model whose
            weights `--ema_decay` could average over rounds.
    """

    name: str
    description: str
    build: Callable[..., Any]
    build_args: tuple[str, ...] = _FEDAVG_ARGS
    norms: tuple[str, ...] | None = None
    takes_client_momentum: bool = True
    takes_dp: bool = True
    takes_secure: bool = True
    needs_proximal_strength: bool = False
    indexed_clients: bool = False
    recomputes_batch_statistics: bool = True
    own_client_models: bool = False

    @property
    def takes_schedule(self) -> bool:
        """Accepts `client_learning_rate_fn` (a client learning-rate schedule)."""
        return "client_learning_rate_fn" in self.build_args

    @property
    def needs_client_learning_rate(self) -> bool:
        """Runs plain local SGD at `client_learning_rate` (no client optimizer)."""
        return "client_learning_rate" in self.build_args

    @property
    def client_optimizers(self) -> tuple[str, ...] | None:
        """Client optimizers it works with (None for any): sgd for plain local SGD."""
        return ("sgd",) if self.needs_client_learning_rate else None


# Clients that send the server per-client values in the clear (SCAFFOLD's control variates,
# FedBN's local BatchNorm variables, FedPer's and FedRep's heads, Ditto's personal models)
# defeat DP and secure summation; the state that holds those values is indexed by client and
# lives on one TFF worker.
_PER_CLIENT_STATE = dict(takes_dp=False, takes_secure=False, indexed_clients=True)
# ... and those whose clients also keep part of the model scored as their own.
_OWN_MODELS = dict(_PER_CLIENT_STATE, own_client_models=True)
# Personalized algorithms keep per-client models whose BatchNorm statistics nothing maintains.
_NO_BATCH_NORM = ("group", "none")
# FedOpt differs from FedAvg only in the server optimizer (see fedopt.py). Scaffold, fednova
# and ditto run local SGD; they and the algorithms with per-client state take a constant rate.
_SPECS = (
    AlgorithmSpec("fedavg", "FedAvg: example-weighted mean of client models", build_fedavg),
    AlgorithmSpec(
        "fedprox",
        "FedProx: FedAvg + proximal term mu/2 ||w - w_g||^2",
        build_fedprox,
        _FEDAVG_ARGS + ("proximal_strength", "client_weighting"),
        needs_proximal_strength=True,
    ),
    AlgorithmSpec("fedavgm", "FedAvg + server momentum (--server_momentum, 0.9)", build_fedavg),
    AlgorithmSpec("fedadam", "FedOpt with server Adam (--server_lr ~1e-2)", build_fedavg),
    AlgorithmSpec("fedyogi", "FedOpt with server Yogi (--server_lr ~1e-2)", build_fedavg),
    AlgorithmSpec("fedadagrad", "FedOpt with server Adagrad (--server_lr ~1e-1)", build_fedavg),
    AlgorithmSpec(
        "scaffold",
        "SCAFFOLD: control variates correct client drift (plain local SGD)",
        scaffold.build_scaffold,
        ("client_learning_rate", "num_clients"),
        takes_client_momentum=False,
        **_PER_CLIENT_STATE,
    ),
    AlgorithmSpec(
        "fednova",
        "FedNova: averages updates normalized by local steps (local SGD, momentum ok)",
        fednova.build_fednova,
        ("client_learning_rate", "client_momentum"),
        takes_dp=False,
    ),
    AlgorithmSpec(
        "fedbn",
        "FedBN: FedAvg with client-local BatchNorm (needs --norm=batch)",
        fedbn.build_fedbn,
        ("client_optimizer", "num_clients"),
        norms=("batch",),
        recomputes_batch_statistics=False,
        **_OWN_MODELS,
    ),
    AlgorithmSpec(
        "fedper",
        "FedPer: FedAvg on the body, each client keeps its own head (last Dense layer)",
        fedper.build_fedper,
        ("client_optimizer", "num_clients"),
        norms=_NO_BATCH_NORM,
        **_OWN_MODELS,
    ),
    AlgorithmSpec(
        "fedrep",
        "FedRep: FedPer's split; clients train the head (--fedrep_head_epochs), then the body",
        fedrep.build_fedrep,
        ("client_optimizer", "num_clients", "head_epochs"),
        norms=_NO_BATCH_NORM,
        **_OWN_MODELS,
    ),
    AlgorithmSpec(
        "ditto",
        "Ditto: FedAvg + a personal model per client pulled to it (--ditto_lambda; local SGD)",
        ditto.build_ditto,
        ("client_learning_rate", "client_momentum", "num_clients", "ditto_lambda"),
        norms=_NO_BATCH_NORM,
        **_OWN_MODELS,
    ),
)

# What the DP and secure aggregators would leave unprotected: the BatchNorm statistics
# that travel beside the update.
_UNPROTECTED_STATISTICS = {
    "dp": "release the clients' BatchNorm statistics without noise",
    "secure": "sum the clients' BatchNorm statistics outside secure aggregation",
}

ALGORITHM_INFO: dict[str, AlgorithmSpec] = {spec.name: spec for spec in _SPECS}
ALGORITHMS = tuple(ALGORITHM_INFO)


def check_combination(
    algorithm: str,
    *,
    norm: str,
    aggregator: str,
    client_optimizer: str,
    client_momentum: float,
    client_lr_schedule: str,
    proximal_strength: float,
    distributed: bool,
    ema_decay: float = 0.0,
) -> None:
    """Raises ValueError, one line naming the fix, if the combination cannot work.

    The flag-level twin of `build_process`'s checks: `distributed` is whether
    the run asks for several TFF workers (`--workers`/`--local_workers`).
    """
    if algorithm not in ALGORITHM_INFO:
        raise ValueError(f"unknown --algorithm {algorithm!r}; use one of: {', '.join(ALGORITHMS)}")
    spec = ALGORITHM_INFO[algorithm]
    flag = f"--algorithm={algorithm}"
    if distributed and spec.indexed_clients:
        raise ValueError(
            f"{flag} keeps per-client state on the server and runs on one TFF worker; "
            "drop --workers/--local_workers"
        )
    if spec.needs_proximal_strength and not proximal_strength > 0:
        raise ValueError(f"{flag} needs --proximal_strength > 0 (mu, e.g. 0.01 to 1)")
    if spec.norms is not None and norm not in spec.norms:
        raise ValueError(f"{flag} needs --norm={' or '.join(spec.norms)}, got --norm={norm}")
    if (aggregator == "dp" and not spec.takes_dp) or (
        aggregator == "secure" and not spec.takes_secure
    ):
        raise ValueError(
            f"--aggregator={aggregator} does not work with {flag} "
            "(see tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant"
        )
    batch_statistics = norm == "batch" and spec.recomputes_batch_statistics
    if batch_statistics and aggregator in _UNPROTECTED_STATISTICS:
        raise ValueError(
            f"--norm=batch with --aggregator={aggregator} would "
            f"{_UNPROTECTED_STATISTICS[aggregator]}; use --norm=group"
        )
    if batch_statistics and distributed:
        raise ValueError(
            "--norm=batch recomputes the BatchNorm statistics in a second pass over each "
            "round's clients, which TFF cannot split over workers; drop "
            "--workers/--local_workers or use --norm=group"
        )
    if spec.client_optimizers is not None and client_optimizer not in spec.client_optimizers:
        raise ValueError(
            f"{flag} trains clients with {' or '.join(spec.client_optimizers)}; "
            f"got --client_optimizer={client_optimizer}"
        )
    if not spec.takes_client_momentum and client_momentum:
        raise ValueError(f"{flag} runs plain local SGD; pass --client_momentum=0")
    if client_lr_schedule != "constant" and not spec.takes_schedule:
        raise ValueError(
            f"{flag} has no client learning-rate schedule; pass --client_lr_schedule=constant"
        )
    if ema_decay and spec.own_client_models:
        raise ValueError(
            f"{flag} scores each client's own model, and --ema_decay averages one global "
            "model; drop --ema_decay"
        )


def _weighted_aggregator(
    spec: AlgorithmSpec, model_aggregator: Any, model_fn: Callable[[], Any]
) -> tuple[Any, bool]:
    """`(weighted factory or None, uniform)` for `build_process`'s `model_aggregator`."""
    if isinstance(model_aggregator, aggregators_lib.Aggregator):
        model_aggregator = model_aggregator.factory
    secure = isinstance(model_aggregator, aggregators_lib.SimulatedSecureFactory)
    if secure and not spec.takes_secure:
        raise ValueError(
            f"{spec.name} sends per-client values in the clear; secure sum hides nothing"
        )
    uniform = isinstance(model_aggregator, tff.aggregators.UnweightedAggregationFactory)
    if uniform and not spec.takes_dp:
        raise ValueError(f"{spec.name} cannot take an unweighted (DP) aggregator")
    if (secure or uniform) and spec.recomputes_batch_statistics:
        if _batchnorm.batchnorm_slots(model_fn):
            raise ValueError(
                f"{spec.name} sends the BatchNorm statistics of a model outside DP or "
                "secure aggregation; use a model without BatchNorm"
            )
    if uniform:
        model_aggregator = tff.aggregators.as_weighted_aggregator(model_aggregator)
    return model_aggregator, uniform


def build_process(
    name: str,
    model_fn: Callable[[], Any],
    *,
    client_optimizer: OptimizerArg,
    server_optimizer: Any = None,
    client_learning_rate_fn: Callable[[Any], Any] | None = None,
    model_aggregator: Any = None,
    proximal_strength: float = 0.0,
    client_learning_rate: float | None = None,
    client_momentum: float = 0.0,
    num_clients: int | None = None,
    ditto_lambda: float = 0.1,
    fedrep_head_epochs: int = 1,
):
    """Builds the `tff.learning.templates.LearningProcess` of algorithm `name`.

    Args:
        name: One of `ALGORITHMS`.
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_optimizer: The client's `tff.learning.optimizers.Optimizer`;
            with `client_learning_rate_fn`, a callable `lr -> Optimizer`.
        server_optimizer: A `tff.learning.optimizers.Optimizer`, or a
            `ServerOptimizerSpec` (see `server_optimizer_spec`, which applies
            the FedOpt algorithms' optimizer and defaults). None: SGD with
            learning rate 1.0, or for a FedOpt name that algorithm's default.
        client_learning_rate_fn: Optional `round_index -> learning rate`.
        model_aggregator: A `tff.aggregators` factory, weighted or unweighted,
            or a `tff_vision.aggregators.Aggregator`; None for the weighted
            mean. Unweighted ones (DP) are wrapped with
            `tff.aggregators.as_weighted_aggregator` and clients weighted
            uniformly.
        proximal_strength: FedProx's mu (> 0 for fedprox, ignored otherwise).
        client_learning_rate: Local SGD rate of scaffold and fednova (they
            take no client optimizer).
        client_momentum: Local SGD momentum of fednova and ditto.
        num_clients: Total clients (scaffold, fedbn, fedper, fedrep and ditto
            keep per-client state).
        ditto_lambda: Ditto's lambda >= 0 (ignored otherwise).
        fedrep_head_epochs: FedRep's head passes per round, >= 1 (ignored
            otherwise).

    Raises:
        ValueError: For an unknown name or settings the algorithm cannot take
            (DP or secure aggregation of a BatchNorm model included, see
            `AlgorithmSpec.recomputes_batch_statistics`, and a BatchNorm model
            for the algorithms whose `norms` exclude it).
    """
    if name not in ALGORITHM_INFO:
        raise ValueError(f"Unknown algorithm {name!r}; use one of {', '.join(ALGORITHMS)}")
    spec = ALGORITHM_INFO[name]
    if client_learning_rate_fn is not None and not spec.takes_schedule:
        raise ValueError(f"{name} takes no client learning-rate schedule")
    if server_optimizer is None:
        server_optimizer = server_optimizer_spec(name)
    if isinstance(server_optimizer, ServerOptimizerSpec):
        server_optimizer = server_optimizer.build()
    model_aggregator, uniform = _weighted_aggregator(spec, model_aggregator, model_fn)
    if spec.needs_proximal_strength and not proximal_strength > 0:
        raise ValueError(f"{name} needs proximal_strength > 0, got {proximal_strength}")
    if spec.needs_client_learning_rate and client_learning_rate is None:
        raise ValueError(f"{name} needs client_learning_rate (it runs plain local SGD)")
    if spec.indexed_clients and not num_clients:
        raise ValueError(f"{name} needs num_clients (it keeps per-client state)")
    if spec.norms is not None and "batch" not in spec.norms:
        if _batchnorm.batchnorm_slots(model_fn):
            raise ValueError(f"{name} does not take a BatchNorm model; use GroupNorm or none")
    arguments = dict(
        client_optimizer=client_optimizer,
        client_learning_rate_fn=client_learning_rate_fn,
        proximal_strength=proximal_strength,
        client_learning_rate=client_learning_rate,
        client_momentum=client_momentum,
        num_clients=num_clients,
        ditto_lambda=ditto_lambda,
        head_epochs=fedrep_head_epochs,
        client_weighting=(
            tff.learning.ClientWeighting.UNIFORM
            if uniform
            else tff.learning.ClientWeighting.NUM_EXAMPLES
        ),
    )
    return spec.build(
        model_fn,
        server_optimizer=server_optimizer,
        model_aggregator=model_aggregator,
        **{arg: _CONVERSIONS.get(arg, _same)(arguments[arg]) for arg in spec.build_args},
    )


def _same(value: Any) -> Any:
    return value


def client_models(process: Any, state: Any, global_weights: Any = None) -> list[Any] | None:
    """Each client's own `ModelWeights` in `state`, or None where all clients share one model.

    Algorithms that keep part of the model per client (FedBN's normalization
    layers, FedPer's and FedRep's heads, Ditto's personal models) give their
    processes a `client_models(state, global_weights=None)` method; the global
    model of such a process is used by no client, so it is these that are
    scored. `global_weights`, where the caller has read them from `state`,
    spares the process a call of `get_model_weights`.
    """
    if not has_client_models(process):
        return None
    return process.client_models(state, global_weights=global_weights)


def has_client_models(process: Any) -> bool:
    """Whether `process` keeps a model per client (see `client_models`)."""
    return callable(getattr(process, "client_models", None))
