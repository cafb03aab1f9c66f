"""FedNova (Wang et al., 2020, https://arxiv.org/abs/2007.07481) as a TFF process.

Clients taking different numbers of local steps `tau_i` make FedAvg drift
towards the objective of those that step most; FedNova averages updates
normalized by the steps instead. With global weights `x`, client `i` training
from `x` to `y_i` by local SGD (step `eta`, optional momentum `rho`:
`v <- rho v + g`, `y <- y - eta v`) on `n_i` examples:

    a_i = tau_i  (plain SGD),  [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho)  (momentum)
    d_i = (x - y_i) / a_i,   p_i = n_i / sum_j n_j,   tau_eff = sum_i p_i a_i
    x  <- x - eta_g * tau_eff * sum_i p_i d_i

With equal `a_i` this is FedAvg's example-weighted mean. `n_i` counts the
examples trained on in the round, proportional to the data size when every
client runs the same number of epochs (as this package's round datasets do).
The process is `_compose.compose_process` with `build_fednova_client_work` and
`NormalizedAveragingFactory`; the server optimizer (default SGD at `eta_g =
1.0`) applies `tau_eff * sum_i p_i d_i` as a pseudo-gradient. There is no
per-client state: `next` takes any list of participating clients' datasets.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, _compose

NORMALIZED_UPDATE = "normalized_update"
LOCAL_STEPS = "local_steps"


def normalizer(num_steps: tf.Tensor, momentum: float) -> tf.Tensor:
    """`||a_i||_1` for `num_steps` local steps of SGD with heavy-ball `momentum`.

    Gradient `k` (0-based) of `tau` enters `x - y` with weight
    `sum_{j < tau - k} momentum^j`; summing over `k` gives the closed form.
    """
    tau = tf.cast(num_steps, tf.float32)
    if momentum == 0.0:
        return tau
    rho = tf.constant(momentum, tf.float32)
    return (tau - rho * (1.0 - tf.pow(rho, tau)) / (1.0 - rho)) / (1.0 - rho)


def _build_client_update(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    learning_rate: float,
    momentum: float,
):
    """The `tf.function` of one client's FedNova round (traced inside a computation)."""
    model = model_fn()
    optimizer = tff.learning.optimizers.build_sgdm(
        learning_rate, momentum=momentum if momentum > 0 else None
    )

    @tf.function
    def client_update(initial_weights, dataset):
        weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial_weights)
        num_examples, num_steps = _client_loops.train_locally(model, optimizer, dataset)
        model_update = [x - y for x, y in zip(initial_weights.trainable, weights.trainable)]
        model_update, is_finite = _client_loops.zero_if_non_finite(model_update)
        local_steps = normalizer(num_steps, momentum)
        normalized = [tf.math.divide_no_nan(u, local_steps) for u in model_update]
        update = collections.OrderedDict(
            [(NORMALIZED_UPDATE, normalized), (LOCAL_STEPS, local_steps)]
        )
        return _client_loops.finish_client(model, update, num_examples, is_finite)

    return client_update


