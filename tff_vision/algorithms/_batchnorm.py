"""Global BatchNorm statistics: recomputed for the new global model over the round's clients.

TFF's learning processes aggregate only trainable weights and keep the
server's non-trainable ones, so a BatchNorm model would be evaluated with
its initial moving statistics (mean 0, variance 1) forever. Averaging the
clients' moving statistics after local training (PyTorch state-dict
averaging) does not fit either: they describe each client's own drifted
model, not the average of the models, which can then score below the
majority class.

So after each round the participating clients run the new global model over
their round data in training mode (no weight changes, as PreciseBN does) and
send, per BatchNorm layer, their sums over batches `b` of `n_b` examples:
`sum_b n_b (mu_b - c)`, `sum_b n_b (var_b + (mu_b - c)^2)` and `sum_b n_b`,
with `mu_b`, `var_b` the batch statistics Keras' BatchNorm would average and
`c` the previous global moving mean (a shift against cancellation). The
server sets, with `N = sum n_b` over all clients and `d = S1 / N`:

    moving_mean <- c + d,    moving_variance <- S2 / N - d^2

the statistics of the pooled round data. A client whose statistics are not
finite counts with `N_i = 0`; a round in which none counts keeps the old
values. Other non-trainable weights keep the server's values, as in TFF. The
statistics travel beside the aggregator, as a plain sum. Models without
BatchNorm layers get the wrapped process itself.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _client_state, keras_model

SUMS = "sums"
SQUARES = "squares"
EXAMPLES = "examples"

ModelFn = Callable[[], tff.learning.models.VariableModel]


def _batchnorm_layers(model: tff.learning.models.VariableModel) -> list[tuple[int, int, Any]]:
    """`(moving mean slot, moving variance slot, layer)` of every BatchNorm layer, in slot order.

    Slots are positions in `ModelWeights.non_trainable`. Layers are found in
    the Keras model of a `tff.learning.models.from_keras_model` model; layers
    with batch renormalization are left out (their statistics move otherwise).
    """
    keras = getattr(model, "_keras_model", None)
    if keras is None:
        return []
    slots = {
        v.ref(): i
        for i, v in enumerate(tff.learning.models.ModelWeights.from_model(model).non_trainable)
    }
    layers = []
    for layer in keras.submodules:
        is_batchnorm = all(
            hasattr(layer, name) for name in ("moving_mean", "moving_variance", "momentum")
        )
        if is_batchnorm and not getattr(layer, "renorm", False):
            mean, variance = layer.moving_mean.ref(), layer.moving_variance.ref()
            if mean in slots and variance in slots:
                layers.append((slots[mean], slots[variance], layer))
    return sorted(layers, key=lambda entry: entry[0])


def batchnorm_slots(model_fn: ModelFn) -> tuple[tuple[int, int], ...]:
    """`(moving mean slot, moving variance slot)` per BatchNorm layer of `model_fn`'s model."""
    with tf.Graph().as_default():
        slots = tuple((mean, variance) for mean, variance, _ in _batchnorm_layers(model_fn()))
    keras_model.restore_eager_keras_classes()
    return slots


def _build_client_statistics(model_fn: ModelFn):
    """The `tf.function` of one client's statistics pass (traced inside a computation)."""
    model = model_fn()
    layers = [layer for _, _, layer in _batchnorm_layers(model)]
    for layer in layers:
        layer.momentum = 0.0  # Each training-mode pass leaves its batch's statistics.
    weights = tff.learning.models.ModelWeights.from_model(model)

    @tf.function
    def client_statistics(global_weights, dataset):
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, global_weights)
        shifts = [tf.identity(layer.moving_mean) for layer in layers]

        def add_batch(state, batch):
            sums, squares, examples = state
            for layer in layers:  # Zero, so that momentum 0 leaves the exact batch values.
                layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
                layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))
            output = model.forward_pass(batch, training=True)
            if output.num_examples is None:
                n = tf.cast(tf.shape(output.predictions)[0], tf.float32)
            else:
                n = tf.cast(output.num_examples, tf.float32)
            deviations = [layer.moving_mean - c for layer, c in zip(layers, shifts)]
            sums = [s + n * d for s, d in zip(sums, deviations)]
            squares = [
                q + n * (layer.moving_variance + tf.square(d))
                for q, layer, d in zip(squares, layers, deviations)
            ]
            return sums, squares, examples + n

        zeros = [tf.zeros_like(c) for c in shifts]
        initial = (zeros, zeros, tf.constant(0.0))
        sums, squares, examples = _client_loops.reduce_batches(dataset, initial, add_batch)
        (sums, squares), is_finite = _client_loops.zero_if_non_finite((sums, squares))
        return collections.OrderedDict(
            [(SUMS, sums), (SQUARES, squares), (EXAMPLES, tf.where(is_finite, examples, 0.0))]
        )

    return client_statistics


