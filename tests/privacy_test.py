"""Client-level privacy accounting against numbers derived here, not by dp_accounting.

References computed in this file, independently of the accountant under test:

* TF Privacy's published DP-SGD examples (tensorflow/privacy, tutorials/README.md,
  "Select Parameters": MNIST, N = 60000, batch 256, delta = 1e-5; eps 1.19, 3.01
  and 7.10), reproduced from the closed-form RDP of the Poisson-sampled Gaussian
  at integer orders (Mironov, Talwar and Zhang 2019, Sec. 3.3) with the basic
  RDP -> (eps, delta) conversion those numbers were made with.
* q = 1: R rounds of the Gaussian mechanism with noise multiplier z are one
  Gaussian mechanism with mu = sqrt(R) / z, whose exact (eps, delta) curve is
  delta = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu) (Balle and Wang 2018,
  Thm. 8), and whose RDP is R alpha / (2 z^2).
"""

import math

import numpy as np
from absl.testing import absltest, parameterized
from scipy import optimize, special, stats

from tff_vision import privacy

_ORDERS = np.arange(2, 257)


def _sampled_gaussian_rdp(q, z, alpha):
    """RDP at integer order alpha of the Poisson-sampled Gaussian (sum over binomial terms)."""
    k = np.arange(alpha + 1)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
    terms = log_binom + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * z * z)
    return special.logsumexp(terms) / (alpha - 1)


def _basic_conversion(rdp, orders, delta):
    """eps = min over orders of rdp + log(1/delta) / (alpha - 1) (Mironov 2017, Prop. 3)."""
    return float(np.min(rdp + math.log(1 / delta) / (orders - 1)))


def _improved_conversion(rdp, orders, delta):
    """eps = min of rdp + log(1 - 1/alpha) - log(delta alpha) / (alpha - 1) (Canonne+ 2020)."""
    return float(np.min(rdp + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)))


def _exact_gaussian_epsilon(mu, delta):
    """The exact eps at `delta` of the Gaussian mechanism with sensitivity / stddev = mu."""

    def excess(eps):
        tail = stats.norm.cdf(mu / 2 - eps / mu)
        return tail - math.exp(eps + stats.norm.logcdf(-mu / 2 - eps / mu)) - delta

    return optimize.brentq(excess, 0.0, 1000.0, xtol=1e-12)


class PublishedExampleTest(parameterized.TestCase):
    @parameterized.parameters((1.3, 15, 1.19), (1.1, 60, 3.01), (0.7, 45, 7.10))
    def test_tf_privacy_mnist_examples(self, z, epochs, published):
        q, steps, delta = 256 / 60000, math.ceil(epochs * 60000 / 256), 1e-5
        rdp = steps * np.array([_sampled_gaussian_rdp(q, z, a) for a in _ORDERS])
        # The reference reproduces the published number (up to its rounding and orders) ...
        self.assertAlmostEqual(_basic_conversion(rdp, _ORDERS, delta), published, delta=0.025)
        # ... and the accountant agrees with it under the tighter conversion it uses, which
        # can only lower epsilon (it also tries fractional orders: at most 2% lower).
        reference = _improved_conversion(rdp, _ORDERS, delta)
        got = privacy.compute_epsilon(z, q, steps, delta, "rdp")
        self.assertBetween(got, 0.98 * reference, reference + 1e-9)
        self.assertLess(got, published)
        # PLD is tighter than RDP, never looser.
        tight = privacy.compute_epsilon(z, q, steps, delta, "pld")
        self.assertBetween(tight, 0.8 * got, got)


class FullParticipationTest(parameterized.TestCase):
    @parameterized.parameters((1.0, 10, 1e-5), (2.0, 50, 3**-1.1), (0.8, 3, 1e-3), (5.0, 100, 1e-6))
    def test_equals_the_composed_gaussian_mechanism(self, z, rounds, delta):
        q = privacy.sampling_rate(0, 7)
        self.assertEqual(q, 1.0)
        exact = _exact_gaussian_epsilon(math.sqrt(rounds) / z, delta)
        self.assertAlmostEqual(
            privacy.compute_epsilon(z, q, rounds, delta, "pld") / exact, 1.0, delta=1e-3
        )
        alphas = np.linspace(1.02, 512, 200_000)
        rdp_bound = _improved_conversion(rounds * alphas / (2 * z * z), alphas, delta)
        got = privacy.compute_epsilon(z, q, rounds, delta, "rdp")
        self.assertAlmostEqual(got / rdp_bound, 1.0, delta=0.01)
        self.assertGreaterEqual(got, exact)  # An upper bound on the exact epsilon.


