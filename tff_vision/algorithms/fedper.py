"""FedPer (Arivazhagan et al., 2019, https://arxiv.org/abs/1912.00818) as a TFF process.

FedPer splits the model into a shared body and a personal head, the final
classifier layer: the body is trained by FedAvg, the head never leaves its
client. With body `w`, client `i`'s head `h_i` and `n_i` its examples:

    every client i in S trains (w, h_i) to (w_i, h_i+) with its optimizer; h_i <- h_i+
    server:  w <- w - server_optimizer_step(sum_i n_i (w - w_i) / sum_i n_i)

The heads are a per-client table in the server state (`_local_parts`, FedBN's
machinery with the head as the kept part), so saving the state resumes
exactly. The global model's head is the example-weighted mean of the round's
heads: the start of a client's first round; no client uses it, so
evaluations score each client's own model (`process.client_models(state)`:
the shared body with the client's head). The head is the last Dense layer of
the Keras model (`head_layer_names`; "logits" for `tff_vision.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _local_parts, fedbn, keras_model


def head_layer_names(model: tf.keras.Model) -> list[str]:
    """The classifier head of a Keras model: `[name]` of its last Dense layer.

    Searches nested models from the output end. Raises ValueError when there
    is no Dense layer.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, tf.keras.Model):
            try:
                return head_layer_names(layer)
            except ValueError:
                continue
        if isinstance(layer, tf.keras.layers.Dense):
            return [layer.name]
    raise ValueError(f"model {model.name!r} has no Dense layer to use as the head")


def head_slots(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    layer_names: Sequence[str] | None = None,
) -> _local_parts.Slots:
    """Positions of the head's variables in the model's `ModelWeights`.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        layer_names: The head's layers; None for `head_layer_names` of the
            Keras model (a `tff.learning.models.from_keras_model` model).

    Raises:
        ValueError: When the head has no variables, or is the whole model.
    """
    with tf.Graph().as_default():
        model = model_fn()
        if layer_names is None:
            keras = getattr(model, "_keras_model", None)
            if keras is None:
                raise ValueError("not a Keras-based model: pass head_layer_names")
            layer_names = head_layer_names(keras)
        weights = tff.learning.models.ModelWeights.from_model(model)
        trainable_names = [v.name for v in weights.trainable]
        non_trainable_names = [v.name for v in weights.non_trainable]
    keras_model.restore_eager_keras_classes()
    slots = _local_parts.Slots(
        fedbn.local_variable_slots(trainable_names, layer_names),
        fedbn.local_variable_slots(non_trainable_names, layer_names),
    )
    if not slots.trainable or len(slots.trainable) == len(trainable_names):
        raise ValueError(
            f"the head {list(layer_names)} must hold some but not all trainable variables "
            f"(model variables: {trainable_names})"
        )
    return slots


def build_fedper(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer | float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    head_layer_names: Sequence[str] | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _local_parts.LocalPartsProcess:
    """Builds the FedPer learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_optimizer: TFF optimizer for local training (body and head),
            or a float: the learning rate of plain SGD.
        server_optimizer: Applies the example-weighted mean body update as a
            pseudo-gradient; defaults to SGD with learning rate 1.0 (FedAvg).
        num_clients: Total number of clients (rows of the head table).
        head_layer_names: The layers each client keeps; by default the last
            Dense layer.
        model_aggregator: Weighted aggregation factory of the body updates;
            defaults to `tff.aggregators.MeanFactory()`.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `_local_parts.LocalPartsProcess`: `next(state, client_data)` takes all
        clients' datasets in index order or `(client_index, dataset)` pairs;
        `client_models(state)` is each client's body + own head.
    """
    if not isinstance(client_optimizer, tff.learning.optimizers.Optimizer):
        client_optimizer = tff.learning.optimizers.build_sgdm(float(client_optimizer))

    return _local_parts.build_split_process(
        model_fn,
        client_optimizer,
        server_optimizer,
        num_clients=num_clients,
        slots=head_slots(model_fn, head_layer_names),
        train=_local_parts.train_all,
        model_aggregator=model_aggregator,
        metrics_aggregator=metrics_aggregator,
    )
