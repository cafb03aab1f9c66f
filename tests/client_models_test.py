"""Algorithms with a model per client (FedBN) are scored on each client's own model.

A FedBN run of `training.FederatedTrainer` on real RetinaMNIST (three
hospitals lacking grades 1, 2 and 3, a tiny BatchNorm CNN, 2 rounds) must
report, for every evaluated round, each client's own model (the shared
weights with that client's BatchNorm) on the whole test set and on the test
examples of the client's classes, and as headline metrics their mean; never
the server's model with averaged BatchNorm, which no client uses. The
expected numbers are recomputed here from the final state with sklearn.
"""

import pathlib
import shutil
import tempfile

import fl_testing
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn import metrics as sk_metrics

from tff_vision import algorithms, client_data, data, evaluation, selection, training
from tff_vision.algorithms import fedbn, keras_model

_ROUNDS = 2


def _bn_model(seed=0):
    return fl_testing.tiny_model(seed, batch_norm=True)


def _scores(model, split, classes):
    """(accuracy, macro AUC) of `model` on `split`, restricted to `classes` if given."""
    probs = tf.nn.softmax(model.predict(split.images.astype(np.float32) / 255.0, verbose=0))
    probs, labels = probs.numpy(), split.labels.reshape(-1)
    if classes is not None:
        mask = np.isin(labels, classes)
        probs, labels = probs[mask], labels[mask]
    accuracy = np.mean(probs.argmax(-1) == labels)
    auc = np.mean([sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in np.unique(labels)])
    return accuracy, auc


class ClientModelsTest(fl_testing.LocalContextTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        fed = fl_testing.retina_federated(0)
        cls.classes = fed.partition.client_classes
        cls.rounds = rounds = client_data.RoundData(fed, None, batch_size=8, indexed=True)
        dataset = data.load("retinamnist", 28, fl_testing.SHARED_MEDMNIST, allow_download=False)
        cls.held_out = selection.HeldOut(dataset.test, dataset.val, 5, cls.classes)
        cls.process = algorithms.build_process(
            "fedbn",
            keras_model.model_fn(_bn_model, rounds.element_spec, skip_random_init=True),
            client_optimizer=algorithms.build_optimizer("sgd", 0.1),
            client_learning_rate=0.1,
            num_clients=3,
        )
        cls.out = pathlib.Path(tempfile.mkdtemp())
        cls.addClassCleanup(shutil.rmtree, cls.out)
        eval_model = _bn_model()
        cls.outcome = training.FederatedTrainer(
            cls.process,
            rounds,
            rounds=_ROUNDS,
            eval_model=eval_model,
            evaluate=cls.held_out.evaluate_test,
            output_dir=cls.out,
            initial_weights=keras_model.initial_weights(eval_model),
            selection=selection.Selection("final", cls.held_out, cls.out / "selected.npz"),
        ).run()

    def _own_model(self, client):
        model = _bn_model()
        fedbn.client_model_weights(self.process, self.outcome.state, client).assign_weights_to(
            model
        )
        return model

    def test_metrics_are_the_clients_own_models(self):
        result = self.outcome.final_eval
        self.assertIsInstance(result, evaluation.ClientModelsResult)
        whole, own_classes = [], []
        for client in range(3):
            model = self._own_model(client)
            whole.append(_scores(model, self.held_out.test, None))
            own_classes.append(_scores(model, self.held_out.test, self.classes[client]))
            key = str(client)
            self.assertAlmostEqual(result.clients[key].accuracy, whole[-1][0], places=9)
            self.assertAlmostEqual(result.clients[key].auc, whole[-1][1], places=5)
            self.assertAlmostEqual(
                result.per_client_subset_accuracy[key], own_classes[-1][0], places=9
            )
            self.assertAlmostEqual(result.per_client_subset_auc[key], own_classes[-1][1], places=5)
        self.assertAlmostEqual(result.accuracy, np.mean([a for a, _ in whole]), places=9)
        self.assertAlmostEqual(result.auc, np.mean([u for _, u in whole]), places=5)
        # The clients' models differ from each other, and from the server's averaged-BN model.
        self.assertLen({round(u, 6) for _, u in whole}, 3)
        server = _bn_model()
        self.process.get_model_weights(self.outcome.state).assign_weights_to(server)
        self.assertNotAlmostEqual(
            evaluation.evaluate(
                server, self.held_out.test.images, self.held_out.test.labels, 5
            ).auc,
            result.auc,
            places=4,
        )

    def test_summary_and_metrics_say_which_model(self):
        summary = self.outcome.summary
        self.assertEqual(summary["model"], evaluation.ClientModelsResult.MODEL)
        self.assertEqual(set(summary["per_client"]), {"0", "1", "2"})
        result = self.outcome.final_eval
        for key, entry in summary["per_client"].items():
            self.assertEqual(entry["test_accuracy"], result.clients[key].accuracy)
            self.assertEqual(entry["subset_auc"], result.per_client_subset_auc[key])
        # The interval is that of the mean over clients: it holds the reported mean.
        low, high = summary["ci95"]["test_accuracy"]
        self.assertLess(low, summary["test_accuracy"])
        self.assertGreater(high, summary["test_accuracy"])
        row = pd.read_csv(self.out / "metrics.csv").iloc[-1]
        self.assertEqual(row["round"], _ROUNDS)
        self.assertEqual(row["eval_accuracy"], result.accuracy)
        for key in ("0", "1", "2"):
            self.assertEqual(row[f"eval_client/{key}/accuracy"], result.clients[key].accuracy)
            self.assertEqual(row[f"eval_subset_auc/{key}"], result.per_client_subset_auc[key])

    def test_scoring_reads_the_global_weights_once_for_all_clients(self):
        # Each get_model_weights call sends the whole state through the executor.
        counting = fl_testing.CountingWeights(self.process)
        step = training.RoundStep(counting, self.rounds, None)
        state = self.outcome.state
        for _ in range(2):
            own = step.client_models(state)
            self.assertLen(own, 3)
            for client, weights in enumerate(own):
                fl_testing.assert_states_equal(
                    weights, fedbn.client_model_weights(self.process, state, client)
                )
        self.assertEqual(counting.calls, 1)  # The first state's check; the state is read after.

    def test_stored_logits_give_back_the_result(self):
        result = self.outcome.final_eval
        again = self.held_out.test_from_logits(result.logits)
        self.assertIsInstance(again, evaluation.ClientModelsResult)
        self.assertEqual(again.as_dict(), result.as_dict())


if __name__ == "__main__":
    from absl.testing import absltest

    absltest.main()
