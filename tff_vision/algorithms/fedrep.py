"""FedRep (Collins et al., 2021, https://arxiv.org/abs/2102.07078) as a TFF process.

FedPer's split (a shared body averaged by FedAvg, a head each client keeps)
with FedRep's local training: each round a client first trains its head with
the body frozen, for `head_epochs` passes over its round data, then the body
with the head frozen, for one pass (the round's --local_epochs or
--local_steps). Only the body update is sent for averaging; the new head
stays with the client (`_local_parts`, as in `fedper`). Each phase starts its
optimizer afresh, and the frozen variables get no gradient, so they do not
move. Training metrics are those of the body phase.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _local_parts, fedper


def head_then_body(head_epochs: int, slots: _local_parts.Slots) -> _local_parts.LocalTraining:
    """FedRep's local training: the head alone `head_epochs` passes, then the body alone."""
    head = tuple(slots.trainable)

    def train(model, optimizer, dataset):
        num_trainable = len(tff.learning.models.ModelWeights.from_model(model).trainable)
        body = tuple(i for i in range(num_trainable) if i not in head)
        head_examples, _ = _client_loops.train_locally(
            model, optimizer, dataset.repeat(head_epochs), variable_slots=head
        )
        # The body's pass starts after the head's: the round data's shuffle draws a new
        # order for each pass, in the order the passes start.
        with tf.control_dependencies([head_examples]):
            model.reset_metrics()  # Report the body phase, one pass like FedAvg's.
            num_examples, _ = _client_loops.train_locally(
                model, optimizer, dataset, variable_slots=body
            )
        return num_examples

    return train


def build_fedrep(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer | float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    num_clients: int,
    head_epochs: int = 1,
    head_layer_names: Sequence[str] | None = None,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> _local_parts.LocalPartsProcess:
    """Builds the FedRep learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_optimizer: TFF optimizer of both phases, or a float: the
            learning rate of plain SGD.
        server_optimizer: Applies the example-weighted mean body update as a
            pseudo-gradient; defaults to SGD with learning rate 1.0 (FedAvg).
        num_clients: Total number of clients (rows of the head table).
        head_epochs: Passes over the round's client data that train the head
            (>= 1) before the body's pass.
        head_layer_names: The layers each client keeps; by default the last
            Dense layer (`fedper.head_layer_names`).
        model_aggregator: Weighted aggregation factory of the body updates;
            defaults to `tff.aggregators.MeanFactory()`.
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `_local_parts.LocalPartsProcess`, as `fedper.build_fedper`'s.
    """
    if isinstance(head_epochs, bool) or int(head_epochs) != head_epochs or head_epochs < 1:
        raise ValueError(f"head_epochs must be an integer >= 1, got {head_epochs!r}")
    if not isinstance(client_optimizer, tff.learning.optimizers.Optimizer):
        client_optimizer = tff.learning.optimizers.build_sgdm(float(client_optimizer))
    slots = fedper.head_slots(model_fn, head_layer_names)
    return _local_parts.build_split_process(
        model_fn,
        client_optimizer,
        server_optimizer,
        num_clients=num_clients,
        slots=slots,
        train=head_then_body(int(head_epochs), slots),
        model_aggregator=model_aggregator,
        metrics_aggregator=metrics_aggregator,
    )
