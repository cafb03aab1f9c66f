"""Tests for tff_vision.client_data: per-round client pipelines."""

import numpy as np
from absl.testing import absltest, parameterized

from tff_vision import client_data, partition

_NUM_EXAMPLES = 40


def _federated(local_epochs=1, batch_size=8, num_clients=3):
    """Examples whose label is their index and whose pixels all equal it."""
    labels = np.arange(_NUM_EXAMPLES, dtype=np.int64)
    images = np.broadcast_to(
        labels.astype(np.uint8)[:, None, None, None], (_NUM_EXAMPLES, 4, 4, 1)
    ).copy()
    part = partition.make_partition(
        "iid", labels % 2, num_clients=num_clients, num_classes=2, seed=0
    )
    prep = client_data.Preprocessing(batch_size=batch_size, local_epochs=local_epochs, seed=7)
    return client_data.FederatedData(images, labels, part, prep)


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


class RoundDatasetTest(parameterized.TestCase):
    def test_autotuning_is_off(self):
        # With it on, destroying each round's iterator can stall ~10 s (TF 2.14).
        dataset = _federated().round_dataset("0", 1)
        self.assertIs(dataset.options().autotune.enabled, False)

    @parameterized.parameters(1, 3)
    def test_each_example_once_per_local_epoch_scaled(self, local_epochs):
        fed = _federated(local_epochs=local_epochs)
        for cid, indices in zip(fed.client_ids, fed.partition.client_indices):
            batches = _batches(fed.round_dataset(cid, 2))
            labels = np.concatenate([y for _, y in batches])
            images = np.concatenate([x for x, _ in batches])
            np.testing.assert_array_equal(
                np.sort(labels), np.sort(np.tile(np.asarray(indices), local_epochs))
            )
            self.assertEqual(images.dtype, np.float32)
            # Each image is its label's value scaled to [0, 1].
            np.testing.assert_allclose(images[:, 0, 0, 0], labels / 255.0, rtol=1e-6)
            self.assertTrue(all(len(y) <= 8 for _, y in batches))

    def test_order_is_seeded_by_round_and_client(self):
        fed = _federated()
        first = np.concatenate([y for _, y in _batches(fed.round_dataset("0", 1))])
        again = np.concatenate([y for _, y in _batches(fed.round_dataset("0", 1))])
        other_round = np.concatenate([y for _, y in _batches(fed.round_dataset("0", 2))])
        np.testing.assert_array_equal(first, again)
        self.assertFalse(np.array_equal(first, other_round))

    def test_element_spec(self):
        fed = _federated()
        spec = fed.round_dataset("1", 1).element_spec
        self.assertEqual(spec, fed.element_spec)
        self.assertEqual(spec[0].shape.as_list(), [None, 4, 4, 1])

    def test_sample_clients_is_seeded_subset(self):
        fed = _federated(num_clients=3)
        sample = fed.sample_clients(5, 2)
        self.assertLen(sample, 2)
        self.assertEqual(sample, fed.sample_clients(5, 2))
        self.assertTrue(set(sample) <= set(fed.client_ids))
        self.assertEqual(fed.sample_clients(5, 3), fed.client_ids)


if __name__ == "__main__":
    absltest.main()
