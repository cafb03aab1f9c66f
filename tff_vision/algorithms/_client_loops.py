"""How the clients of the composed processes (FedProx, SCAFFOLD, FedNova, FedBN, ...) train.

`train_locally` runs a `tff.learning.optimizers.Optimizer` over every batch of
a client dataset on a `tff.learning.models.VariableModel` (the same loop as
TFF's model-delta client work), optionally correcting each gradient first
(SCAFFOLD's control variates, FedProx's proximal term), and counts the
examples and the local steps taken (the `K` of SCAFFOLD, the `tau_i` of
FedNova). A client whose update is not finite sends zeros with weight 0
(`zero_if_non_finite`, `finish_client`), so one diverged client cannot ruin
a round. `trace_model` reads the TFF types a builder needs from `model_fn`.
Per-client state (SCAFFOLD, FedBN) is in `_client_state`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import keras_model

GradientCorrection = Callable[[list[tf.Tensor]], list[tf.Tensor]]


# ----------------------------------------------------------------------------- local training


def train_locally(
    model: tff.learning.models.VariableModel,
    optimizer: tff.learning.optimizers.Optimizer,
    dataset: tf.data.Dataset,
    gradient_correction: GradientCorrection | None = None,
    variable_slots: Sequence[int] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Trains `model` in place with one `optimizer` step per batch of `dataset`.

    Must be traced inside a `tf.function`. The optimizer state starts fresh
    (as in TFF's model-delta client work); the model's forward pass runs with
    `training=True`, so BatchNormalization moving statistics are updated too.

    Args:
        model: The model to train; its variables hold the starting point.
        optimizer: A TFF optimizer applied to the trainable variables.
        dataset: Batches of `(images, labels)`.
        gradient_correction: Optional function mapping the list of batch
            gradients (one per trainable variable) to the gradients the
            optimizer receives.
        variable_slots: Positions in `ModelWeights.trainable` of the variables
            to train (FedRep's head or body); the others stay frozen and get
            no gradient. None: all of them.

    Returns:
        `(num_examples, num_steps)`, both int64 scalars: the examples trained
        on and the number of optimizer steps (batches).
    """
    trainable = list(tff.learning.models.ModelWeights.from_model(model).trainable)
    if variable_slots is not None:
        trainable = [trainable[i] for i in variable_slots]
    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)

    def reduce_fn(loop_state, batch):
        num_examples, num_steps, optimizer_state = loop_state
        with tf.GradientTape() as tape:
            output = model.forward_pass(batch, training=True)
        gradients = tape.gradient(output.loss, trainable)
        if gradient_correction is not None:
            gradients = gradient_correction(gradients)
        optimizer_state, updated = optimizer.next(
            optimizer_state, tuple(trainable), tuple(gradients)
        )
        for variable, value in zip(trainable, updated):
            variable.assign(value)
        if output.num_examples is None:
            batch_examples = tf.shape(output.predictions, out_type=tf.int64)[0]
        else:
            batch_examples = tf.cast(output.num_examples, tf.int64)
        return num_examples + batch_examples, num_steps + 1, optimizer_state

    initial = (
        tf.constant(0, tf.int64),
        tf.constant(0, tf.int64),
        optimizer.initialize(specs),
    )
    num_examples, num_steps, _ = reduce_batches(dataset, initial, reduce_fn)
    return num_examples, num_steps


def reduce_batches(dataset: tf.data.Dataset, initial_state: Any, reduce_fn: Callable) -> Any:
    """`dataset.reduce(initial_state, reduce_fn)` as an iterator loop.

    The loop form of TFF's `LoopImplementation.DATASET_ITERATOR` (the one
    `fedavg.LOOP_IMPLEMENTATION` selects). `Dataset.reduce` instantiates its
    body, here a whole forward/backward step, as a new function (grappler
    included) every time it runs, i.e. for every client of every round; the
    iterator loop is part of the client computation's graph, which the TFF
    worker builds once per session. Must be traced inside a `tf.function`
    (AutoGraph turns the loop into a `tf.while_loop`).
    """
    state = initial_state
    for batch in iter(dataset):
        state = reduce_fn(state, batch)
    return state


def zero_if_non_finite(values: Any) -> tuple[Any, tf.Tensor]:
    """Zeroes every tensor of `values` when any of them has a NaN/inf.

    Returns:
        `(values or zeros, is_finite)` with `is_finite` a bool scalar.
    """
    flat = tf.nest.flatten(values)
    is_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in flat])
    zeroed = [tf.where(is_finite, t, tf.zeros_like(t)) for t in flat]
    return tf.nest.pack_sequence_as(values, zeroed), is_finite