def build_fednova_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    learning_rate: float,
    momentum: float = 0.0,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.ClientWorkProcess:
    """Builds the FedNova `ClientWorkProcess` (stateless).

    Each client runs SGD (with optional heavy-ball momentum) over its dataset
    from the broadcast weights and sends `OrderedDict(normalized_update=
    (x - y) / a, local_steps=a)` weighted by its number of examples.

    Args:
        model_fn: No-argument callable returning a fresh `VariableModel`.
        learning_rate: Local learning rate `eta`.
        momentum: Local heavy-ball momentum `rho` in `[0, 1)` (0: plain SGD).
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `tff.learning.templates.ClientWorkProcess`.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    traced = _client_loops.trace_model(model_fn, metrics_aggregator)
    weights_type = traced.weights_type
    data_type = tff.SequenceType(traced.element_type)

    @tff.federated_computation
    def init_fn():
        return tff.federated_value((), tff.SERVER)

    @tff.tensorflow.computation(weights_type, data_type)
    def client_update(initial_weights, dataset):
        return _build_client_update(model_fn, learning_rate, momentum)(initial_weights, dataset)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        client_result, model_outputs = tff.federated_map(client_update, (weights, client_data))
        return tff.templates.MeasuredProcessOutput(
            state,
            client_result,
            _client_loops.train_measurements(traced.metrics_aggregation_fn, model_outputs),
        )

    return _client_loops.client_work_process(init_fn, next_fn)


class NormalizedAveragingFactory(tff.aggregators.WeightedAggregationFactory):
    """FedNova's server aggregation: `tau_eff * sum_i p_i d_i`.

    Takes client values `OrderedDict(normalized_update=d_i, local_steps=a_i)`
    with weights `n_i`, averages `d_i` with the inner weighted factory
    (weights `p_i = n_i / sum_j n_j` for the default mean) and `a_i` with a
    plain weighted mean (`_compose.ModelUpdateFactory`: the inner factory's
    clipping, zeroing or quantization must not change the step counts), and
    returns the normalized mean scaled by the effective number of steps
    `tau_eff = sum_i p_i a_i`, shaped like `d_i`. Measurements:
    `effective_local_steps` (`tau_eff`) and the inner process's measurements
    under `mean`.
    """

    def __init__(self, inner_factory: tff.aggregators.WeightedAggregationFactory | None = None):
        """Initializes the factory.

        Args:
            inner_factory: Weighted factory averaging `d_i`; defaults to
                `tff.aggregators.MeanFactory()`.
        """
        if inner_factory is None:
            inner_factory = tff.aggregators.MeanFactory()
        if not isinstance(inner_factory, tff.aggregators.WeightedAggregationFactory):
            raise TypeError("inner_factory must be a tff.aggregators.WeightedAggregationFactory")
        self._inner_factory = inner_factory

    def create(
        self, value_type: tff.Type, weight_type: tff.Type
    ) -> tff.templates.AggregationProcess:
        names = [name for name, _ in tff.structure.iter_elements(value_type)]
        if names != [NORMALIZED_UPDATE, LOCAL_STEPS]:
            raise TypeError(
                f"expected client values with fields ({NORMALIZED_UPDATE}, {LOCAL_STEPS}), "
                f"got {value_type}"
            )
        inner = _compose.ModelUpdateFactory(self._inner_factory, NORMALIZED_UPDATE).create(
            value_type, weight_type
        )
        mean_type = inner.next.type_signature.result.result.member

        @tff.tensorflow.computation(mean_type)
        def scale(mean):
            tau_eff = mean[LOCAL_STEPS]
            return tf.nest.map_structure(lambda d: tau_eff * d, mean[NORMALIZED_UPDATE])

        @tff.tensorflow.computation(mean_type)
        def effective_local_steps(mean):
            return mean[LOCAL_STEPS]

        @tff.federated_computation(
            inner.initialize.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS),
        )
        def next_fn(state, value, weight):
            inner_output = inner.next(state, value, weight)
            measurements = tff.federated_zip(
                collections.OrderedDict(
                    effective_local_steps=tff.federated_map(
                        effective_local_steps, inner_output.result
                    ),
                    mean=inner_output.measurements,
                )
            )
            return tff.templates.MeasuredProcessOutput(
                inner_output.state, tff.federated_map(scale, inner_output.result), measurements
            )

        return tff.templates.AggregationProcess(inner.initialize, next_fn)


def build_fednova(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_learning_rate: float,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    *,
    client_momentum: float = 0.0,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
    metrics_aggregator: Callable[..., tff.Computation] | None = None,
) -> tff.learning.templates.LearningProcess:
    """Builds the FedNova learning process (see the module docstring).

    Args:
        model_fn: No-argument callable returning a fresh
            `tff.learning.models.VariableModel` (see `keras_model.model_fn`).
        client_learning_rate: Local SGD learning rate `eta`.
        server_optimizer: Optimizer applying `tau_eff * sum_i p_i d_i` as a
            pseudo-gradient; defaults to SGD with learning rate 1.0.
        client_momentum: Local heavy-ball momentum `rho` in `[0, 1)` (0: plain
            SGD, the paper's main setting); the normalizer `a_i` accounts for it.
        model_aggregator: Weighted factory averaging the normalized updates
            (the step counts take a plain weighted mean), wrapped by
            `NormalizedAveragingFactory`; defaults to
            `tff.aggregators.MeanFactory()` (weights `p_i`).
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `tff.learning.templates.LearningProcess`; `next(state, datasets)`
        takes the participating clients' datasets.
    """
    return _compose.compose_process(
        model_fn,
        lambda: build_fednova_client_work(
            model_fn,
            client_learning_rate,
            momentum=client_momentum,
            metrics_aggregator=metrics_aggregator,
        ),
        NormalizedAveragingFactory(model_aggregator),
        server_optimizer,
    )
