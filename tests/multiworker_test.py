"""Multi-worker TFF execution: same FedAvg result as one worker, and no worker left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
from absl.testing import absltest
from fl_testing import NUM_EXAMPLES, retina_federated, tiny_model

from tff_vision import runtime, training
from tff_vision.algorithms import build_fedavg, build_optimizer, keras_model

_ROUNDS = 2

_KILL_SCRIPT = textwrap.dedent(
    """
    import time
    import numpy as np
    import tensorflow_federated as tff
    from tff_vision import runtime
    runtime.start_local_multi_worker_context(2)

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def total(x):
        return tff.federated_sum(x)

    print('sum', total([1.0, 2.0, 6.0, 3.0]), flush=True)
    print('ready', flush=True)
    time.sleep(600)
    """
)


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


class MultiWorkerTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Uneven clients: the merged weighted mean must weight by example counts.
        fed = retina_federated(3, num_clients=4, exclude="1;2;3;0,4")
        process = build_fedavg(
            keras_model.model_fn(tiny_model, fed.element_spec), build_optimizer("sgd", 0.1, 0.5)
        )
        # Every client takes part in every round: the step the trainer runs.
        cls.step = training.RoundStep(process, fed, keras_model.initial_weights(tiny_model(7)))

    def tearDown(self):
        runtime.shutdown()
        super().tearDown()

    def _train(self):
        state = self.step.initial_state()
        for round_num in range(1, _ROUNDS + 1):
            output = self.step.next(state, round_num)
            state = output.state
        weights = self.step.model_weights(state)
        return [np.asarray(w) for w in weights.trainable], output.metrics

    def test_two_workers_match_one_worker_and_stop(self):
        runtime.start_local_context()
        expected, expected_metrics = self._train()
        runtime.shutdown()

        workers = runtime.start_local_workers(2)
        self.assertLen(workers, 2)
        for worker in workers:
            self.assertTrue(worker.target.startswith("unix:"), worker.target)
        self.assertCountEqual(runtime.find_workers(os.getpid()), [w.process.pid for w in workers])
        runtime.start_multi_worker_context([w.target for w in workers])
        got, metrics = self._train()

        self.assertLen(got, len(expected))
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        train, expected_train = (
            metrics["client_work"]["train"],
            expected_metrics["client_work"]["train"],
        )
        self.assertEqual(int(train["num_examples"]), NUM_EXAMPLES)
        self.assertEqual(int(train["num_examples"]), int(expected_train["num_examples"]))
        np.testing.assert_allclose(train["loss"], expected_train["loss"], rtol=1e-5)
        # The round really moved the weights (the comparison is not trivial).
        self.assertGreater(np.abs(got[0] - self.step.initial_weights.trainable[0]).max(), 1e-4)

        runtime.shutdown()
        self.assertEqual(runtime.find_workers(os.getpid()), [])
        self.assertFalse(any(w.alive() for w in workers))

    def test_more_workers_than_clients(self):
        workers = runtime.start_local_multi_worker_context(3)
        self.assertLen(runtime.find_workers(os.getpid()), 3)
        fed = self.step.data
        datasets = [fed.round_dataset(c, 1) for c in fed.client_ids[:2]]
        output = self.step.process.next(self.step.initial_state(), datasets)
        examples = sum(fed.num_examples(c) for c in fed.client_ids[:2])
        self.assertEqual(int(output.metrics["client_work"]["train"]["num_examples"]), examples)
        runtime.shutdown()
        self.assertEqual(_alive([w.process.pid for w in workers]), [])

    def test_refuses_non_loopback_hosts(self):
        for host in ("0.0.0.0", "10.1.2.3", "example.org", ""):
            with self.assertRaisesRegex(ValueError, "loopback"):
                runtime.start_local_workers(1, host=host)
            with self.assertRaisesRegex(ValueError, "loopback"):
                runtime.LocalWorker(host=host)
        with self.assertRaises(ValueError):
            runtime.start_local_workers(0)
        with self.assertRaises(ValueError):
            runtime.start_multi_worker_context([])
        self.assertEqual(runtime.find_workers(os.getpid()), [])

    def test_sigkill_of_parent_ends_all_workers(self):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            lines = []
            deadline = time.monotonic() + 240
            for line in proc.stdout:
                lines.append(line)
                if "ready" in line or time.monotonic() > deadline:
                    break
            self.assertIn("sum 12.0\n", lines)
            workers = runtime.find_workers(owner_pid=proc.pid)
            self.assertLen(workers, 2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(_alive(workers), [])


if __name__ == "__main__":
    absltest.main()
