"""The algorithm registry refuses what cannot work, in one line naming the fix.

`check_combination` is the flag-level check the config runs before anything
is loaded; `build_process` refuses the same combinations for library callers.
Neither needs a TFF context: both raise before building anything.
"""

import fl_testing
from absl.testing import absltest, parameterized

from tff_vision import aggregators
from tff_vision.algorithms import (
    ALGORITHM_INFO,
    ALGORITHMS,
    build_optimizer,
    build_process,
    check_combination,
    learning_rate_schedule,
)

_FINE = dict(
    norm="group",
    aggregator="mean",
    client_optimizer="sgd",
    client_momentum=0.0,
    client_lr_schedule="constant",
    proximal_strength=0.1,
    distributed=False,
)


class CheckCombinationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "fedprox_needs_mu",
            "fedprox",
            dict(proximal_strength=0.0),
            "--algorithm=fedprox needs --proximal_strength > 0 (mu, e.g. 0.01 to 1)",
        ),
        (
            "fedbn_needs_batch_norm",
            "fedbn",
            dict(norm="group"),
            "--algorithm=fedbn needs --norm=batch, got --norm=group",
        ),
        (
            "scaffold_refuses_dp",
            "scaffold",
            dict(aggregator="dp"),
            "--aggregator=dp does not work with --algorithm=scaffold (see "
            "tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant",
        ),
        (
            "fedbn_refuses_secure",
            "fedbn",
            dict(norm="batch", aggregator="secure"),
            "--aggregator=secure does not work with --algorithm=fedbn (see "
            "tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant",
        ),
        (
            "fednova_trains_with_sgd",
            "fednova",
            dict(client_optimizer="adam"),
            "--algorithm=fednova trains clients with sgd; got --client_optimizer=adam",
        ),
        (
            "scaffold_has_no_momentum",
            "scaffold",
            dict(client_momentum=0.9),
            "--algorithm=scaffold runs plain local SGD; pass --client_momentum=0",
        ),
        (
            "fedbn_has_no_schedule",
            "fedbn",
            dict(norm="batch", client_lr_schedule="cosine"),
            "--algorithm=fedbn has no client learning-rate schedule; "
            "pass --client_lr_schedule=constant",
        ),
        (
            "batch_norm_refuses_dp",
            "fedavg",
            dict(norm="batch", aggregator="dp"),
            "--norm=batch with --aggregator=dp would release the clients' BatchNorm statistics "
            "without noise; use --norm=group",
        ),
        (
            "batch_norm_refuses_secure",
            "fednova",
            dict(norm="batch", aggregator="secure"),
            "--norm=batch with --aggregator=secure would sum the clients' BatchNorm statistics "
            "outside secure aggregation; use --norm=group",
        ),
        (
            "batch_norm_on_one_worker",
            "fedavg",
            dict(norm="batch", distributed=True),
            "--norm=batch recomputes the BatchNorm statistics in a second pass over each "
            "round's clients, which TFF cannot split over workers; drop "
            "--workers/--local_workers or use --norm=group",
        ),
        (
            "fedper_refuses_batch_norm",
            "fedper",
            dict(norm="batch"),
            "--algorithm=fedper needs --norm=group or none, got --norm=batch",
        ),
        (
            "fedrep_refuses_dp",
            "fedrep",
            dict(aggregator="dp"),
            "--aggregator=dp does not work with --algorithm=fedrep (see "
            "tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant",
        ),
        (
            "ditto_refuses_secure",
            "ditto",
            dict(aggregator="secure"),
            "--aggregator=secure does not work with --algorithm=ditto (see "
            "tff_vision/algorithms/__init__.py); use fedavg, fedprox or a FedOpt variant",
        ),
        (
            "ditto_trains_with_sgd",
            "ditto",
            dict(client_optimizer="adam"),
            "--algorithm=ditto trains clients with sgd; got --client_optimizer=adam",
        ),
        (
            "fedper_has_no_schedule",
            "fedper",
            dict(client_lr_schedule="cosine"),
            "--algorithm=fedper has no client learning-rate schedule; "
            "pass --client_lr_schedule=constant",
        ),
        (
            "ditto_on_one_worker",
            "ditto",
            dict(distributed=True),
            "--algorithm=ditto keeps per-client state on the server and runs on one TFF "
            "worker; drop --workers/--local_workers",
        ),
        (
            "scaffold_on_one_worker",
            "scaffold",
            dict(distributed=True),
            "--algorithm=scaffold keeps per-client state on the server and runs on one TFF "
            "worker; drop --workers/--local_workers",
        ),
    )
    def test_refuses_with_the_fix(self, algorithm, changes, message):
        with self.assertRaises(ValueError) as raised:
            check_combination(algorithm, **dict(_FINE, **changes))
        self.assertEqual(str(raised.exception), message)

    def test_accepts_what_works(self):
        for name in ALGORITHMS:
            norm = "batch" if name == "fedbn" else "group"
            check_combination(name, **dict(_FINE, norm=norm))
        check_combination("fedprox", **dict(_FINE, aggregator="dp", distributed=True))
        check_combination("fednova", **dict(_FINE, aggregator="secure", client_momentum=0.9))
        # Only the model update goes through these; the extra fields take a plain mean.
        for name in ("fedavg", "fednova", "fedbn"):
            for aggregator in ("robust", "compression"):
                check_combination(name, **dict(_FINE, norm="batch", aggregator=aggregator))
        check_combination(
            "fedavg", **dict(_FINE, client_optimizer="adam", client_lr_schedule="cosine")
        )
        # The personalized ones: any aggregator that sees only the model update, no BatchNorm;
        # FedPer and FedRep with any client optimizer, Ditto with SGD and momentum.
        for name in ("fedper", "fedrep", "ditto"):
            for norm in ("group", "none"):
                for aggregator in ("mean", "robust", "compression"):
                    check_combination(name, **dict(_FINE, norm=norm, aggregator=aggregator))
        for name in ("fedper", "fedrep"):
            check_combination(name, **dict(_FINE, client_optimizer="adam", client_momentum=0.9))
        check_combination("ditto", **dict(_FINE, client_momentum=0.9))
        with self.assertRaisesRegex(ValueError, "unknown --algorithm 'fedsgd'"):
            check_combination("fedsgd", **_FINE)

    def test_registry_entries(self):
        self.assertEqual(ALGORITHMS, tuple(ALGORITHM_INFO))
        indexed = {name for name, spec in ALGORITHM_INFO.items() if spec.indexed_clients}
        self.assertEqual(indexed, {"scaffold", "fedbn", "fedper", "fedrep", "ditto"})
        for spec in ALGORITHM_INFO.values():
            self.assertTrue(spec.description)


