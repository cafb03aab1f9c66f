"""How the server combines client model deltas: TFF aggregation factories by name.

`build_aggregator(name)` for the `--aggregator` choices:

* ``mean``: TFF's weighted mean, FedAvg's example-weighted average (default).
* ``dp``: DP-FedAvg (McMahan et al., 2018), user-level differential privacy:
  client deltas clipped to L2 norm `clip` (fixed, or ``adaptive``: tracking a
  target quantile of the delta norms, Andrew et al., 2021, with TFF's
  defaults; `noise_multiplier` is then the effective one, the quantile
  estimate's share of the budget included, so accounting takes it as is),
  summed, Gaussian noise of stddev `noise_multiplier * clip` added, divided
  by the clients per round. TFF's `DifferentiallyPrivateFactory`
  queries, except that the noise is `tf.random.stateless_normal` keyed by
  (`noise_seed`, round): TF Privacy's unseeded draws would make runs
  irreproducible and op determinism refuses them (a deployment would need a
  secret seed). Unweighted, since a weight would change a client's
  sensitivity: builders wrap it with `tff.aggregators.as_weighted_aggregator`.
* ``secure``: TFF's secure weighted mean (values clipped to an adaptive
  range, quantized, summed with `federated_secure_sum_bitwidth`). The local
  C++ worker has no secure-sum executor, so `SimulatedSecureFactory` lowers
  the secure intrinsics to TFF's insecure reference bodies: the same
  arithmetic without the cryptography; results equal ``mean`` up to
  quantization error (~1e-6 relative).
* ``compression``: `tff.learning.compression_aggregator()`: adaptive zeroing
  and clipping, then 8-bit quantization of tensors over 20000 elements,
  rounded to the nearest level instead of TFF's unseeded stochastic rounding
  (error per coordinate at most (max - min) / 510).
* ``robust``: `tff.learning.robust_aggregator()`: the weighted mean behind
  adaptive L2 clipping and adaptive zeroing of extreme updates.
"""

from __future__ import annotations

import collections
import dataclasses

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

AGGREGATORS = ("mean", "dp", "secure", "compression", "robust")
ADAPTIVE_CLIP = "adaptive"

Factory = tff.aggregators.WeightedAggregationFactory | tff.aggregators.UnweightedAggregationFactory


def parse_dp_clip(value: str | float) -> float | None:
    """`--dp_clip` as a positive float, or None for "adaptive".

    Raises:
        ValueError: For anything else.
    """
    if isinstance(value, str) and value.strip().lower() == ADAPTIVE_CLIP:
        return None
    try:
        clip = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"--dp_clip must be a positive number or {ADAPTIVE_CLIP!r}, got {value!r}"
        ) from None
    if not (clip > 0 and np.isfinite(clip)):
        raise ValueError(f"--dp_clip must be a positive number or {ADAPTIVE_CLIP!r}, got {value!r}")
    return clip


