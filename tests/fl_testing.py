"""Shared pieces of the exact-update tests: tiny models, their data, an independent trainer.

Each algorithm test runs rounds through TFF and recomputes them with plain
Keras (`tf.GradientTape`) and numpy: on a small real RetinaMNIST subset
(`tiny_model`, `retina_federated`), or, for the client-stateful algorithms, on
small synthetic clients of different sizes (`small_model`, `small_datasets`).
"""

import asyncio
import inspect
import pathlib
import tempfile
import types

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tff_vision import (
    algorithms,
    checkpoints,
    client_data,
    data,
    partition,
    runtime,
    selection,
    training,
)
from tff_vision.algorithms import (
    _client_loops,
    build_optimizer,
    keras_model,
    learning_rate_schedule,
)

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

# The synthetic setting: 8x8 grey images, 3 classes, clients of 5, 9 and 14 examples.
SMALL_SHAPE = (8, 8, 1)
SMALL_CLASSES = 3
SMALL_SIZES = (5, 9, 14)
SMALL_BATCH = 4


class LocalContextTestCase(parameterized.TestCase):
    """Runs its tests in a local TFF context, started once for the class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        runtime.start_local_context()

    @classmethod
    def tearDownClass(cls):
        runtime.shutdown()
        super().tearDownClass()


class RetinaTestCase(LocalContextTestCase):
    """`LocalContextTestCase` with `cls.fed = retina_federated(cls.PREPROCESSING_SEED)`."""

    PREPROCESSING_SEED = 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fed = retina_federated(cls.PREPROCESSING_SEED)


def tiny_model(seed=0, batch_norm=False):
    """Conv (4 filters) -> [BatchNorm] -> global pool -> dense: small, real image structure."""
    inputs = tf.keras.Input((28, 28, 3), name="image")
    x = tf.keras.layers.Conv2D(
        4, 3, strides=2, kernel_initializer=tf.keras.initializers.GlorotUniform(seed)
    )(inputs)
    if batch_norm:
        x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(
        5, kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 1)
    )(x)
    return tf.keras.Model(inputs, outputs)


def retina_dataset():
    """The shared RetinaMNIST 28 (`data.ImageDataset`); never downloaded."""
    return data.load("retinamnist", 28, data_dir=SHARED_MEDMNIST, allow_download=False)


def retina_arrays(num_examples=NUM_EXAMPLES):
    """`(images, labels)`: the first `num_examples` of the shared RetinaMNIST training split."""
    ds = retina_dataset()
    return ds.train.images[:num_examples], ds.train.labels[:num_examples]


def retina_held_out():
    """The shared RetinaMNIST's test and val splits as a `selection.HeldOut` (5 classes)."""
    dataset = retina_dataset()
    return selection.HeldOut(dataset.test, dataset.val, dataset.num_classes)


def tiny_fedavg(fed):
    """FedAvg of `tiny_model` over `fed`'s data, local SGD at 0.1."""
    return algorithms.build_process(
        "fedavg",
        keras_model.model_fn(tiny_model, fed.element_spec),
        client_optimizer=algorithms.build_optimizer("sgd", 0.1),
    )


class CountingWeights:
    """`process` with its `get_model_weights` calls counted in `calls` (each is a TFF call).

    The process's own methods run on this wrapper, so that their calls count too.
    """

    def __init__(self, process):
        self.process, self.calls = process, 0

    def __getattr__(self, name):
        method = getattr(type(self.process), name, None)
        if inspect.isfunction(method):
            return types.MethodType(method, self)
        return getattr(self.process, name)

    def get_model_weights(self, state):
        self.calls += 1
        return self.process.get_model_weights(state)


def train_tiny(process, fed, held_out, output_dir, rounds, **trainer_args):
    """A silent `training.FederatedTrainer` run of `process` from `tiny_model(seed=5)`."""
    model = tiny_model(seed=5)
    return training.FederatedTrainer(
        process,
        fed,
        rounds=rounds,
        eval_model=model,
        evaluate=held_out.evaluate_test,
        output_dir=output_dir,
        initial_weights=keras_model.initial_weights(model),
        printer=lambda _: None,
        **trainer_args,
    ).run()


