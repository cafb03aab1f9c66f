"""With BatchNorm, each round ends with the global statistics of the new global model.

Every algorithm but FedBN ends its round by having the participating clients
run the new global model over their round data, and sets the global moving
mean and variance to the statistics of the pooled data: per channel,
mean = sum_b n_b mu_b / N and var = sum_b n_b (var_b + mu_b^2) / N - mean^2
over the batches b of all those clients, var_b the batch variance Keras'
BatchNorm averages (Bessel-corrected). Here the BatchNorm input (the
convolution's output) is computed with Keras from the process's new weights
and pooled in numpy; FedAvg's and FedProx's new weights are checked against
plain Keras training. A client whose statistics are not finite does not
count. DP and secure aggregation, which the statistics would bypass, are
refused with BatchNorm, by the runner too.
"""

import fl_testing
import numpy as np
import run_testing
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision.algorithms import build_optimizer, build_process

_LR = 0.1
_MU = 0.1
_CLIENTS = (2, 0)  # The clients taking part, in this order.


def _datasets():
    """Three clients of 5, 9 and 14 examples with different feature distributions."""
    return fl_testing.small_datasets(spread=2.0)


def _pooled_statistics(trainable, datasets):
    """Per channel (mean, variance) of the BatchNorm input over all batches of `datasets`."""
    model = fl_testing.small_model(norm=True)
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    conv = tf.keras.Model(model.input, model.get_layer("conv").output)
    n, sums, squares = 0, 0.0, 0.0
    for x, _ in (batch for dataset in datasets for batch in dataset):
        y = conv(x).numpy().astype(np.float64)
        axes = (0, 1, 2)
        mu, var = y.mean(axis=axes), y.var(axis=axes, ddof=1)
        n, sums, squares = n + len(x), sums + len(x) * mu, squares + len(x) * (var + mu**2)
    mean = sums / n
    return [mean, squares / n - mean**2]


def _keras_clients(weights, datasets, mu=0.0):
    """Per client `(trainable, non_trainable, examples)` after plain-Keras local SGD."""
    clients = []
    for dataset in datasets:
        model = fl_testing.small_model(norm=True)
        model.set_weights(weights)
        _, examples = fl_testing.train_keras(model, dataset, _LR, mu=mu)
        clients.append(
            (
                [v.numpy() for v in model.trainable_variables],
                [v.numpy() for v in model.non_trainable_variables],
                examples,
            )
        )
    return clients


def _mean(clients, part):
    """Per variable, the example-weighted mean of the clients' `part` (0 or 1)."""
    examples = [n for _, _, n in clients]
    columns = zip(*[client[part] for client in clients])
    return [fl_testing.weighted_mean(list(column), examples) for column in columns]


class RecomputedStatisticsTest(fl_testing.LocalContextTestCase):
    def _process(self, name):
        return build_process(
            name,
            fl_testing.small_model_fn(norm=True),
            client_optimizer=build_optimizer("sgd", _LR),
            proximal_strength=_MU,
            client_learning_rate=_LR,
            num_clients=len(fl_testing.SMALL_SIZES),
        )

    @parameterized.named_parameters(
        ("fedavg", "fedavg", 0.0, True),
        ("fedprox", "fedprox", _MU, True),
        ("scaffold", "scaffold", 0.0, False),
        ("fednova", "fednova", 0.0, False),
    )
    def test_one_round_ends_with_the_pooled_statistics(self, name, mu, check_trainable):
        process = self._process(name)
        init = fl_testing.small_model(seed=7, norm=True)
        state = fl_testing.initial_state(process, init)
        datasets = [_datasets()[i] for i in _CLIENTS]
        if name == "scaffold":  # Client-indexed: (client index, dataset) pairs.
            weights = process.get_model_weights(
                process.next(state, list(zip(_CLIENTS, datasets))).state
            )
        else:
            weights = process.get_model_weights(process.next(state, datasets).state)

        expected = _pooled_statistics(weights.trainable, datasets)
        fl_testing.assert_all_close(weights.non_trainable, expected, "statistics", rtol=2e-5)
        clients = _keras_clients(init.get_weights(), datasets, mu)
        if check_trainable:  # FedAvg and FedProx: the example-weighted mean of the clients.
            fl_testing.assert_all_close(weights.trainable, _mean(clients, 0), "weights")
        # Teeth: the statistics left their start (mean 0, variance 1), and are not the mean
        # of the clients' own moving statistics after local training.
        start = [v.numpy() for v in init.non_trainable_variables]
        self.assertGreater(max(np.abs(e - s).max() for e, s in zip(expected, start)), 0.5)
        averaged = _mean(clients, 1)
        self.assertGreater(max(np.abs(e - a).max() for e, a in zip(expected, averaged)), 0.5)

    def test_a_diverged_client_does_not_count(self):
        process = self._process("fedavg")
        state = fl_testing.initial_state(process, fl_testing.small_model(seed=7, norm=True))
        arrays = fl_testing.small_client_arrays(spread=2.0)
        images, labels = arrays[1]
        arrays[1] = (np.full_like(images, np.nan), labels)  # Client 1 diverges.
        datasets = [fl_testing.small_dataset(a) for a in arrays]
        state = process.next(state, datasets).state
        weights = process.get_model_weights(state)
        expected = _pooled_statistics(weights.trainable, [datasets[0], datasets[2]])
        fl_testing.assert_all_close(weights.non_trainable, expected, "statistics", rtol=2e-5)
        # A round in which no client counts keeps the server's statistics.
        state = process.next(state, [datasets[1]]).state
        kept = process.get_model_weights(state).non_trainable
        for after, before in zip(kept, weights.non_trainable):
            np.testing.assert_array_equal(after, before)


class RefusedWithBatchNormTest(run_testing.RunnerTestCase):
    def test_runner_refuses_dp_with_batch_norm_in_one_line(self):
        out = self.tmp / "dp_batch"
        result = run_testing.run_runner(
            *run_testing.runner_flags(norm="batch", aggregator="dp", output_dir=out)
        )
        self.assertOneLineError(
            result,
            "--norm=batch with --aggregator=dp would release the clients' BatchNorm "
            "statistics without noise; use --norm=group",
        )
        self.assertFalse(out.exists())


if __name__ == "__main__":
    absltest.main()