def check_dp_settings(
    noise_multiplier: float,
    clip: str | float,
    clients_per_round: int,
    target_quantile: float = 0.5,
) -> None:
    """Raises ValueError (one line, naming the fix) for DP settings that cannot work."""
    if not (noise_multiplier >= 0 and np.isfinite(noise_multiplier)):
        raise ValueError(f"--dp_noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < target_quantile < 1:
        raise ValueError(f"--dp_target_quantile must be in (0, 1), got {target_quantile}")
    if parse_dp_clip(clip) is None and noise_multiplier > 0:
        # TFF's adaptive clipping noises the clipped count with stddev 0.05 * clients per
        # round, which must leave privacy budget for the deltas (see
        # `adaptive_clip_noise_params`).
        limit = 0.1 * clients_per_round
        if noise_multiplier >= limit:
            raise ValueError(
                f"--dp_clip=adaptive with {clients_per_round} clients per round needs "
                f"--dp_noise_multiplier < {limit:g}; use a fixed --dp_clip=C or more clients"
            )


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A named aggregation factory.

    Attributes:
        name: One of `AGGREGATORS`.
        factory: The TFF factory, weighted or unweighted.
    """

    name: str
    factory: Factory

    @property
    def weighted(self) -> bool:
        return isinstance(self.factory, tff.aggregators.WeightedAggregationFactory)


def build_aggregator(
    name: str = "mean",
    *,
    clients_per_round: int = 1,
    dp_noise_multiplier: float = 1.0,
    dp_clip: str | float = 1.0,
    dp_target_quantile: float = 0.5,
    noise_seed: int = 0,
) -> Aggregator:
    """The aggregator called `name` (see the module docstring).

    Args:
        name: One of `AGGREGATORS`.
        clients_per_round: Clients taking part in each round (the DP mean's
            denominator); DP only.
        dp_noise_multiplier: Gaussian noise stddev / clip norm; DP only.
        dp_clip: Fixed L2 clip norm, or "adaptive"; DP only.
        dp_target_quantile: Quantile of client delta norms that adaptive
            clipping aims at; DP with adaptive clipping only.
        noise_seed: Seed of the DP noise (combined with the round index).

    Raises:
        ValueError: For an unknown name or invalid DP settings.
    """
    if name == "mean":
        return Aggregator(name, tff.aggregators.MeanFactory())
    if name == "dp":
        check_dp_settings(dp_noise_multiplier, dp_clip, clients_per_round, dp_target_quantile)
        return Aggregator(
            name,
            dp_factory(
                dp_noise_multiplier,
                clients_per_round,
                dp_clip,
                target_quantile=dp_target_quantile,
                noise_seed=noise_seed,
            ),
        )
    if name == "secure":
        inner = tff.learning.secure_aggregator(zeroing=False, clipping=False, weighted=True)
        return Aggregator(name, SimulatedSecureFactory(inner))
    if name == "compression":
        # Round to nearest: stochastic rounding draws unseeded random numbers, which would
        # make runs irreproducible (and which op determinism refuses).
        return Aggregator(
            name, tff.learning.compression_aggregator(weighted=True, stochastic=False)
        )
    if name == "robust":
        return Aggregator(name, tff.learning.robust_aggregator(weighted=True))
    raise ValueError(f"Unknown aggregator {name!r}; use one of {', '.join(AGGREGATORS)}")


class SimulatedSecureFactory(tff.aggregators.WeightedAggregationFactory):
    """A weighted factory whose secure-sum intrinsics run as plain TF (simulation only).

    Creates the inner factory's process, then replaces every
    `federated_secure_sum*` / `federated_secure_modular_sum` /
    `federated_secure_select` in its `initialize` and `next` by the insecure
    TensorFlow bodies TFF provides for testing, keeping the type signatures
    (Python containers included) so the process composes as the original.
    """

    def __init__(self, inner: tff.aggregators.WeightedAggregationFactory):
        if not isinstance(inner, tff.aggregators.WeightedAggregationFactory):
            raise TypeError(f"expected a WeightedAggregationFactory, got {type(inner).__name__}")
        self._inner = inner

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        process = self._inner.create(value_type, weight_type)
        return tff.templates.AggregationProcess(
            _insecure(process.initialize), _insecure(process.next)
        )


def _insecure(computation):
    lowered = tff.backends.test.replace_secure_intrinsics_with_bodies(computation)
    return tff.framework.ConcreteComputation.with_type(lowered, computation.type_signature)


# --- DP-FedAvg with seeded noise ---------------------------------------------------------


def dp_factory(
    noise_multiplier: float,
    clients_per_round: int,
    clip: str | float,
    target_quantile: float = 0.5,
    noise_seed: int = 0,
) -> tff.aggregators.UnweightedAggregationFactory:
    """`DifferentiallyPrivateFactory.gaussian_fixed` / `gaussian_adaptive`, with seeded noise.

    Same queries and parameters as TFF's class methods (adaptive: initial clip
    0.1, learning rate 0.2, geometric updates, clipped-count stddev 0.05 *
    clients_per_round, value noise raised so that `noise_multiplier` is the
    effective one); only the noise is drawn statelessly from `noise_seed`.
    """
    check_dp_settings(noise_multiplier, clip, clients_per_round, target_quantile)
    fixed_clip = parse_dp_clip(clip)
    n = float(clients_per_round)
    seed = int(noise_seed) & 0x3FFFFFFF
    if fixed_clip is not None:
        query = _SeededGaussianSumQuery(
            fixed_clip, fixed_clip * float(noise_multiplier), seed=2 * seed
        )
    else:
        value_noise_multiplier, clipped_count_stddev = _adaptive_clip_noise_params(
            float(noise_multiplier), n
        )
        query = _SeededQuantileAdaptiveClipSumQuery(
            initial_l2_norm_clip=0.1,
            noise_multiplier=value_noise_multiplier,
            target_unclipped_quantile=float(target_quantile),
            learning_rate=0.2,
            clipped_count_stddev=clipped_count_stddev,
            expected_num_records=n,
            seed=seed,
        )
    return tff.aggregators.DifferentiallyPrivateFactory(tfp.NormalizedQuery(query, denominator=n))


def _adaptive_clip_noise_params(noise_multiplier: float, clients_per_round: float):
    """TFF's `differential_privacy.adaptive_clip_noise_params` with its default stddev."""
    if noise_multiplier <= 0:
        return 0.0, 0.0
    clipped_count_stddev = 0.05 * clients_per_round
    if noise_multiplier >= 2 * clipped_count_stddev:
        raise ValueError(
            f"noise_multiplier {noise_multiplier} too large for adaptive clipping with "
            f"{clients_per_round:g} clients per round"
        )
    value = (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5
    return value, clipped_count_stddev


class _SeededGaussianSumQuery(tfp.GaussianSumQuery):
    """`tfp.GaussianSumQuery` whose noise is `stateless_normal` keyed by a seed in its state.

    The global state gains `noise_seed` (int64 [2]: seed, round), advanced
    by one round per `get_noised_result`.
    """

    _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev", "noise_seed"])

    def __init__(self, l2_norm_clip, stddev, seed: int):
        super().__init__(l2_norm_clip, stddev)
        self._seed = int(seed)

    def make_global_state(self, l2_norm_clip, stddev, noise_seed=None):
        if noise_seed is None:
            noise_seed = tf.constant([self._seed, 0], tf.int64)
        return self._GlobalState(
            tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32), noise_seed
        )

    def get_noised_result(self, sample_state, global_state):
        flat = tf.nest.flatten(sample_state)
        seeds = tf.random.experimental.stateless_split(global_state.noise_seed, num=len(flat))
        noised = [
            v
            + tf.cast(
                tf.random.stateless_normal(tf.shape(v), seeds[i], stddev=global_state.stddev),
                v.dtype,
            )
            for i, v in enumerate(flat)
        ]
        result = tf.nest.pack_sequence_as(sample_state, noised)
        new_state = global_state._replace(
            noise_seed=global_state.noise_seed + tf.constant([0, 1], tf.int64)
        )
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        return result, new_state, event