def retina_federated(seed, num_clients=3, exclude="1;2;3", arrays=None, **preprocessing):
    """`retina_arrays` split by label exclusion (uneven sizes) into `FederatedData`.

    `preprocessing` are `client_data.Preprocessing` fields besides `seed`
    (default: batches of 8, one epoch, no augmentation); the partition is
    `.partition` of the result.
    """
    images, labels = retina_arrays() if arrays is None else arrays
    part = partition.make_partition(
        "label_exclusion", labels, num_clients, 5, seed=0, exclude=exclude
    )
    preprocessing = dict(dict(batch_size=8, local_epochs=1, augment="none"), **preprocessing)
    return client_data.FederatedData(
        images, labels, part, client_data.Preprocessing(seed=seed, **preprocessing)
    )


def round_datasets(fed, round_num):
    """Every client's dataset of round `round_num` of `FederatedData` `fed`."""
    return [fed.round_dataset(c, round_num) for c in fed.client_ids]


def client_sgd(schedule_name, client_lr, momentum, rounds=2):
    """Client SGD at a constant rate, or on a cosine schedule over 4 rounds.

    Returns:
        `(client_learning_rate_fn or None, client_optimizer, rates)`, as
        `build_process` takes the first two; `rates` are the learning rates
        of rounds 1..`rounds`, worked out independently: round r (1-based)
        trains at lr * (1 + cos(pi (r - 1) / 4)) / 2 with the schedule.
    """
    schedule = learning_rate_schedule(schedule_name, client_lr, rounds=4)
    if schedule is None:
        return None, build_optimizer("sgd", client_lr, momentum), [client_lr] * rounds

    def client_optimizer(lr):
        return build_optimizer("sgd", lr, momentum)

    rates = [client_lr * 0.5 * (1 + np.cos(np.pi * r / 4)) for r in range(rounds)]
    return schedule, client_optimizer, rates


def small_model(seed=0, norm=False):
    """`tiny_model` for `SMALL_SHAPE` images, optionally with a BatchNormalization ("norm")."""
    inputs = tf.keras.Input(SMALL_SHAPE)
    x = tf.keras.layers.Conv2D(
        4, 3, kernel_initializer=tf.keras.initializers.GlorotUniform(seed), name="conv"
    )(inputs)
    if norm:
        x = tf.keras.layers.BatchNormalization(name="norm")(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(
        SMALL_CLASSES,
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed + 1),
        name="dense",
    )(x)
    return tf.keras.Model(inputs, outputs)


