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

What each accepts is in `registry.py` (`ALGORITHM_INFO[name]`), whose
`check_combination` refuses flag combinations that cannot work. In short:
scaffold, fednova and fedbn take no client learning-rate schedule; scaffold
and fednova train clients with plain SGD (scaffold without momentum); fedbn
needs BatchNorm; the dp aggregator works with fedavg, fedprox and the FedOpt
variants only, and the secure one with those and fednova, neither with
BatchNorm; scaffold and fedbn keep per-client state and run on one TFF worker.

With BatchNorm, every algorithm but fedbn ends each round by recomputing the
global moving statistics for the new global model over the round's clients
(`_batchnorm`), in a second pass over the clients, which does not split over
TFF workers; the statistics travel beside the model update, outside DP noise
and secure summation. Hence the refusals of BatchNorm with dp, secure and
several workers. The chosen aggregator sees only the model update: FedNova's
step counts and FedBN's local variables take a plain weighted mean
(`_compose.ModelUpdateFactory`).
"""

from __future__ import annotations

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
from tff_vision.algorithms.registry import (
    ALGORITHM_INFO,
    ALGORITHMS,
    AlgorithmSpec,
    build_process,
    check_combination,
    client_models,
)

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_INFO",
    "AlgorithmSpec",
    "FEDOPT_SERVER_OPTIMIZERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "ServerOptimizerSpec",
    "build_fedavg",
    "build_fedprox",
    "build_optimizer",
    "build_process",
    "check_combination",
    "client_models",
    "learning_rate_schedule",
    "server_optimizer_spec",
]