class _SeededQuantileEstimatorQuery(tfp.QuantileEstimatorQuery):
    """`tfp.QuantileEstimatorQuery` whose below-estimate count is noised with a seed."""

    def __init__(self, *args, seed: int, **kwargs):
        self._seed = int(seed)  # Read by `_construct_below_estimate_query` in __init__.
        super().__init__(*args, **kwargs)

    def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
        return tfp.NormalizedQuery(
            _SeededGaussianSumQuery(0.5, below_estimate_stddev, seed=self._seed),
            denominator=expected_num_records,
        )


class _SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
    """`tfp.QuantileAdaptiveClipSumQuery` (geometric updates) with seeded noise in both parts."""

    def __init__(self, *, seed: int, **query_args):
        """Takes the parent's keyword arguments (all but `geometric_update`) and a seed."""
        super().__init__(**query_args, geometric_update=True)
        clip = query_args["initial_l2_norm_clip"]
        self._sum_query = _SeededGaussianSumQuery(
            clip, query_args["noise_multiplier"] * clip, seed=2 * seed
        )
        self._quantile_estimator_query = _SeededQuantileEstimatorQuery(
            clip,
            query_args["target_unclipped_quantile"],
            query_args["learning_rate"],
            query_args["clipped_count_stddev"],
            query_args["expected_num_records"],
            geometric_update=True,
            seed=2 * seed + 1,
        )

    def get_noised_result(self, sample_state, global_state):
        # As the parent's, but the sum query's new state keeps its advanced noise seed.
        noised, sum_state, sum_event = self._sum_query.get_noised_result(
            sample_state.sum_state, global_state.sum_state
        )
        new_clip, quantile_state, quantile_event = self._quantile_estimator_query.get_noised_result(
            sample_state.quantile_estimator_state, global_state.quantile_estimator_state
        )
        new_clip = tf.maximum(new_clip, 0.0)
        new_sum_state = self._sum_query.make_global_state(
            new_clip, new_clip * global_state.noise_multiplier, noise_seed=sum_state.noise_seed
        )
        new_state = self._GlobalState(global_state.noise_multiplier, new_sum_state, quantile_state)
        event = dp_accounting.ComposedDpEvent(events=[sum_event, quantile_event])
        return noised, new_state, event