def small_element_spec():
    return (
        tf.TensorSpec([None, *SMALL_SHAPE], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )


def small_model_fn(norm=False):
    """The TFF `model_fn` of `small_model`."""
    return keras_model.model_fn(lambda: small_model(norm=norm), small_element_spec())


def small_client_arrays(seed=0, spread=1.0):
    """Per client `k` of `SMALL_SIZES`: images ~ N(spread * k, (1 + k)^2), random labels."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.normal(spread * k, 1.0 + k, (n, *SMALL_SHAPE)).astype(np.float32),
            rng.integers(0, SMALL_CLASSES, n).astype(np.int64),
        )
        for k, n in enumerate(SMALL_SIZES)
    ]


def small_dataset(arrays, epochs=1):
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if epochs > 1:
        ds = ds.repeat(epochs)
    return ds.batch(SMALL_BATCH)


def small_datasets(seed=0, spread=1.0, epochs=1):
    """The clients of `small_client_arrays` as batched datasets, `epochs` passes each."""
    return [small_dataset(a, epochs) for a in small_client_arrays(seed, spread)]


def train_keras(model, dataset, lr, momentum=0.0, mu=0.0, correction=None, label_smoothing=0.0):
    """Trains the Keras `model` in place, one step per batch of `dataset`.

    Minimizes F_k(w) + mu/2 ||w - w_start||^2 (FedProx; plain loss when
    mu = 0) with TFF's heavy-ball SGD: v = momentum * v + g; w -= lr * v,
    where `correction` (one array per trainable variable, SCAFFOLD's c - c_i)
    is added to every gradient g.

    Returns:
        (number of steps, number of examples seen).
    """
    variables = model.trainable_variables
    anchor = [tf.constant(v.numpy()) for v in variables]
    loss_fn = keras_model.loss(label_smoothing)  # Plain sparse cross-entropy at 0.
    velocity = [np.zeros(v.shape, v.dtype.as_numpy_dtype) for v in variables]
    steps = seen = 0
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))  # Also moves BatchNorm statistics.
            if mu:
                proximal = tf.add_n(
                    [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchor)]
                )
                loss = loss + 0.5 * mu * proximal
        grads = [g.numpy() for g in tape.gradient(loss, variables)]
        if correction is not None:
            grads = [g + c for g, c in zip(grads, correction)]
        for i, (var, grad) in enumerate(zip(variables, grads)):
            velocity[i] = momentum * velocity[i] + grad
            var.assign(var.numpy() - lr * velocity[i])
        steps += 1
        seen += int(x.shape[0])
    return steps, seen


def local_sgd(weights, dataset, lr, momentum=0.0, mu=0.0, build=tiny_model, label_smoothing=0.0):
    """`train_keras` on a fresh `build()` model from `weights`.

    Returns:
        (new weights, number of examples seen).
    """
    model = build()
    model.set_weights(weights)
    _, seen = train_keras(model, dataset, lr, momentum, mu, label_smoothing=label_smoothing)
    return model.get_weights(), seen


def local_round(weights, fed, round_num, lr, momentum=0.0, mu=0.0, label_smoothing=0.0):
    """`local_sgd` of every client of `FederatedData` `fed` in round `round_num`.

    Returns:
        (new weights of every client, float64 array of their example counts).
    """
    local = [
        local_sgd(
            weights,
            fed.round_dataset(c, round_num),
            lr,
            momentum,
            mu,
            label_smoothing=label_smoothing,
        )
        for c in fed.client_ids
    ]
    return [w for w, _ in local], np.array([n for _, n in local], dtype=np.float64)


def retina_rounds(process, fed, rates, seed=7):
    """Runs `process` on `fed` from `tiny_model(seed)`'s weights, one round per rate.

    Yields per round `(round_num, rate, start, output, end)`: the numpy
    weights the round started from and ended at, so that a reference
    recomputes every round from where TFF's previous one ended.
    """
    init = tiny_model(seed=seed)
    state = initial_state(process, init)
    weights = init.get_weights()
    for round_num, rate in enumerate(rates, start=1):
        output = process.next(state, round_datasets(fed, round_num))
        state = output.state
        end = [np.asarray(w) for w in process.get_model_weights(state).trainable]
        yield round_num, rate, weights, output, end
        weights = end


def weighted_mean(values, weights):
    """`sum_k weights[k] * values[k] / sum_k weights[k]`."""
    return sum(w * v for w, v in zip(weights, values)) / np.sum(weights)


def assert_all_close(actual, expected, what="", rtol=1e-5, atol=2e-6):
    """Two equally long lists of arrays agree elementwise within the tolerances."""
    assert len(actual) == len(expected), (what, len(actual), len(expected))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol, err_msg=what)


def initial_state(process, model):
    """`process.initialize()` with the weights of the Keras `model`."""
    return process.set_model_weights(process.initialize(), keras_model.initial_weights(model))


def checkpoint_roundtrip(process, state):
    """`state` saved as the trainer saves it (`checkpoints.NpzStateManager`), loaded back."""
    with tempfile.TemporaryDirectory() as root:
        manager = checkpoints.NpzStateManager(root)
        asyncio.run(manager.save(state, 1))
        return asyncio.run(manager.load(1, process.initialize()))


def assert_states_equal(a, b):
    """Every tensor of two process states (or structures) is bitwise equal."""
    flat_a, flat_b = _client_loops.flatten_state(a), _client_loops.flatten_state(b)
    assert len(flat_a) == len(flat_b), (len(flat_a), len(flat_b))
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y)
