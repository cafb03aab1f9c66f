"""Every --algorithm learns on real data: RetinaMNIST, the #2 label-exclusion partition.

Each case is one short experiment (small CNN, a few rounds) run in-process
through `experiment.setup` / `experiment.run_setup`, exactly as the runner
runs it, and must clearly beat chance on the test set: macro AUC well above
0.5, and accuracy no worse than always predicting the commonest training class
(after a few rounds a small CNN may still predict mostly that class).
The exact update rules are checked elsewhere (fedavg_test.py, scaffold_test.py, ...);
this shows that each algorithm, wired into the runner, trains a real model.
"""

import fl_testing
import numpy as np
import run_testing
from absl.testing import absltest, parameterized

from tff_vision import config as config_lib
from tff_vision import data as data_lib
from tff_vision import experiment

_ROUNDS = 6
_COMMON = dict(fl_testing.RETINA_LABEL_EXCLUSION, rounds=_ROUNDS, eval_every=_ROUNDS)
_ADAM = dict(client_optimizer="adam", client_lr=3e-3, client_lr_schedule="constant")
# SCAFFOLD, FedNova and FedBN train clients with plain SGD at a constant rate.
_SGD = dict(client_optimizer="sgd", client_lr=0.05, client_lr_schedule="constant")

ALGORITHM_SETTINGS = {
    "fedavg": _ADAM,
    "fedprox": dict(_ADAM, proximal_strength=0.01),
    "fedavgm": dict(_ADAM, server_momentum=0.5),
    # Server Adam / Yogi over momentum-SGD clients (Reddi et al., 2021).
    "fedadam": dict(_SGD, client_momentum=0.9, server_lr=0.01),
    "fedyogi": dict(_SGD, client_momentum=0.9, server_lr=0.01),
    "fedadagrad": dict(_ADAM, server_lr=0.01),
    "scaffold": dict(_SGD, client_lr=0.1, client_momentum=0.0),
    "fednova": dict(_SGD, client_momentum=0.9),
    "fedbn": dict(_SGD, client_momentum=0.9, norm="batch"),
}


class AlgorithmsLearnTest(run_testing.RunnerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        data = data_lib.load(
            "retinamnist", 28, str(fl_testing.SHARED_MEDMNIST), allow_download=False
        )
        train_labels = data.train.labels.reshape(-1)
        test_labels = data.test.labels.reshape(-1)
        commonest = np.bincount(train_labels).argmax()
        cls.majority_accuracy = float(np.mean(test_labels == commonest))

    @parameterized.named_parameters((name, name) for name in ALGORITHM_SETTINGS)
    def test_beats_chance_on_retinamnist(self, algorithm):
        config = config_lib.config_from_dict(
            dict(
                _COMMON,
                **ALGORITHM_SETTINGS[algorithm],
                algorithm=algorithm,
                output_dir=str(self.tmp / algorithm),
            )
        )
        summary = experiment.run_setup(experiment.setup(config), printer=lambda _: None)
        fed = summary["federated"]
        self.assertEqual(fed["rounds"], _ROUNDS)
        self.assertEqual(summary["algorithm"]["name"], algorithm)
        self.assertGreater(fed["test_auc"], 0.6, msg=fed)  # Chance: 0.5.
        # A small CNN after a few rounds may still predict mostly the commonest class.
        self.assertGreaterEqual(fed["test_accuracy"], self.majority_accuracy, msg=fed)


if __name__ == "__main__":
    absltest.main()
