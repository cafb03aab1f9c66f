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
    fedper      FedPer (Arivazhagan et al., 2019), own heads    fedper.py
    fedrep      FedRep (Collins et al., 2021), head then body   fedrep.py
    ditto       Ditto (Li et al., 2021), personal models        ditto.py

What each accepts is in `registry.py` (`ALGORITHM_INFO[name]`), whose
`check_combination` refuses flag combinations that cannot work. In short:
scaffold, fednova, fedbn, fedper, fedrep and ditto take no client
learning-rate schedule; scaffold, fednova and ditto train clients with local
SGD (scaffold without momentum); fedbn needs BatchNorm, fedper, fedrep and
ditto refuse it; the dp aggregator works with fedavg, fedprox and the FedOpt
variants only, and the secure one with those and fednova, neither with
BatchNorm; scaffold, fedbn, fedper, fedrep and ditto keep per-client state
(fedper and fedrep each client's head, ditto each client's personal model,
all scored as each client's own model) and run on one TFF worker.

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
    has_client_models,
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
    "has_client_models",
    "learning_rate_schedule",
    "server_optimizer_spec",
]
