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


class RoundDataTest(parameterized.TestCase):
    def test_client_steps(self):
        self.assertIsNone(client_data.client_steps(0, "none", [10, 20, 30]))
        self.assertEqual(
            client_data.client_steps(4, "none", [10, 20, 30]), {"0": 4, "1": 4, "2": 4}
        )
        # Proportional: a client of mean size (20) takes 4; never fewer than 1.
        self.assertEqual(
            client_data.client_steps(4, "proportional", [1, 20, 39]), {"0": 1, "1": 4, "2": 8}
        )
        with self.assertRaisesRegex(ValueError, "--step_heterogeneity"):
            client_data.client_steps(4, "sometimes", [10, 20])

    def test_round_datasets_take_exactly_the_steps_in_full_batches(self):
        fed = _federated(batch_size=8)
        data = client_data.RoundData(fed, {"0": 5, "1": 1, "2": 2}, batch_size=8)
        for cid, steps in data.steps.items():
            batches = _batches(data.round_dataset(cid, 1))
            self.assertLen(batches, steps)
            self.assertTrue(all(len(y) == 8 for _, y in batches))
        self.assertEqual(data.client_ids, fed.client_ids)  # The rest is the wrapped data's.

    def test_indexed_round_datasets_and_current_round(self):
        data = client_data.RoundData(_federated(), None, batch_size=8, indexed=True)
        self.assertEqual(data.sample_clients(3, 2), _federated().sample_clients(3, 2))
        self.assertEqual(data.current_round, 3)
        index, dataset = data.round_dataset("2", 3)
        self.assertEqual(index, 2)
        plain = _batches(data.plain().round_dataset("2", 3))
        np.testing.assert_array_equal(
            np.concatenate([y for _, y in _batches(dataset)]),
            np.concatenate([y for _, y in plain]),
        )


if __name__ == "__main__":
    absltest.main()
