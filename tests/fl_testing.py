"""Shared pieces of the exact-update tests: a tiny model and an independent local trainer.

Each algorithm test runs rounds through TFF and recomputes them here with plain
Keras (`tf.GradientTape`) and numpy, on a small real RetinaMNIST subset.
"""

import pathlib

import numpy as np
import tensorflow as tf

SHARED_MEDMNIST = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "medmnist"
NUM_EXAMPLES = 96
# The #2 reference setting for short runner-level experiments (tests add rounds etc.):
# real RetinaMNIST, three hospitals lacking classes 1, 2 and 3, the small CNN.
RETINA_LABEL_EXCLUSION = dict(
    dataset="retinamnist",
    data_dir=str(SHARED_MEDMNIST),
    model="cnn",
    partition="label_exclusion",
    num_clients=3,
    exclude="1;2;3",
    batch_size=32,
)


def tiny_model(seed=0):
    """Conv (4 filters) -> global pool -> dense: small but with real image structure."""
    inputs = tf.keras.Input((28, 28, 3), name="image")
    x = tf.keras.layers.Conv2D(
        4, 3, strides=2, kernel_initializer=tf.keras.initializers.GlorotUniform(seed)
    )(inputs)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(
        5, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 1)
    )(x)
    return tf.keras.Model(inputs, outputs)


def local_sgd(weights, dataset, lr, momentum=0.0, mu=0.0):
    """Plain-Keras local training of `tiny_model` from `weights` over `dataset`.

    Minimizes F_k(w) + mu/2 ||w - w_start||^2 (FedProx; plain SGD when mu = 0) with
    TFF's heavy-ball SGD: v = momentum * v + g; w -= lr * v.

    Returns:
        (new weights, number of examples seen).
    """
    model = tiny_model()
    model.set_weights(weights)
    anchor = [tf.constant(w) for w in weights]
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    velocity = [np.zeros_like(w) for w in weights]
    seen = 0
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            if mu:
                proximal = tf.add_n(
                    [
                        tf.reduce_sum(tf.square(v - a))
                        for v, a in zip(model.trainable_variables, anchor)
                    ]
                )
                loss = loss + 0.5 * mu * proximal
        grads = tape.gradient(loss, model.trainable_variables)
        for i, (var, grad) in enumerate(zip(model.trainable_variables, grads)):
            velocity[i] = momentum * velocity[i] + grad.numpy()
            var.assign(var.numpy() - lr * velocity[i])
        seen += int(x.shape[0])
    return model.get_weights(), seen
