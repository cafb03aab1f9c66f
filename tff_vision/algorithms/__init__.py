"""Federated learning algorithms as TFF learning processes, selectable by name.

`build_process(name, model_fn, ...)` is the one entry the experiment uses:

    fedavg      FedAvg (McMahan et al., 2017)                   fedavg.py
    fedprox     FedProx (Li et al., 2020), needs mu > 0         fedprox.py
    fedavgm     FedAvg + server SGD with momentum               fedopt.py
    fedadam     FedAvg + server Adam (Reddi et al., 2021)       fedopt.py
    fedyogi     FedAvg + server Yogi                            fedopt.py
    fedadagrad  FedAvg + server Adagrad                         fedopt.py
    scaffold    SCAFFOLD (Karimireddy et al., 2020)             scaffold.py
    fednova     FedNova (Wang et al., 2020)                     fednova.py
    fedbn       FedBN (Li et al., 2021), BatchNorm stays local  fedbn.py

`ALGORITHM_INFO[name]` says what each one accepts (a model aggregator, a
client learning-rate schedule, which normalization layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tff_vision import aggregators as aggregators_lib
from tff_vision.algorithms.fedavg import build_fedavg
from tff_vision.algorithms.fedopt import (
    FEDOPT_SERVER_OPTIMIZERS,
    ServerOptimizerSpec,
    server_optimizer_spec,
)
from tff_vision.algorithms.fedprox import build_fedprox
from tff_vision.algorithms.optimizers import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    learning_rate_schedule,
)


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
    """What an algorithm supports; `experiment.ExperimentConfig.validate` checks these.

    Attributes:
        name: The `--algorithm` value.
        description: One line for help texts.
        takes_aggregator: Accepts a `model_aggregator` (`--aggregator` other
            than mean).
        takes_schedule: Accepts `client_learning_rate_fn` (cosine schedule).
        norms: Normalization layers it works with; None for any.
        client_optimizers: Client optimizers it works with; None for any.
        takes_client_momentum: Accepts client SGD momentum.
        takes_dp: Accepts the dp aggregator. False for SCAFFOLD and FedBN,
            whose clients also send the server per-client values in the clear
            (control variates, local BatchNorm variables: no DP guarantee would
            hold), and for FedNova, whose normalized averaging needs the client
            weights that the unweighted DP mean drops.
        takes_secure: Accepts the secure aggregator (False for SCAFFOLD and
            FedBN, for the same reason: secure summation would hide nothing).
        indexed_clients: `next` takes `(client_index, dataset)` pairs (the
            process keeps per-client state, see `_client_loops`).
    """

    name: str
    description: str
    takes_aggregator: bool = True
    takes_schedule: bool = True
    norms: tuple[str, ...] | None = None
    client_optimizers: tuple[str, ...] | None = None
    takes_client_momentum: bool = True
    takes_dp: bool = True
    takes_secure: bool = True
    indexed_clients: bool = False


ALGORITHM_INFO: dict[str, AlgorithmInfo] = {
    "fedavg": AlgorithmInfo("fedavg", "FedAvg: example-weighted mean of client models"),
    "fedprox": AlgorithmInfo("fedprox", "FedProx: FedAvg + proximal term mu/2 ||w - w_g||^2"),
    "fedavgm": AlgorithmInfo("fedavgm", "FedAvg + server momentum (--server_momentum, 0.9)"),
    "fedadam": AlgorithmInfo("fedadam", "FedOpt with server Adam (--server_lr ~1e-2)"),
    "fedyogi": AlgorithmInfo("fedyogi", "FedOpt with server Yogi (--server_lr ~1e-2)"),
    "fedadagrad": AlgorithmInfo("fedadagrad", "FedOpt with server Adagrad (--server_lr ~1e-1)"),
    # Written separately (scaffold.py, fednova.py, fedbn.py): plain local SGD at a constant
    # rate (no schedule); scaffold and fedbn keep per-client state in the server state.
    "scaffold": AlgorithmInfo(
        "scaffold",
        "SCAFFOLD: control variates correct client drift (plain local SGD)",
        takes_schedule=False,
        client_optimizers=("sgd",),
        takes_client_momentum=False,
        takes_dp=False,
        takes_secure=False,
        indexed_clients=True,
    ),
    "fednova": AlgorithmInfo(
        "fednova",
        "FedNova: averages updates normalized by local steps (local SGD, momentum ok)",
        takes_schedule=False,
        client_optimizers=("sgd",),
        takes_dp=False,
    ),
    "fedbn": AlgorithmInfo(
        "fedbn",
        "FedBN: FedAvg with client-local BatchNorm (needs --norm=batch)",
        takes_schedule=False,
        norms=("batch",),
        takes_dp=False,
        takes_secure=False,
        indexed_clients=True,
    ),
}

ALGORITHMS = tuple(ALGORITHM_INFO)

OptimizerArg = Any  # A tff.learning Optimizer, or learning_rate -> Optimizer with a schedule.


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
        client_momentum: fednova's local SGD momentum.
        num_clients: Total clients (scaffold and fedbn keep per-client state).

    Returns:
        The learning process.

    Raises:
        ValueError: For an unknown name or settings the algorithm cannot take.
    """
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    if name not in ALGORITHM_INFO:
        raise ValueError(f"Unknown algorithm {name!r}; use one of {', '.join(ALGORITHMS)}")
    info = ALGORITHM_INFO[name]
    if model_aggregator is not None and not info.takes_aggregator:
        raise ValueError(f"{name} has its own aggregation; it takes no model_aggregator")
    if client_learning_rate_fn is not None and not info.takes_schedule:
        raise ValueError(f"{name} takes no client learning-rate schedule")

    if server_optimizer is None:
        server_optimizer = server_optimizer_spec(name)
    if isinstance(server_optimizer, ServerOptimizerSpec):
        server_optimizer = server_optimizer.build()

    if isinstance(model_aggregator, aggregators_lib.Aggregator):
        model_aggregator = model_aggregator.factory
    if isinstance(model_aggregator, aggregators_lib.SimulatedSecureFactory) and not (
        info.takes_secure
    ):
        raise ValueError(f"{name} sends per-client values in the clear; secure sum hides nothing")
    uniform = isinstance(model_aggregator, tff.aggregators.UnweightedAggregationFactory)
    if uniform and not info.takes_dp:
        raise ValueError(f"{name} cannot take an unweighted (DP) aggregator")
    if uniform:
        model_aggregator = tff.aggregators.as_weighted_aggregator(model_aggregator)

    if name == "fedprox":
        if not proximal_strength > 0:
            raise ValueError(f"fedprox needs proximal_strength > 0, got {proximal_strength}")
        return build_fedprox(
            model_fn,
            client_optimizer,
            float(proximal_strength),
            server_optimizer=server_optimizer,
            model_aggregator=model_aggregator,
            client_learning_rate_fn=client_learning_rate_fn,
            client_weighting=(
                tff.learning.ClientWeighting.UNIFORM
                if uniform
                else tff.learning.ClientWeighting.NUM_EXAMPLES
            ),
        )
    if name == "fedavg" or name in FEDOPT_SERVER_OPTIMIZERS:
        # FedOpt differs from FedAvg only in the server optimizer. With an unweighted
        # (DP) aggregator the client weights are ignored by `as_weighted_aggregator`.
        return build_fedavg(
            model_fn,
            client_optimizer,
            server_optimizer,
            model_aggregator=model_aggregator,
            client_learning_rate_fn=client_learning_rate_fn,
        )
    # pylint: disable=g-import-not-at-top
    if name in ("scaffold", "fednova") and client_learning_rate is None:
        raise ValueError(f"{name} needs client_learning_rate (it runs plain local SGD)")
    if name in ("scaffold", "fedbn") and not num_clients:
        raise ValueError(f"{name} needs num_clients (it keeps per-client state)")
    if name == "scaffold":
        from tff_vision.algorithms import scaffold

        return scaffold.build_scaffold(
            model_fn,
            float(client_learning_rate),
            server_optimizer,
            num_clients=int(num_clients),
            model_aggregator=model_aggregator,
        )
    if name == "fednova":
        from tff_vision.algorithms import fednova

        return fednova.build_fednova(
            model_fn,
            float(client_learning_rate),
            server_optimizer,
            client_momentum=float(client_momentum),
            model_aggregator=model_aggregator,
        )
    if name == "fedbn":
        from tff_vision.algorithms import fedbn

        return fedbn.build_fedbn(
            model_fn,
            client_optimizer,
            server_optimizer,
            num_clients=int(num_clients),
            model_aggregator=model_aggregator,
        )
    raise ValueError(f"algorithm {name!r} is registered but has no builder")


__all__ = [
    "ALGORITHMS",
    "ALGORITHM_INFO",
    "AlgorithmInfo",
    "FEDOPT_SERVER_OPTIMIZERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "ServerOptimizerSpec",
    "build_fedavg",
    "build_fedprox",
    "build_optimizer",
    "build_process",
    "learning_rate_schedule",
    "server_optimizer_spec",
]
