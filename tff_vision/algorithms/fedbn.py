"""FedBN (Li et al., 2021, https://arxiv.org/abs/2102.07623) as a TFF process.

FedBN is FedAvg in which the normalization layers stay local: their
parameters (`gamma`, `beta`) and statistics (moving mean and variance) are
never averaged, since on non-IID features each client's own normalization
fits it best. With shared weights `w`, client `i`'s normalization variables
`b_i` and `n_i` its examples trained on:

    every client i in S trains from (w, b_i) to (w_i, b_i+); b_i <- b_i+
    server:  w <- w - server_optimizer_step(sum_i n_i (w - w_i) / sum_i n_i)

The process is `_local_parts.build_split_process` with the normalization
variables as the kept part: the server optimizer on the shared weights only,
the `b_i` a table in the server state (with a count of each client's rounds),
so saving the state resumes exactly. The global
model's normalization variables are the example-weighted mean of the round's
`b_i+`, the start of a client's first round; no client uses that model, so
evaluations score each client's own (`client_model_weights`, and
`FedBNLearningProcess.client_models` for all of them). Local variables: those
of `local_layer_names`, by default every `gamma`, `beta`, `moving_mean` and
`moving_variance` (Keras' normalization layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _local_parts, keras_model

# The machinery is `_local_parts`'s, shared with FedPer, FedRep and Ditto.
FedBNLearningProcess = _local_parts.LocalPartsProcess
build_fedbn_finalizer = _local_parts.build_finalizer
client_model_weights = _local_parts.client_model_weights
LOCAL_WEIGHTS, PARTICIPATIONS = _local_parts.LOCAL_WEIGHTS, _local_parts.PARTICIPATIONS

NORMALIZATION_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _variable_basename(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]


def local_variable_slots(
    variable_names: Sequence[str], local_layer_names: Sequence[str] | None = None
) -> tuple[int, ...]:
    """Positions of the local (normalization) variables among `variable_names`.

    Args:
        variable_names: TensorFlow variable names such as "norm1/gamma:0".
        local_layer_names: Layers whose variables are local; when None, the
            variables named like those of Keras normalization layers.
    """
    if local_layer_names is None:
        return tuple(
            i
            for i, name in enumerate(variable_names)
            if _variable_basename(name) in NORMALIZATION_VARIABLES
        )
    prefixes = tuple(f"{layer}/" for layer in local_layer_names)
    return tuple(i for i, name in enumerate(variable_names) if name.startswith(prefixes))


def _local_slots(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    local_layer_names: Sequence[str] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Local-variable positions in `(ModelWeights.trainable, ModelWeights.non_trainable)`."""
    with tf.Graph().as_default():
        weights = tff.learning.models.ModelWeights.from_model(model_fn())
        slots = (
            local_variable_slots([v.name for v in weights.trainable], local_layer_names),
            local_variable_slots([v.name for v in weights.non_trainable], local_layer_names),
        )
    keras_model.restore_eager_keras_classes()
    return slots


def _checked_local_slots(
    traced: _client_loops.TracedModel, local_layer_names: Sequence[str] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`_local_slots` of a traced model; raises ValueError when there are none."""
    local_trainable = local_variable_slots(traced.trainable_names, local_layer_names)
    local_non_trainable = local_variable_slots(traced.non_trainable_names, local_layer_names)
    if not local_trainable and not local_non_trainable:
        raise ValueError(
            "FedBN found no normalization variables to keep local (model variables: "
            f"{traced.trainable_names + traced.non_trainable_names}); build the model with "
            "normalization layers (e.g. norm='batch') or pass local_layer_names"
        )
    return local_trainable, local_non_trainable


def build_fedbn_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer,
    num_clients: int,
    local_layer_names: Sequence[str] | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """Builds the FedBN `ClientWorkProcess` (local training with local normalization).

    Its state is `OrderedDict(local_weights=OrderedDict(trainable=[...],
    non_trainable=[...]), participations=int32[num_clients])`: the local
    variables (in model order) stacked to `[num_clients, ...]` and how many
    rounds each client took part in (a client with 0 starts from the
    broadcast normalization variables). Its client data is
    `_client_state.indexed_data_type(...)`; its client update is
    `OrderedDict(shared_update=w - w_i (non-local trainable weights, model
    order), local_mean=b_i+)` weighted by examples.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        client_optimizer: TFF optimizer for local training (all trainable
            weights, local ones included).
        num_clients: Number of clients (rows of the local-variable table).
        local_layer_names: Layers kept local (see `local_variable_slots`).
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.
    """
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    slots = _local_parts.Slots(*_checked_local_slots(traced, local_layer_names))
    return _local_parts.build_client_work(
        model_fn,
        num_clients,
        slots,
        lambda: _local_parts.build_split_client_update(
            model_fn, client_optimizer, slots, _local_parts.train_all
        ),
        metrics_aggregator,
    )


def build_fedbn(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer | float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    local_layer_names: Sequence[str] | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _local_parts.LocalPartsProcess:
    """Builds the FedBN learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` with normalization layers (e.g.
            `tff_vision.models.build_model(..., norm="batch")` wrapped by
            `keras_model.model_fn`).
        client_optimizer: TFF optimizer for local training, or a float: the
            learning rate of plain SGD.
        server_optimizer: Optimizer applying the example-weighted mean of the
            shared-weight updates as a pseudo-gradient; defaults to SGD with
            learning rate 1.0 (FedAvg's averaging).
        num_clients: Total number of clients; fixes the size of the table of
            local variables in the state.
        local_layer_names: Names of the layers kept local, e.g.
            `tff_vision.models.normalization_layer_names(keras_model)`; by
            default every `gamma`/`beta`/`moving_mean`/`moving_variance`.
        model_aggregator: Weighted aggregation factory of the shared-weight
            updates; defaults to `tff.aggregators.MeanFactory()`. The local
            variables' mean is a plain weighted mean whatever the factory
            (`_compose.ModelUpdateFactory`): clipping, zeroing or quantizing
            absolute parameter values would distort them.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `FedBNLearningProcess` (a `tff.learning.templates.LearningProcess`);
        `next(state, client_data)` takes all clients' datasets in index order
        or `(client_index, dataset)` pairs. See `client_model_weights`.
    """
    if not isinstance(client_optimizer, tff.learning.optimizers.Optimizer):
        client_optimizer = tff.learning.optimizers.build_sgdm(float(client_optimizer))
    return _local_parts.build_split_process(
        model_fn,
        client_optimizer,
        server_optimizer,
        num_clients=num_clients,
        slots=_local_parts.Slots(*_local_slots(model_fn, local_layer_names)),
        train=_local_parts.train_all,
        model_aggregator=model_aggregator,
        metrics_aggregator=metrics_aggregator,
        recompute_batch_statistics=False,
    )
