"""Ditto (Li et al., 2021, https://arxiv.org/abs/2012.04221) as a TFF process.

The global model `w` trains as FedAvg; each client `k` also keeps a personal
model `v_k`, a whole copy of the model, trained every round from its previous
`v_k` on the same round data with local SGD on

    F_k(v) + lambda/2 ||v - w||^2,   gradient  g_k(v) + lambda (v - w),

`w` the round's broadcast model (the paper's Algorithm 1, personal step with
the same learning rate and passes as the global one). `lambda = 0` is local
training alone; a large `lambda` holds `v_k` at `w`. The `v_k` never leave
the server state: they are a per-client table (`_local_parts` with every
variable kept, FedBN's layout), so saving the state resumes exactly; the
personal model of a client that never took part is the global model.
Evaluations score the personal models (`process.client_models(state)`).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _compose, _local_parts


def _build_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    ditto_lambda: float,
    slots: _local_parts.Slots,
):
    """The `tf.function` of one client's Ditto round (traced inside a computation)."""
    model, personal = model_fn(), model_fn()

    @tf.function
    def client_update(initial_weights, dataset, row):
        # The global model's local training: FedAvg's.
        weights = _local_parts.assign(
            model, initial_weights.trainable, initial_weights.non_trainable
        )
        num_examples, _ = _client_loops.train_locally(model, optimizer, dataset)
        update = [x - y for x, y in zip(initial_weights.trainable, weights.trainable)]
        update, is_finite = _client_loops.zero_if_non_finite(update)
        result, metrics = _client_loops.finish_client(model, update, num_examples, is_finite)

        # The personal model, pulled towards the broadcast one. Its pass starts after the
        # global model's: the round data's shuffle draws a new order for each pass, in the
        # order the passes start.
        start_trainable, start_non_trainable = _local_parts.start_weights(
            initial_weights, row, slots
        )
        with tf.control_dependencies([num_examples]):
            own = _local_parts.assign(personal, start_trainable, start_non_trainable)
            anchor = list(initial_weights.trainable)
            _client_loops.train_locally(
                personal,
                optimizer,
                dataset,
                gradient_correction=lambda grads: [
                    g + ditto_lambda * (v - w) for g, v, w in zip(grads, own.trainable, anchor)
                ],
            )
        kept = _local_parts.kept_part(
            [tf.identity(v) for v in own.trainable],
            [tf.identity(v) for v in own.non_trainable],
            slots,
        )
        kept, personal_finite = _client_loops.zero_if_non_finite(kept)
        start = _local_parts.kept_part(start_trainable, start_non_trainable, slots)
        return result, metrics, _local_parts.new_row(kept, start, personal_finite)

    return client_update


def build_ditto(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_learning_rate: float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    ditto_lambda: float,
    client_momentum: float = 0.0,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _local_parts.LocalPartsProcess:
    """Builds the Ditto learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_learning_rate: Local SGD learning rate of both models.
        server_optimizer: Applies the example-weighted mean update of the
            global model as a pseudo-gradient; defaults to SGD with learning
            rate 1.0 (FedAvg).
        num_clients: Total number of clients (rows of the personal-model table).
        ditto_lambda: lambda >= 0, the pull of each personal model towards the
            global one.
        client_momentum: Heavy-ball momentum of the local SGD (0: plain SGD).
        model_aggregator: Weighted aggregation factory of the global model's
            updates; defaults to `tff.aggregators.MeanFactory()`.
        metrics_aggregator: Builds the training-metrics aggregation (of the
            global model's local training); defaults to
            `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `_local_parts.LocalPartsProcess` keeping every variable per client:
        `next(state, client_data)` takes all clients' datasets in index order
        or `(client_index, dataset)` pairs; `client_models(state)` gives the
        personal models.
    """
    if not client_learning_rate > 0:
        raise ValueError(f"client_learning_rate must be > 0, got {client_learning_rate}")
    if not ditto_lambda >= 0:
        raise ValueError(f"ditto_lambda must be >= 0, got {ditto_lambda}")
    optimizer = tff.learning.optimizers.build_sgdm(client_learning_rate, client_momentum or None)
    slots = _local_parts.all_slots(_client_loops.trace_model(model_fn))

    def client_work():
        return _local_parts.build_client_work(
            model_fn,
            num_clients,
            slots,
            lambda: _build_client_update(model_fn, optimizer, float(ditto_lambda), slots),
            metrics_aggregator,
        )

    process = _compose.compose_process(model_fn, client_work, model_aggregator, server_optimizer)
    return _local_parts.LocalPartsProcess(
        process, num_clients, slots.trainable, slots.non_trainable
    )
