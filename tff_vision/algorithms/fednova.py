"""FedNova (Wang et al., 2020) as a composed TFF learning process.

"Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", Jianyu Wang, Qinghua Liu, Hao Liang, Gauri Joshi and H. Vincent
Poor, NeurIPS 2020, https://arxiv.org/abs/2007.07481.

Clients may take different numbers of local steps `tau_i` in a round (more
data, more local epochs); plain FedAvg then drifts towards the objective of the
clients that step most. FedNova averages *normalized* updates instead. With
global weights `x`, client `i` training from `x` to `y_i` with local SGD (step
size `eta`, optional momentum `rho`: `v <- rho v + g`, `y <- y - eta v`):

    a_i   = tau_i                                            (plain SGD)
    a_i   = [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho)   (momentum)
            (= ||a_i||_1, the sum of the weights the gradients get in x - y_i)
    d_i   = (x - y_i) / a_i                   normalized update
    p_i   = n_i / sum_j n_j                   n_i = client i's number of examples
    tau_eff = sum_i p_i a_i
    x    <- x - eta_g * tau_eff * sum_i p_i d_i

With equal `a_i` this is exactly FedAvg's example-weighted average.

The clients report `n_i` as the number of examples they trained on in the
round. With the same number of local epochs on every client (as this
package's round datasets have) that is proportional to the data size, so the
`p_i` are the paper's; clients running different numbers of epochs would be
weighted by examples processed instead. Differing `tau_i` come from differing
data sizes (or batch sizes) and are normalized away as in the paper.

The process is composed from TFF's templates
(`tff.learning.templates.compose_learning_process`):

* distributor: `tff.learning.templates.build_broadcast_process` of `x`;
* client work: `build_fednova_client_work`: local SGD(M), sending
  `OrderedDict(normalized_update=d_i, local_steps=a_i)` with weight `n_i`;
* aggregator: `NormalizedAveragingFactory`, a `tff.aggregators` factory that
  averages both fields with an inner weighted factory (default
  `tff.aggregators.MeanFactory`, giving `sum_i p_i d_i` and `tau_eff`) and
  returns `tau_eff * sum_i p_i d_i`;
* finalizer: `tff.learning.templates.build_apply_optimizer_finalizer`, which
  applies that as a pseudo-gradient with the server optimizer (default SGD
  with learning rate `eta_g = 1.0`; server momentum etc. compose as usual).

FedNova needs no per-client state, so the process is a plain
`LearningProcess` and `next(state, client_datasets)` takes any list of
participating clients' datasets.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision.algorithms import _client_loops, keras_model

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
        if not is_finite:
            model.reset_metrics()
        result = tff.learning.templates.ClientResult(
            update=collections.OrderedDict(
                [(NORMALIZED_UPDATE, normalized), (LOCAL_STEPS, local_steps)]
            ),
            update_weight=_client_loops.client_weight(
                tff.learning.ClientWeighting.NUM_EXAMPLES, num_examples, is_finite
            ),
        )
        return result, model.report_local_unfinalized_metrics()

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
        measurements = tff.federated_zip(
            collections.OrderedDict(train=traced.metrics_aggregation_fn(model_outputs))
        )
        return tff.templates.MeasuredProcessOutput(state, client_result, measurements)

    process = tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
    keras_model.restore_eager_keras_classes()
    return process


class NormalizedAveragingFactory(tff.aggregators.WeightedAggregationFactory):
    """FedNova's server aggregation: `tau_eff * sum_i p_i d_i`.

    Takes client values `OrderedDict(normalized_update=d_i, local_steps=a_i)`
    with weights `n_i`, averages both fields with the inner weighted factory
    (weights `p_i = n_i / sum_j n_j` for the default mean) and returns the
    normalized mean scaled by the effective number of steps `tau_eff =
    sum_i p_i a_i`, shaped like `d_i`. Measurements: `effective_local_steps`
    (`tau_eff`) and the inner process's measurements under `mean`.
    """

    def __init__(self, inner_factory: tff.aggregators.WeightedAggregationFactory | None = None):
        """Initializes the factory.

        Args:
            inner_factory: Weighted factory averaging `d_i` and `a_i`; defaults
                to `tff.aggregators.MeanFactory()`.
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
        inner = self._inner_factory.create(value_type, weight_type)
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
            and step counts, wrapped by `NormalizedAveragingFactory`; defaults
            to `tff.aggregators.MeanFactory()` (weights `p_i`).
        metrics_aggregator: Builds the training-metrics aggregation; defaults
            to `tff.learning.metrics.sum_then_finalize`.

    Returns:
        A `tff.learning.templates.LearningProcess`; `next(state, datasets)`
        takes the participating clients' datasets.
    """
    if server_optimizer is None:
        server_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=1.0)

    @tff.tensorflow.computation
    def initial_model_weights_fn():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_model_weights_fn.type_signature.result
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
    client_work = build_fednova_client_work(
        model_fn,
        client_learning_rate,
        momentum=client_momentum,
        metrics_aggregator=metrics_aggregator,
    )
    client_result_type = client_work.next.type_signature.result.result.member
    aggregator = NormalizedAveragingFactory(model_aggregator).create(
        client_result_type.update, client_result_type.update_weight
    )
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
        server_optimizer, weights_type
    )
    process = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn, distributor, client_work, aggregator, finalizer
    )
    keras_model.restore_eager_keras_classes()
    return process
