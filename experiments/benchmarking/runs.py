"""The experiments the benchmark times, built from the package's own pieces.

A `Run` trains FedAvg (`algorithms.build_fedavg`) over `client_data.FederatedData`
through `training.RoundStep`, the very step `FederatedTrainer` runs, without
evaluation, checkpoints or metric files; `KerasEpochs` is the plain Keras
baseline over the same examples and input pipeline. Data is real MedMNIST or
seeded synthetic images.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import tensorflow as tf

from experiments.benchmarking.config import BenchmarkConfig
from tff_vision import client_data, models, partition, runtime, training
from tff_vision import data as data_lib
from tff_vision.algorithms import build_fedavg, build_optimizer, keras_model

NUM_CLASSES_SYNTHETIC = 5
INPUT_SHAPE_SYNTHETIC = (28, 28, 3)


@dataclasses.dataclass
class BuiltProcess:
    """A FedAvg learning process, its seeded initial weights and how long building took."""

    process: Any
    initial: Any
    build_seconds: float


def build_fedavg_process(
    model_name: str, input_shape, num_classes: int, element_spec, config: BenchmarkConfig
) -> BuiltProcess:
    """FedAvg with client SGD at `config.client_lr` over a seeded `models.build_model`."""

    def build_keras():
        return models.build_model(model_name, tuple(input_shape), num_classes, seed=config.seed)

    t0 = time.perf_counter()
    process = build_fedavg(
        keras_model.model_fn(build_keras, element_spec, skip_random_init=True),
        build_optimizer("sgd", config.client_lr),
    )
    build_seconds = time.perf_counter() - t0
    return BuiltProcess(process, keras_model.initial_weights(build_keras()), build_seconds)


class Run:
    """One FedAvg run over `FederatedData`, one `RoundStep` per `run_round()`.

    `state` and `round_num` are plain attributes, so a caller can set them to
    rerun one round from a saved state.
    """

    def __init__(self, built: BuiltProcess, fed, clients_per_round: int = 0):
        self.fed = fed
        self.step = training.RoundStep(built.process, fed, built.initial, clients_per_round)
        self.state = None
        self.round_num = 0

    def reset(self) -> None:
        self.state = self.step.initial_state()
        self.round_num = 0

    def run_round(self) -> None:
        if self.state is None:
            self.reset()
        self.round_num += 1
        self.state = self.step.next(self.state, self.round_num).state

    def weights(self, state=None) -> list[np.ndarray]:
        """Trainable then non-trainable global weights of `state` (default: the current one)."""
        weights = self.step.model_weights(self.state if state is None else state)
        return [np.asarray(w) for w in [*weights.trainable, *weights.non_trainable]]


def federated_data(images, labels, num_clients: int, config: BenchmarkConfig):
    """`FederatedData` over an iid split into `num_clients` clients."""
    part = partition.iid(labels, num_clients, seed=config.seed)
    prep = client_data.Preprocessing(batch_size=config.batch_size, seed=config.seed)
    return client_data.FederatedData(images, labels, part, prep)


def synthetic(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 images of `INPUT_SHAPE_SYNTHETIC` and labels of `NUM_CLASSES_SYNTHETIC`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, *INPUT_SHAPE_SYNTHETIC), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES_SYNTHETIC, num_examples).astype(np.int64)
    return images, labels


def real(config: BenchmarkConfig, limit: int | None):
    """The first `limit` (None: all) training images and labels of `config.dataset`."""
    ds = data_lib.load(config.dataset, 28, config.data_dir, allow_download=config.allow_download)
    images, labels = ds.train.images, ds.train.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, ds.num_classes


def single_worker(config: BenchmarkConfig) -> None:
    """Stops every worker of this process and starts one fresh local TFF context."""
    runtime.shutdown()
    runtime.start_local_context(
        max_concurrent_computation_calls=config.max_concurrent_computation_calls,
        env=config.worker_env(),
    )


class KerasEpochs:
    """Plain `fit` epochs of the same model over all examples, with the clients' pipeline."""

    def __init__(self, images, labels, model_name: str, num_classes: int, config: BenchmarkConfig):
        self._prep = client_data.Preprocessing(batch_size=config.batch_size, seed=config.seed)
        self._pooled = client_data.pooled_dataset(images, labels)
        self.model = models.build_model(model_name, images.shape[1:], num_classes, seed=config.seed)
        self.model.compile(
            optimizer=tf.keras.optimizers.SGD(config.client_lr),
            loss=keras_model.loss(),
            metrics=["accuracy"],
        )
        self.steps = -(-len(labels) // config.batch_size)
        self.epoch = 0

    def run_epoch(self) -> None:
        self.epoch += 1
        self.model.fit(self._prep.apply(self._pooled, self.epoch, "pooled"), epochs=1, verbose=0)
