"""Every algorithm's clients train in an iterator loop, never in `Dataset.reduce`.

`Dataset.reduce` makes TF instantiate (and grappler-optimize) its body, the
whole training step, anew each time the op runs: for every client of every
round inside the TFF worker. An iterator loop is part of the client
computation's graph, built once per worker session (see
`tff_vision.algorithms.fedavg.LOOP_IMPLEMENTATION`). The ops in the serialized
computations tell the two apart: `ReduceDataset` vs `IteratorGetNextAsOptional`.
The update rules themselves are checked in fedavg_test.py, scaffold_test.py, ...
"""

import tensorflow_federated as tff
from absl.testing import absltest, parameterized

from tff_vision import client_data, models
from tff_vision.algorithms import (
    ALGORITHM_INFO,
    ALGORITHMS,
    build_optimizer,
    build_process,
    keras_model,
    learning_rate_schedule,
)


def _model_fn(algorithm="fedbn"):
    # The first norm the algorithm takes (FedBN needs BatchNorm, FedPer refuses it);
    # 2 classes keep it small.
    norms = ALGORITHM_INFO[algorithm].norms or ("batch",)

    def build():
        return models.build_model("cnn", (28, 28, 3), 2, norm=norms[0], seed=0)

    return keras_model.model_fn(build, client_data.element_spec((28, 28, 3)))


def _computation_bytes(process) -> bytes:
    # Client-indexed processes (SCAFFOLD, FedBN) wrap their `next` computation.
    computation = getattr(process.next, "computation", process.next)
    return tff.framework.ConcreteComputation.get_proto(computation).SerializeToString()


class ClientLoopTest(parameterized.TestCase):
    def assert_iterator_loop(self, process):
        graph = _computation_bytes(process)
        self.assertIn(b"IteratorGetNextAsOptional", graph)
        self.assertNotIn(b"ReduceDataset", graph)

    @parameterized.named_parameters((name, name) for name in ALGORITHMS)
    def test_clients_train_in_an_iterator_loop(self, name):
        process = build_process(
            name,
            _model_fn(name),
            client_optimizer=build_optimizer("sgd", 0.1),
            proximal_strength=0.1,
            client_learning_rate=0.1,
            num_clients=2,
        )
        self.assert_iterator_loop(process)

    def test_scheduled_fedavg_trains_in_an_iterator_loop(self):
        process = build_process(
            "fedavg",
            _model_fn(),
            client_optimizer=lambda lr: build_optimizer("adam", lr),
            client_learning_rate_fn=learning_rate_schedule("cosine", 1e-3, 10),
        )
        self.assert_iterator_loop(process)


if __name__ == "__main__":
    absltest.main()
