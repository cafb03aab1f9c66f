"""Keras classifiers as TFF models, with the loss and metrics used everywhere."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
import tensorflow_federated as tff


def loss() -> tf.keras.losses.Loss:
    """Sparse categorical cross-entropy on logits (all models output logits)."""
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[tf.keras.metrics.Metric]:
    """Training metrics reported by clients (aggregated by TFF)."""
    return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def model_fn(
    build_keras: Callable[[], tf.keras.Model], element_spec
) -> Callable[[], tff.learning.models.VariableModel]:
    """A TFF `model_fn` wrapping a fresh Keras model from `build_keras`.

    Args:
        build_keras: No-argument callable building an uncompiled Keras model
            with logits output. TFF calls it inside its own graphs, so it must
            create new variables every call.
        element_spec: The batched `(images, labels)` spec of the client data.
    """

    def _model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_keras(), loss=loss(), input_spec=element_spec, metrics=metrics()
        )

    return _model_fn


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
