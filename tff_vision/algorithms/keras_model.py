"""Keras classifiers as TFF models, with the loss and metrics used everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff


def loss(label_smoothing: float = 0.0) -> tf.keras.losses.Loss:
    """Cross-entropy on logits (all models output logits) against integer labels.

    With `label_smoothing` eps > 0 the target is (1 - eps) on the label plus
    eps / K on each of the K classes (Szegedy et al. 2016); 0 is the plain loss.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing == 0.0:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return _SmoothedSparseCrossentropy(label_smoothing)


class _SmoothedSparseCrossentropy(tf.keras.losses.Loss):
    """Categorical cross-entropy with label smoothing, for integer labels (Keras has none)."""

    def __init__(self, label_smoothing: float):
        super().__init__(name="smoothed_sparse_categorical_crossentropy")
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        targets = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return tf.keras.losses.categorical_crossentropy(
            targets, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )


def metrics() -> list[tf.keras.metrics.Metric]:
    """Training metrics reported by clients (aggregated by TFF)."""
    return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def model_fn(
    build_keras: Callable[[], tf.keras.Model],
    element_spec,
    skip_random_init: bool = False,
    label_smoothing: float = 0.0,
) -> Callable[[], tff.learning.models.VariableModel]:
    """A TFF `model_fn` wrapping a fresh Keras model from `build_keras`.

    Args:
        build_keras: No-argument callable building an uncompiled Keras model
            with logits output. TFF calls it inside its own graphs, so it must
            create new variables every call.
        element_spec: The batched `(images, labels)` spec of the client data.
        skip_random_init: Create the variables that a random initializer
            would fill (kernels) as zeros; constant ones (norm scales and
            offsets, biases, statistics) keep their values. TFF builds the model
            anew inside every client's work of every round and then overwrites
            its weights with the broadcast ones, so the random draws (for
            ResNet-18, 11M per client and round) are wasted. Only for processes
            whose state gets its weights from `set_model_weights` before the
            first round, as in `training.FederatedTrainer` and the benchmark:
            `initialize()` alone then holds zero kernels.
        label_smoothing: Of the training loss (see `loss`).
    """

    def _model_fn() -> tff.learning.models.VariableModel:
        if skip_random_init:
            with tf.variable_creator_scope(_zeros_for_random_initializers):
                keras = build_keras()
        else:
            keras = build_keras()
        return tff.learning.models.from_keras_model(
            keras, loss=loss(label_smoothing), input_spec=element_spec, metrics=metrics()
        )

    return _model_fn


_CONSTANT_INITIALIZERS = (
    tf.keras.initializers.Zeros,
    tf.keras.initializers.Ones,
    tf.keras.initializers.Constant,
)


def _zeros_for_random_initializers(next_creator, **kwargs):
    """Variable creator: a Keras weight with a random initializer starts as zeros instead."""
    initial_value = kwargs.get("initial_value")
    # Keras passes `functools.partial(initializer, shape, dtype=dtype)`.
    if isinstance(initial_value, functools.partial) and not isinstance(
        initial_value.func, _CONSTANT_INITIALIZERS
    ):
        shape = initial_value.args[0]
        dtype = initial_value.keywords.get("dtype", tf.float32)
        kwargs["initial_value"] = functools.partial(tf.zeros, shape, dtype=dtype)
    return next_creator(**kwargs)


def initial_weights(keras_model: tf.keras.Model) -> tff.learning.models.ModelWeights:
    """The weights of `keras_model` as TFF `ModelWeights` (to seed a process state)."""
    return tff.learning.models.ModelWeights.from_model(keras_model)


def restore_eager_keras_classes() -> None:
    """Undoes the Keras class swap that TFF's graph-mode tracing leaves behind.

    Keras picks the base class of `Functional` (v2 `training.Model` or legacy
    `training_v1.Model`) each time a model is constructed, by rewriting
    `Functional.__bases__` in place. TFF builds the Keras model of `model_fn`
    inside a graph, which switches every functional model in the process,
    existing ones included, to the legacy class: afterwards an eager model's
    `get_weights()` fails. Constructing any model eagerly switches them back.
    Every process builder here calls this after tracing.
    """
    inputs = tf.keras.Input((1,))
    tf.keras.Model(inputs, inputs)