def client_weight(
    weighting: tff.learning.ClientWeighting, num_examples: tf.Tensor, is_finite: tf.Tensor
) -> tf.Tensor:
    """The aggregation weight of a client (0 when its update was not finite)."""
    if weighting == tff.learning.ClientWeighting.NUM_EXAMPLES:
        weight = tf.cast(num_examples, tf.float32)
    elif weighting == tff.learning.ClientWeighting.UNIFORM:
        weight = tf.constant(1.0, tf.float32)
    else:
        raise ValueError(f"Unsupported client weighting: {weighting}")
    return tf.where(is_finite, weight, 0.0)


def finish_client(
    model: tff.learning.models.VariableModel,
    update: Any,
    num_examples: tf.Tensor,
    is_finite: tf.Tensor,
    weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.NUM_EXAMPLES,
) -> tuple[tff.learning.templates.ClientResult, Any]:
    """`(ClientResult, unfinalized metrics)` of a client that trained `model`.

    A client whose update was not finite (zeroed by `zero_if_non_finite`)
    gets weight 0 and reports no metrics, so one diverged client neither
    moves the model nor spoils the round's training loss.
    """
    if not is_finite:
        model.reset_metrics()
    result = tff.learning.templates.ClientResult(
        update=update, update_weight=client_weight(weighting, num_examples, is_finite)
    )
    return result, model.report_local_unfinalized_metrics()


# ---------------------------------------------------------------------- model and client work


@dataclasses.dataclass(frozen=True)
class TracedModel:
    """What a builder needs to know about the model of `model_fn`.

    Attributes:
        weights_type: The `ModelWeights` TFF type.
        element_type: The TFF type of one batch of client data.
        metrics_aggregation_fn: Federated computation aggregating the clients'
            unfinalized metrics (from the builder's `metrics_aggregator`).
        trainable_names: Variable names of `weights_type.trainable`, in order.
        non_trainable_names: Variable names of `weights_type.non_trainable`.
    """

    weights_type: tff.Type
    element_type: tff.Type
    metrics_aggregation_fn: tff.Computation
    trainable_names: tuple[str, ...]
    non_trainable_names: tuple[str, ...]


def trace_model(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> TracedModel:
    """Builds the model of `model_fn` once, in a throwaway graph, to read its types.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        metrics_aggregator: Builds the metrics aggregation from the model's
            metric finalizers; defaults to `tff.learning.metrics.sum_then_finalize`.
    """
    if metrics_aggregator is None:
        metrics_aggregator = tff.learning.metrics.sum_then_finalize
    with tf.Graph().as_default():
        model = model_fn()
        if not isinstance(model, tff.learning.models.VariableModel):
            raise TypeError(f"model_fn must return a VariableModel, got {type(model).__name__}")
        metrics_aggregation_fn = metrics_aggregator(model.metric_finalizers())
        weights = tff.learning.models.ModelWeights.from_model(model)
        trainable_names = tuple(v.name for v in weights.trainable)
        non_trainable_names = tuple(v.name for v in weights.non_trainable)
    # Tracing in a graph switches Keras' functional base class; switch it back.
    keras_model.restore_eager_keras_classes()
    return TracedModel(
        weights_type=tff.learning.models.weights_type_from_model(model),
        element_type=tff.types.tensorflow_to_type(model.input_spec),
        metrics_aggregation_fn=metrics_aggregation_fn,
        trainable_names=trainable_names,
        non_trainable_names=non_trainable_names,
    )


def tensor_specs(type_spec: tff.Type) -> Any:
    """The structure of `tf.TensorSpec`s (Python containers kept) of a tensor type tree."""
    return tff.types.type_to_tf_tensor_specs(type_spec)


def train_measurements(metrics_aggregation_fn: tff.Computation, model_outputs: tff.Value):
    """SERVER-placed `OrderedDict(train=...)`: the clients' training metrics, aggregated."""
    return tff.federated_zip(collections.OrderedDict(train=metrics_aggregation_fn(model_outputs)))


def client_work_process(
    init_fn: tff.Computation, next_fn: tff.Computation
) -> tff.learning.templates.ClientWorkProcess:
    """`ClientWorkProcess(init_fn, next_fn)`, with Keras' eager classes restored.

    Tracing the client update in TFF's graphs switches Keras' functional base
    class (see `keras_model.restore_eager_keras_classes`).
    """
    process = tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
    keras_model.restore_eager_keras_classes()
    return process


def flatten_state(state: Any) -> list[np.ndarray]:
    """All tensors of a process state, flattened (for comparisons in tests and tools)."""
    return [np.asarray(x) for x in tf.nest.flatten(state)]


__all__: Sequence[str] = (
    "TracedModel",
    "client_weight",
    "client_work_process",
    "finish_client",
    "flatten_state",
    "reduce_batches",
    "tensor_specs",
    "trace_model",
    "train_locally",
    "train_measurements",
    "zero_if_non_finite",
)
