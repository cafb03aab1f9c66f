"""The TFF recipe that FedProx, SCAFFOLD, FedNova and FedBN share to become a process.

These algorithms differ from FedAvg in their client work (FedBN also in its
finalizer); everything else is TFF's: the broadcast of the global model, a
weighted aggregation factory over the client updates, and the server
optimizer applied to the aggregate as a pseudo-gradient, joined by
`tff.learning.templates.compose_learning_process`. Building them all here
keeps their processes alike in state layout, defaults and Keras cleanup.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tff_vision.algorithms import keras_model

FinalizerBuilder = Callable[
    [tff.learning.optimizers.Optimizer, tff.Type], tff.learning.templates.FinalizerProcess
]


def compose_process(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    build_client_work: Callable[[], tff.learning.templates.ClientWorkProcess],
    aggregator_factory: tff.aggregators.WeightedAggregationFactory | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    build_finalizer: FinalizerBuilder | None = None,
) -> tff.learning.templates.LearningProcess:
    """Composes initial weights, broadcast, client work, aggregator and finalizer.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`; its
            initial weights are the process's.
        build_client_work: Builds the `ClientWorkProcess`; the aggregator is
            created for the update and weight types of its client results.
        aggregator_factory: Weighted factory over the client updates; defaults
            to `tff.aggregators.MeanFactory()`.
        server_optimizer: Defaults to SGD with learning rate 1.0.
        build_finalizer: `(server_optimizer, model weights type) -> finalizer`;
            defaults to `tff.learning.templates.build_apply_optimizer_finalizer`.
    """
    if aggregator_factory is None:
        aggregator_factory = tff.aggregators.MeanFactory()
    if server_optimizer is None:
        server_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=1.0)
    if build_finalizer is None:
        build_finalizer = tff.learning.templates.build_apply_optimizer_finalizer

    @tff.tensorflow.computation
    def initial_model_weights_fn():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_model_weights_fn.type_signature.result
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
    client_work = build_client_work()
    client_result_type = client_work.next.type_signature.result.result.member
    aggregator = aggregator_factory.create(
        client_result_type.update, client_result_type.update_weight
    )
    process = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn,
        distributor,
        client_work,
        aggregator,
        build_finalizer(server_optimizer, weights_type),
    )
    # Tracing the model in TFF's graphs switches Keras' functional base class; switch it back.
    keras_model.restore_eager_keras_classes()
    return process
