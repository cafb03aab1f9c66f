"""Client datasets: a partition as a TFF `ClientData` plus tf.data preprocessing.

Images stay uint8 in memory (4x smaller than float32); each client's examples
are turned into a `tf.data.Dataset` once. What changes from round to round is
only the cheap wrapper built by `Preprocessing.apply` (from one traced
`tf.function`, so no new functions are traced per round): a shuffle seeded by
`(seed, round, client)`, `repeat(local_epochs)`, optional seeded stateless
augmentation, batching, then a vectorized cast/scale of each whole batch.
Because every random choice is derived from `(seed, round, client)`, a run
resumed at round r sees exactly the data an uninterrupted run would have.

`RoundData` cuts each round's datasets to a fixed number of steps per client
(--local_steps, `client_steps`) and hands out `(client index, dataset)` pairs
to processes that keep per-client state.

Element structure fed to models: `(images float32 [B, H, W, C] in [0, 1],
labels int64 [B])`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import augmentation
from tff_vision import partition as partition_lib
from tff_vision.config import ConfigError


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed derived from `parts` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def scale_images(images: tf.Tensor) -> tf.Tensor:
    """uint8 `[..., H, W, C]` -> float32 in [0, 1]. Used for training and evaluation."""
    return tf.cast(images, tf.float32) / 255.0


def element_spec(input_shape: Sequence[int]) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """The batched element spec of every dataset this module produces."""
    return (
        tf.TensorSpec([None, *input_shape], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one client's examples become a round's training batches.

    Attributes:
        batch_size: Examples per batch; the last batch of a round may be smaller.
        local_epochs: Passes over the client's data per round.
        augment: One of `augmentation.AUGMENTATIONS` (seeded, stateless).
        seed: Experiment seed; the round and client are mixed into it.
        shuffle: Shuffle the examples (anew each epoch).
    """

    batch_size: int = 32
    local_epochs: int = 1
    augment: str = "none"
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        augmentation.augmentation(self.augment)  # ValueError for an unknown name.

    def apply(self, dataset: tf.data.Dataset, round_num: int, client_id: str) -> tf.data.Dataset:
        """Shuffle, repeat, augment, batch and scale `dataset` of uint8 `(image, label)`."""
        round_seed = derive_seed(self.seed, round_num, client_id)
        return self._pipeline(dataset, tf.constant(round_seed, tf.int64))

    @functools.cached_property
    def _pipeline(self):
        # Traced once and reused every round: building the pipeline eagerly would trace new
        # `map` functions each round, which TF keeps for the life of the process (a leak of
        # ~80 KiB a round). The round's seed enters as a tensor.
        return tf.function(self._build)

    def _build(self, dataset: tf.data.Dataset, round_seed: tf.Tensor) -> tf.data.Dataset:
        if self.shuffle:
            size = tf.maximum(dataset.cardinality(), 1)
            dataset = dataset.shuffle(size, seed=round_seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat(self.local_epochs)
        augment = augmentation.augmentation(self.augment)
        if augment is not None:
            indices = tf.data.Dataset.counter()
            dataset = tf.data.Dataset.zip((dataset, indices)).map(
                lambda example, i: augment(example, round_seed, i),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        dataset = dataset.batch(self.batch_size)
        dataset = dataset.map(
            lambda x, y: (scale_images(x), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).prefetch(tf.data.AUTOTUNE)
        return dataset.with_options(pipeline_options())


def pipeline_options() -> tf.data.Options:
    """tf.data options of every training pipeline: autotuning off.

    With autotuning on, each iterator runs a background model thread, and in
    TF 2.14 destroying the iterator can block until that thread wakes, for
    ~10 s: at the end of a client's round inside the TFF worker or of a
    Keras epoch. Measured on 2 cores, Keras epochs of ResNet-18 over 1080
    images through this pipeline took 9-10.3 s, or 20.5 s (2 of 8), the stall
    in `RootDataset::Iterator::~Iterator`; without autotuning all 8 took
    8-12.5 s. These pipelines (a shuffle and one vectorized cast per batch)
    need no tuning: `AUTOTUNE` parallelism and prefetching then fall back to
    TF's static defaults.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def client_ids(num_clients: int) -> list[str]:
    """Client ids "0", "1", ... used in ClientData, metrics and summaries."""
    return [str(i) for i in range(num_clients)]


class FederatedData:
    """A partitioned training split as TFF `ClientData` plus per-round datasets.

    Attributes:
        client_data: `tff.simulation.datasets.ClientData` of uint8 examples
            `(image [H, W, C], label int64 [])`, one client per partition entry.
        preprocessing: The `Preprocessing` applied to each round's datasets.
        input_shape: `(H, W, C)` of the images.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        partition: partition_lib.Partition,
        preprocessing: Preprocessing,
    ):
        images = np.asarray(images)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
            )
        self.input_shape = tuple(images.shape[1:])
        self.preprocessing = preprocessing
        self.partition = partition
        self._ids = client_ids(partition.num_clients)
        slices = {
            cid: (images[idx], labels[idx]) for cid, idx in zip(self._ids, partition.client_indices)
        }
        self.client_data = tff.simulation.datasets.TestClientData(slices)
        # Base datasets are built once and reused by every round.
        self._base = {cid: self.client_data.create_tf_dataset_for_client(cid) for cid in self._ids}

    @property
    def client_ids(self) -> list[str]:
        return list(self._ids)

    def num_examples(self, client_id: str) -> int:
        return int(self._base[client_id].cardinality())

    @property
    def element_spec(self):
        return element_spec(self.input_shape)

    def round_dataset(self, client_id: str, round_num: int) -> tf.data.Dataset:
        """The batches client `client_id` trains on in round `round_num` (1-based)."""
        return self.preprocessing.apply(self._base[client_id], round_num, client_id)

    def clients_of_round(self, round_num: int, clients_per_round: int) -> list[str]:
        """`sample_clients`; here it has no side effect either (see `RoundData`)."""
        return self.sample_clients(round_num, clients_per_round)

    def sample_clients(self, round_num: int, clients_per_round: int) -> list[str]:
        """Clients taking part in `round_num`: all, or a seeded sample without replacement."""
        if clients_per_round >= len(self._ids):
            return list(self._ids)
        rng = np.random.default_rng(derive_seed(self.preprocessing.seed, "sample", round_num))
        chosen = rng.choice(len(self._ids), size=clients_per_round, replace=False)
        return [self._ids[i] for i in sorted(chosen)]


def pooled_dataset(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """A uint8 `(image, label)` dataset of all `images`, for centralized training."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return tf.data.Dataset.from_tensor_slices((np.asarray(images), labels))


def client_steps(
    local_steps: int, heterogeneity: str, client_sizes: Sequence[int]
) -> dict[str, int] | None:
    """Batches each client trains on per round, or None to use --local_epochs.

    Args:
        local_steps: Steps per client ("none"), or the steps of a client with
            the mean number of examples ("proportional": client k takes
            max(1, round(local_steps * n_k / mean(n))), so the federation's
            total stays about num_clients * local_steps).
        heterogeneity: One of `config.STEP_HETEROGENEITY`.
        client_sizes: Examples per client, in client-id order.
    """
    if not local_steps:
        return None
    sizes = np.asarray(client_sizes, dtype=np.float64)
    if heterogeneity == "none":
        steps = np.full(len(sizes), local_steps)
    elif heterogeneity == "proportional":
        steps = np.maximum(1, np.round(local_steps * sizes / sizes.mean())).astype(int)
    else:
        raise ConfigError(f"unknown --step_heterogeneity {heterogeneity!r}")
    return {str(i): int(n) for i, n in enumerate(steps)}


def limit_steps(dataset: tf.data.Dataset, steps: int, batch_size: int) -> tf.data.Dataset:
    """`dataset` (batched) repeated and re-batched to exactly `steps` full batches; 0: as is."""
    if not steps:
        return dataset
    return dataset.repeat().rebatch(batch_size).take(steps)


class RoundData:
    """A `FederatedData` whose round datasets take exactly `steps[client]` batches.

    With `steps` None the datasets pass through unchanged. With `indexed`,
    `round_dataset` returns `(client_index, dataset)` pairs, the client data
    that processes with per-client state (SCAFFOLD, FedBN) take. It also
    remembers the round the trainer is in (`FederatedTrainer` calls
    `sample_clients(round, ...)` first in each round), which the per-round
    epsilon needs.
    """

    def __init__(
        self,
        data: FederatedData,
        steps: dict[str, int] | None,
        batch_size: int,
        indexed: bool = False,
    ):
        self._data = data
        self.steps = steps
        self.batch_size = batch_size
        self.indexed = indexed
        self.current_round: int | None = None

    def plain(self) -> RoundData:
        """The same data without client indices (for Keras baselines)."""
        return RoundData(self._data, self.steps, self.batch_size)

    def __getattr__(self, name):
        if name.startswith("__") or name == "_data":
            raise AttributeError(name)
        return getattr(self._data, name)

    def sample_clients(self, round_num: int, clients_per_round: int) -> list[str]:
        self.current_round = round_num
        return self._data.sample_clients(round_num, clients_per_round)

    def clients_of_round(self, round_num: int, clients_per_round: int) -> list[str]:
        """The clients `sample_clients` gives, without remembering the round (past rounds)."""
        return self._data.sample_clients(round_num, clients_per_round)

    def round_dataset(self, client_id: str, round_num: int):
        dataset = self._data.round_dataset(client_id, round_num)
        if self.steps:
            dataset = limit_steps(dataset, self.steps[client_id], self.batch_size)
        if self.indexed:
            return int(client_id), dataset
        return dataset
