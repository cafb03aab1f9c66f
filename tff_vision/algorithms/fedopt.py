"""FedOpt (Reddi et al., 2021, "Adaptive Federated Optimization"): FedAvg + a server optimizer.

Clients train as in FedAvg; the server treats the example-weighted mean of
the client deltas, Delta = mean_k(w_g - w_k) (TFF's sign: a pseudo-gradient),
as a gradient and steps with its own optimizer:

    fedavgm     SGD with heavy-ball momentum:  v = m * v + Delta;  w -= lr * v
    fedadam     Adam:  a = b1 * a + (1 - b1) * Delta;  s = b2 * s + (1 - b2) * Delta^2;
                w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * a / (sqrt(s) + eps)
                (TFF's `build_adam`: bias-corrected, eps outside the sqrt)
    fedyogi     Yogi:  as Adam but s = s + (1 - b2) * sign(Delta^2 - s) * Delta^2
                (TFF's `build_yogi`, s starts at eps^2)
    fedadagrad  Adagrad:  s = s + Delta^2;  w -= lr * Delta / sqrt(s)
                (TFF's `build_adagrad`; s starts at eps^2, so the denominator is
                sqrt(eps^2 + sum Delta^2), Reddi et al.'s sqrt(v) + tau up to a
                factor <= sqrt(2); TFF's adagrad has no momentum)

Defaults: beta1 = 0.9, beta2 = 0.99, eps (Reddi et al.'s adaptivity tau) =
1e-3, as in the paper's experiments. The server learning rate has to be
tuned: Reddi et al. find 1e-2 to 1e-1 (Adam, Yogi) and about 1e-1 (Adagrad)
best with client SGD; 1.0, FedAvg's neutral value, makes the adaptive
optimizers diverge, so when `--server_lr` is left at 1.0 these algorithms use
`DEFAULT_ADAPTIVE_SERVER_LR` instead. Likewise `fedavgm` uses momentum
`DEFAULT_FEDAVGM_MOMENTUM` when `--server_momentum` is left at 0. The
settings actually used are in `ServerOptimizerSpec` (and in summary.json).

The same beta/eps settings apply when FedAvg or FedProx is given an adaptive
`--server_optimizer`: `--algorithm=fedavg --server_optimizer=adam` is FedAdam.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow_federated as tff

from tff_vision.algorithms import optimizers

# Algorithm name -> the server optimizer it stands for.
FEDOPT_SERVER_OPTIMIZERS = {
    "fedavgm": "sgd",
    "fedadam": "adam",
    "fedyogi": "yogi",
    "fedadagrad": "adagrad",
}
DEFAULT_FEDAVGM_MOMENTUM = 0.9
DEFAULT_ADAPTIVE_SERVER_LR = 0.01
FEDAVG_SERVER_LR = 1.0
ADAPTIVE = ("adam", "yogi", "adagrad")


@dataclasses.dataclass(frozen=True)
class ServerOptimizerSpec:
    """The server optimizer an algorithm runs with (after per-algorithm defaults).

    Attributes:
        name: One of `optimizers.OPTIMIZERS`.
        learning_rate: Server learning rate.
        momentum: SGD momentum (sgd only).
        beta1, beta2, epsilon: Adam/Yogi decay rates and adaptivity; Adagrad
            uses epsilon only.
    """

    name: str
    learning_rate: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    epsilon: float = 1e-3

    def build(self) -> tff.learning.optimizers.Optimizer:
        """The `tff.learning.optimizers.Optimizer`."""
        if self.name == "sgd":
            return optimizers.build_optimizer("sgd", self.learning_rate, self.momentum)
        if self.name == "adam":
            return tff.learning.optimizers.build_adam(
                self.learning_rate, beta_1=self.beta1, beta_2=self.beta2, epsilon=self.epsilon
            )
        if self.name == "yogi":
            return tff.learning.optimizers.build_yogi(
                self.learning_rate,
                beta_1=self.beta1,
                beta_2=self.beta2,
                epsilon=self.epsilon,
                initial_preconditioner_value=self.epsilon**2,
            )
        if self.name == "adagrad":
            return tff.learning.optimizers.build_adagrad(
                self.learning_rate, initial_preconditioner_value=self.epsilon**2, epsilon=0.0
            )
        raise ValueError(f"Unknown server optimizer {self.name!r}")

    def as_dict(self) -> dict[str, Any]:
        """The settings that matter for `name`, for summaries and logs."""
        out: dict[str, Any] = {"server_optimizer": self.name, "server_lr": self.learning_rate}
        if self.name == "sgd":
            out["server_momentum"] = self.momentum
        elif self.name == "adagrad":
            out["server_epsilon"] = self.epsilon
        else:
            out.update(
                server_beta1=self.beta1, server_beta2=self.beta2, server_epsilon=self.epsilon
            )
        return out


def server_optimizer_spec(
    algorithm: str,
    server_optimizer: str = "sgd",
    server_lr: float = FEDAVG_SERVER_LR,
    server_momentum: float = 0.0,
    server_beta1: float = 0.9,
    server_beta2: float = 0.99,
    server_epsilon: float = 1e-3,
) -> ServerOptimizerSpec:
    """The server optimizer of `algorithm` given the runner's server flags.

    For FedOpt names the algorithm picks the optimizer (`server_optimizer`
    must be "sgd", the default, or that same optimizer) and the defaults of
    the module docstring apply; any other algorithm uses `server_optimizer`
    as given.

    Raises:
        ValueError: For a `server_optimizer` that contradicts `algorithm`.
    """
    name = server_optimizer
    lr, momentum = server_lr, server_momentum
    if algorithm in FEDOPT_SERVER_OPTIMIZERS:
        name = FEDOPT_SERVER_OPTIMIZERS[algorithm]
        if server_optimizer not in ("sgd", name):
            raise ValueError(
                f"--algorithm={algorithm} runs server {name}; drop "
                f"--server_optimizer={server_optimizer} (or use --algorithm=fedavg with it)"
            )
        if name == "sgd" and momentum == 0:
            momentum = DEFAULT_FEDAVGM_MOMENTUM
        if name in ADAPTIVE and lr == FEDAVG_SERVER_LR:
            lr = DEFAULT_ADAPTIVE_SERVER_LR
    if name != "sgd":
        momentum = 0.0
    return ServerOptimizerSpec(
        name=name,
        learning_rate=float(lr),
        momentum=float(momentum),
        beta1=float(server_beta1),
        beta2=float(server_beta2),
        epsilon=float(server_epsilon),
    )
