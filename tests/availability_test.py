"""Unreliable clients: seeded dropout and partial work, recorded per round, resumed exactly.

The trainer cases run FedAvg on real RetinaMNIST split IID over 10 clients
(the tiny CNN) and check each round's row against what the reporting
clients' data holds: a dropped client trains nothing, a client on partial
work trains on a prefix of its batches.
"""

import pathlib
import shutil
import tempfile

import fl_testing
import pandas as pd
from absl.testing import absltest

from tff_vision import client_data, communication, partition
from tff_vision.availability import Availability, num_batches

_CLIENTS = 10
_ROUNDS = 3


def _ten_clients():
    images, labels = fl_testing.retina_arrays()
    part = partition.make_partition("iid", labels, _CLIENTS, 5, seed=0)
    return client_data.FederatedData(
        images,
        labels,
        part,
        client_data.Preprocessing(batch_size=4, local_epochs=1, augment="none", seed=0),
    )


class AvailabilityTest(absltest.TestCase):
    def test_draws_are_seeded_and_have_the_asked_rates(self):
        clients = [str(i) for i in range(1000)]
        half = Availability(dropout=0.5, seed=1)
        reporting = half.reporting(3, clients)
        self.assertEqual(reporting, Availability(dropout=0.5, seed=1).reporting(3, clients))
        self.assertNotEqual(reporting, half.reporting(4, clients))
        self.assertBetween(len(reporting), 450, 550)
        self.assertEqual(Availability().reporting(3, clients), clients)
        partial = Availability(partial_work=0.3, seed=1)
        done = [partial.batches(2, c, 10) for c in clients]
        self.assertTrue(all(1 <= d <= 10 for d in done))
        self.assertBetween(sum(d < 10 for d in done), 220, 310)  # ~0.3 x 0.9 of 1000.
        self.assertEqual({Availability().batches(2, c, 10) for c in clients}, {10})

    def test_out_of_range_refused(self):
        with self.assertRaisesRegex(ValueError, r"dropout must be in \[0, 1\)"):
            Availability(dropout=1.0)
        with self.assertRaisesRegex(ValueError, r"partial work must be in \[0, 1\]"):
            Availability(partial_work=-0.1)


class UnreliableTrainingTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fed = _ten_clients()
        cls.process = fl_testing.tiny_fedavg(cls.fed)
        cls.held_out = fl_testing.retina_held_out()
        cls.per_client = communication.client_bytes(cls.process)
        cls.root = pathlib.Path(tempfile.mkdtemp())
        cls.addClassCleanup(shutil.rmtree, cls.root)

    def _train(self, out, availability, rounds=_ROUNDS):
        return fl_testing.train_tiny(
            self.process,
            self.fed,
            self.held_out,
            self.root / out,
            rounds,
            availability=availability,
            client_bytes=self.per_client,
        )

    def test_dropout_records_who_reported_and_resumes_exactly(self):
        availability = Availability(dropout=0.5, seed=7)
        full = self._train("full", availability)
        rows = pd.read_csv(self.root / "full" / "metrics.csv", keep_default_na=False)
        sizes = self.fed.partition.sizes
        # The tiny CNN's parameters, float32, go down and come back from each reporting client.
        self.assertEqual(self.per_client.down, fl_testing.tiny_model().count_params() * 4)
        self.assertEqual(self.per_client.up, self.per_client.down)
        for _, row in rows.iterrows():
            reported = str(row["reporting_clients"]).split()
            self.assertEqual(reported, availability.reporting(row["round"], self.fed.client_ids))
            self.assertEqual(row["clients_sampled"], _CLIENTS)
            self.assertEqual(row["clients_reporting"], len(reported))
            self.assertLess(len(reported), _CLIENTS)
            # Only the reporting clients trained: one epoch over each one's examples.
            self.assertEqual(row["train_examples"], sum(sizes[int(c)] for c in reported))
            self.assertEqual(row["bytes_down"], self.per_client.down * len(reported))
        reports = rows["clients_reporting"].cumsum()
        self.assertEqual(
            rows["bytes_up_cumulative"].tolist(), (reports * self.per_client.up).tolist()
        )
        self.assertEqual(full.communication["client_rounds"], reports.iloc[-1])
        # Killed after round 2 (its checkpoint written), then rerun: the same end.
        self._train("stopped", availability, rounds=2)
        resumed = self._train("stopped", availability)
        self.assertEqual(resumed.resumed_from, 2)
        fl_testing.assert_states_equal(resumed.state, full.state)
        self.assertEqual(resumed.communication, full.communication)
        pd.testing.assert_frame_equal(
            pd.read_csv(self.root / "stopped" / "metrics.csv").drop(columns=_TIMING),
            pd.read_csv(self.root / "full" / "metrics.csv").drop(columns=_TIMING),
        )

    def test_partial_work_trains_on_a_prefix_of_the_batches(self):
        availability = Availability(partial_work=0.6, seed=3)
        self._train("partial", availability, rounds=1)
        row = pd.read_csv(self.root / "partial" / "metrics.csv").iloc[0]
        expected_done = expected_examples = 0
        for client in self.fed.client_ids:
            dataset = self.fed.round_dataset(client, 1)
            done = availability.batches(1, client, num_batches(dataset))
            expected_done += done
            expected_examples += sum(int(y.shape[0]) for _, y in dataset.take(done))
        self.assertEqual(row["batches_done"], expected_done)
        self.assertLess(row["batches_done"], row["batches_full"])
        self.assertEqual(row["train_examples"], expected_examples)
        self.assertLess(expected_examples, sum(self.fed.partition.sizes))


_TIMING = ["round_seconds", "seconds"]

if __name__ == "__main__":
    absltest.main()
