"""Privacy accounting of DP-FedAvg runs against dp_accounting used directly."""

import math

import dp_accounting
from absl.testing import absltest, parameterized
from dp_accounting import pld, rdp

from tff_vision import privacy


def _independent_epsilon(q, z, rounds, delta, accountant):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    return acc.compose(event).get_epsilon(delta)


class PrivacyTest(parameterized.TestCase):
    @parameterized.parameters(
        (0.1, 1.1, 50, 1e-5, "rdp"),
        (0.3, 0.8, 10, 1 / 1080, "rdp"),
        (1.0, 2.0, 20, 1e-5, "rdp"),
        (0.1, 1.1, 50, 1e-5, "pld"),
    )
    def test_epsilon_equals_dp_accounting(self, q, z, rounds, delta, accountant):
        got = privacy.compute_epsilon(z, q, rounds, delta, accountant)
        self.assertAlmostEqual(got, _independent_epsilon(q, z, rounds, delta, accountant), 9)
        self.assertTrue(0 < got < 1000)

    def test_known_value(self):
        # Abadi et al.-style setting, pinned so that an accountant change is noticed.
        self.assertAlmostEqual(privacy.compute_epsilon(1.0, 0.1, 100, 1e-5), 7.8993, places=3)

    def test_epsilon_grows_with_rounds_and_falls_with_noise(self):
        by_rounds = [privacy.compute_epsilon(1.0, 0.2, r, 1e-5) for r in (1, 5, 20, 100)]
        self.assertEqual(by_rounds, sorted(by_rounds))
        self.assertLen(set(by_rounds), 4)
        by_noise = [privacy.compute_epsilon(z, 0.2, 20, 1e-5) for z in (0.5, 1.0, 2.0, 4.0)]
        self.assertEqual(by_noise, sorted(by_noise, reverse=True))
        self.assertLen(set(by_noise), 4)
        # Sampling fewer clients amplifies privacy.
        self.assertLess(
            privacy.compute_epsilon(1.0, 0.1, 20, 1e-5), privacy.compute_epsilon(1.0, 1.0, 20, 1e-5)
        )

    def test_edge_cases(self):
        self.assertEqual(privacy.compute_epsilon(0.0, 0.5, 3, 1e-5), math.inf)
        self.assertEqual(privacy.compute_epsilon(1.0, 0.5, 0, 1e-5), 0.0)
        self.assertEqual(privacy.sampling_rate(0, 10), 1.0)
        self.assertEqual(privacy.sampling_rate(10, 10), 1.0)
        self.assertEqual(privacy.sampling_rate(3, 10), 0.3)
        self.assertEqual(privacy.default_delta(1080), 1 / 1080)
        for bad in (dict(delta=0.0), dict(delta=1.0), dict(accountant="moments")):
            kwargs = dict(noise_multiplier=1.0, sampling_rate=0.5, delta=1e-5)
            kwargs.update(bad)
            with self.assertRaises(ValueError):
                privacy.PrivacyAccounting(**kwargs)
        with self.assertRaises(ValueError):
            privacy.compute_epsilon(-1.0, 0.5, 3, 1e-5)

    def test_report(self):
        accounting = privacy.PrivacyAccounting(1.2, 0.5, 1e-4)
        report = accounting.report(7)
        self.assertEqual(
            sorted(report),
            ["accountant", "delta", "epsilon", "noise_multiplier", "rounds", "sampling_rate"],
        )
        self.assertEqual(report["epsilon"], _independent_epsilon(0.5, 1.2, 7, 1e-4, "rdp"))
        self.assertEqual(
            (report["rounds"], report["noise_multiplier"], report["sampling_rate"]), (7, 1.2, 0.5)
        )


if __name__ == "__main__":
    absltest.main()
