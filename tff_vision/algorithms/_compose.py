"""The TFF recipe that FedProx, SCAFFOLD, FedNova and FedBN share to become a process.

These algorithms differ from FedAvg in their client work (FedBN also in its
finalizer); everything else is TFF's: the broadcast of the global model, a
weighted aggregation factory over the client updates, and the server
optimizer applied to the aggregate as a pseudo-gradient, joined by
`tff.learning.templates.compose_learning_process`. Building them all here
keeps their processes alike in state layout, defaults and Keras cleanup.
For a BatchNorm model each round ends by recomputing the global moving
statistics over the round's clients (`_batchnorm`), except where the caller
keeps normalization local (FedBN). `ModelUpdateFactory` lets an algorithm
with extra fields in its client update (FedNova's step counts, FedBN's local
variables) send only the model update through the chosen aggregator.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import tensorflow_federated as tff

from tff_vision.algorithms import _batchnorm, keras_model

FinalizerBuilder = Callable[
    [tff.learning.optimizers.Optimizer, tff.Type], tff.learning.templates.FinalizerProcess
]


def compose_process(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    build_client_work: Callable[[], tff.learning.templates.ClientWorkProcess],
    aggregator_factory: tff.aggregators.WeightedAggregationFactory | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    build_finalizer: FinalizerBuilder | None = None,
    *,
    recompute_batch_statistics: bool = True,
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
        recompute_batch_statistics: End each round by recomputing the
            global BatchNorm statistics (`_batchnorm`; a model without
            BatchNorm is unaffected). False leaves them to the finalizer (FedBN).
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
    if recompute_batch_statistics:
        process = _batchnorm.with_recomputed_statistics(process, model_fn)
    # Tracing the model in TFF's graphs switches Keras' functional base class; switch it back.
    keras_model.restore_eager_keras_classes()
    return process


class ModelUpdateFactory(tff.aggregators.WeightedAggregationFactory):
    """Field `model_field` of the client values through `inner`; the rest by a plain mean.

    For client updates with extra fields (FedNova's step counts, FedBN's
    local variables) that the chosen aggregator's clipping, zeroing or
    quantization must not touch: only the model update goes through `inner`,
    every other field through `tff.aggregators.MeanFactory()` with the same
    client weights. The result has the client values' fields, in order; state
    and measurements are `inner`'s.
    """

    def __init__(self, inner: tff.aggregators.WeightedAggregationFactory, model_field: str):
        if not isinstance(inner, tff.aggregators.WeightedAggregationFactory):
            raise TypeError(f"expected a WeightedAggregationFactory, got {type(inner).__name__}")
        self._inner = inner
        self._model_field = model_field

    def create(
        self, value_type: tff.Type, weight_type: tff.Type
    ) -> tff.templates.AggregationProcess:
        names = [name for name, _ in tff.structure.iter_elements(value_type)]
        if self._model_field not in names:
            raise TypeError(f"expected client values with a field {self._model_field}")
        extra_names = [name for name in names if name != self._model_field]
        inner = self._inner.create(value_type[self._model_field], weight_type)
        extra_type = tff.types.StructWithPythonType(
            [(name, value_type[name]) for name in extra_names], collections.OrderedDict
        )
        extra = tff.aggregators.MeanFactory().create(extra_type, weight_type)

        @tff.federated_computation(
            inner.initialize.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS),
        )
        def next_fn(state, value, weight):
            inner_output = inner.next(state, value[self._model_field], weight)
            extra_values = tff.federated_zip(
                collections.OrderedDict((name, value[name]) for name in extra_names)
            )
            extra_mean = extra.next(extra.initialize(), extra_values, weight).result
            result = collections.OrderedDict(
                (name, inner_output.result if name == self._model_field else extra_mean[name])
                for name in names
            )
            return tff.templates.MeasuredProcessOutput(
                inner_output.state, tff.federated_zip(result), inner_output.measurements
            )

        return tff.templates.AggregationProcess(inner.initialize, next_fn)