class PropertiesTest(parameterized.TestCase):
    @parameterized.parameters("rdp", "pld")
    def test_monotone_in_rounds_noise_and_sampling_rate(self, accountant):
        def eps(z=2.0, q=0.2, rounds=10):
            return privacy.compute_epsilon(z, q, rounds, 1e-5, accountant)

        by_rounds = [eps(rounds=r) for r in (1, 3, 10, 30)]
        by_noise = [eps(z=z) for z in (4.0, 3.0, 2.0, 1.5)]
        by_rate = [eps(q=q) for q in (0.01, 0.1, 0.5, 1.0)]
        for values in (by_rounds, by_noise, by_rate):
            self.assertTrue(all(a < b for a, b in zip(values, values[1:])), values)

    def test_no_noise_is_infinite_and_no_rounds_is_zero(self):
        self.assertEqual(privacy.compute_epsilon(0.0, 0.5, 3, 1e-5), math.inf)
        self.assertEqual(privacy.compute_epsilon(1.0, 0.5, 0, 1e-5), 0.0)
        accounting = privacy.PrivacyAccounting(0.0, num_clients=500, clients_per_round=50)
        self.assertEqual(accounting.report(3)["epsilon"], math.inf)

    def test_default_delta_is_client_level(self):
        self.assertAlmostEqual(privacy.default_delta(3), 3**-1.1)
        self.assertAlmostEqual(privacy.default_delta(1000), 1000**-1.1)
        self.assertLess(privacy.default_delta(1000), 1 / 1000)
        default = privacy.PrivacyAccounting(1.0, num_clients=3)
        self.assertAlmostEqual(default.delta, 3**-1.1)
        self.assertIn("McMahan", default.report(1)["delta_choice"])
        given = privacy.PrivacyAccounting(1.0, num_clients=3, delta=1e-4)
        self.assertEqual((given.delta, given.report(1)["delta_choice"]), (1e-4, "--dp_delta"))

    def test_bad_settings(self):
        self.assertEqual(privacy.sampling_rate(10, 10), 1.0)
        self.assertEqual(privacy.sampling_rate(3, 10), 0.3)
        for bad in (dict(delta=1.0), dict(accountant="moments"), dict(num_clients=0)):
            with self.subTest(bad), self.assertRaises(ValueError):
                privacy.PrivacyAccounting(**{"noise_multiplier": 1.0, "num_clients": 4, **bad})
        with self.assertRaises(ValueError):
            privacy.compute_epsilon(-1.0, 0.5, 3, 1e-5)
        with self.assertRaises(ValueError):
            privacy.compute_epsilon(1.0, 0.5, 3, 0.0)


class ReportTest(absltest.TestCase):
    def test_few_sampled_clients(self):
        accounting = privacy.PrivacyAccounting(0.8, num_clients=3, clients_per_round=2)
        report = accounting.report(2)
        self.assertEqual(report["unit"], "client")
        self.assertEqual(report["epsilon"], accounting.epsilon(2))
        self.assertEqual(report["sampling_rate"], 2 / 3)
        self.assertEqual(
            report["sampling"],
            "fixed-size without replacement (2 of 3 clients per round), "
            "accounted as Poisson with q = k/n = 0.6667",
        )
        self.assertIs(report["training_metrics_released_without_noise"], True)
        self.assertIn("only 3 clients", report["warning"])
        self.assertIn("near meaningless", report["warning"])
        line = accounting.describe(2, "1.0")
        self.assertIn("unit: client", line)
        self.assertIn("without noise", line)
        self.assertIn("warning: only 3 clients", line)

    def test_many_clients_with_full_participation(self):
        report = privacy.PrivacyAccounting(1.0, num_clients=1000).report(5)
        self.assertEqual(report["sampling_rate"], 1.0)
        self.assertStartsWith(report["sampling"], "full participation")
        self.assertNotIn("warning", report)
        self.assertAlmostEqual(report["delta"], 1000**-1.1)


if __name__ == "__main__":
    absltest.main()