class BuildProcessRefusesTest(parameterized.TestCase):
    def _build(self, name, model_fn=lambda: None, **kwargs):
        kwargs.setdefault("client_optimizer", build_optimizer("sgd", 0.1))
        return build_process(name, model_fn, **kwargs)

    def test_unknown_name(self):
        with self.assertRaisesRegex(ValueError, "Unknown algorithm 'fedsgd'"):
            self._build("fedsgd")

    def test_settings_the_algorithm_cannot_take(self):
        dp = aggregators.build_aggregator("dp", clients_per_round=3)
        secure = aggregators.build_aggregator("secure")
        schedule = learning_rate_schedule("cosine", 0.1, 10)
        bn_model_fn = fl_testing.small_model_fn(norm=True)
        cases = [
            ("fednova", dict(client_learning_rate_fn=schedule), "takes no client learning-rate"),
            ("scaffold", dict(model_aggregator=dp), "cannot take an unweighted"),
            ("fednova", dict(model_aggregator=dp), "cannot take an unweighted"),
            ("fedbn", dict(model_aggregator=secure), "secure sum hides nothing"),
            ("fedprox", dict(proximal_strength=0.0), "needs proximal_strength > 0"),
            ("scaffold", dict(num_clients=3), "needs client_learning_rate"),
            ("fedbn", dict(), "needs num_clients"),
            ("fedrep", dict(model_aggregator=dp), "cannot take an unweighted"),
            ("ditto", dict(model_aggregator=secure), "secure sum hides nothing"),
            ("fedper", dict(client_learning_rate_fn=schedule), "takes no client learning-rate"),
            ("ditto", dict(num_clients=3), "needs client_learning_rate"),
            (
                "fedper",
                dict(model_fn=bn_model_fn, num_clients=3),
                "does not take a BatchNorm model",
            ),
            ("fedavg", dict(model_aggregator=dp, model_fn=bn_model_fn), "outside DP or secure"),
            (
                "fednova",
                dict(model_aggregator=secure, model_fn=bn_model_fn, client_learning_rate=0.1),
                "outside DP or secure",
            ),
        ]
        for name, kwargs, message in cases:
            with self.subTest(name=name, message=message):
                with self.assertRaisesRegex(ValueError, message):
                    self._build(name, **kwargs)


if __name__ == "__main__":
    absltest.main()