def _set_statistics(weights: Any, statistics: Any, slots: Sequence[tuple[int, int]]) -> Any:
    """`weights` with the pooled moving means and variances set (TensorFlow)."""
    examples = statistics[EXAMPLES]
    non_trainable = list(weights.non_trainable)
    for (mean_slot, variance_slot), s1, s2 in zip(slots, statistics[SUMS], statistics[SQUARES]):
        shift = non_trainable[mean_slot]
        d = tf.math.divide_no_nan(s1, examples)
        variance = tf.maximum(tf.math.divide_no_nan(s2, examples) - tf.square(d), 0.0)
        counted = examples > 0
        non_trainable[mean_slot] = tf.where(counted, shift + d, shift)
        non_trainable[variance_slot] = tf.where(counted, variance, non_trainable[variance_slot])
    return tff.learning.models.ModelWeights(
        trainable=weights.trainable, non_trainable=type(weights.non_trainable)(non_trainable)
    )


def with_recomputed_statistics(
    process: tff.learning.templates.LearningProcess, model_fn: ModelFn
) -> tff.learning.templates.LearningProcess:
    """`process` whose rounds end by recomputing the global BatchNorm statistics.

    See the module docstring. The client data may be datasets or the indexed
    form of `_client_state` (its `data` field is used). State, metrics and
    the other computations are `process`'s; `process` itself is returned
    when the model has no BatchNorm layers.
    """
    slots = batchnorm_slots(model_fn)
    if not slots:
        return process
    weights_type = process.get_model_weights.type_signature.result
    client_data_type = process.next.type_signature.parameter[1]
    member = client_data_type.member
    indexed = isinstance(member, tff.StructType) and _client_state.DATA in [
        name for name, _ in tff.structure.iter_elements(member)
    ]
    dataset_type = member[_client_state.DATA] if indexed else member

    @tff.tensorflow.computation(weights_type, dataset_type)
    def client_statistics(global_weights, dataset):
        return _build_client_statistics(model_fn)(global_weights, dataset)

    statistics_type = client_statistics.type_signature.result

    @tff.tensorflow.computation(weights_type, statistics_type)
    def set_statistics(weights, statistics):
        return _set_statistics(weights, statistics, slots)

    @tff.federated_computation(process.initialize.type_signature.result, client_data_type)
    def next_fn(state, client_data):
        output = process.next(state, client_data)
        weights = tff.federated_map(process.get_model_weights, output.state)
        datasets = client_data[_client_state.DATA] if indexed else client_data
        statistics = tff.federated_sum(
            tff.federated_map(client_statistics, (tff.federated_broadcast(weights), datasets))
        )
        new_weights = tff.federated_map(set_statistics, (weights, statistics))
        new_state = tff.federated_map(process.set_model_weights, (output.state, new_weights))
        return tff.learning.templates.LearningProcessOutput(new_state, output.metrics)

    wrapped = tff.learning.templates.LearningProcess(
        process.initialize,
        next_fn,
        process.get_model_weights,
        process.set_model_weights,
        get_hparams_fn=process.get_hparams,
        set_hparams_fn=process.set_hparams,
    )
    keras_model.restore_eager_keras_classes()
    return wrapped
