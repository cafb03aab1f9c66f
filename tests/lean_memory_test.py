"""Lean memory (--lean_memory) changes no number: processes built in a fresh process, lean workers.

Real RetinaMNIST and the small CNN. A process built in a fresh Python process
and pickled back must hold byte for byte the computations of one built here,
with the same type signatures; a run with lean memory must write the metrics
and summary of a run without it.
"""

import functools
import json
import os
from unittest import mock

import fl_testing
import numpy as np
import run_testing
import tensorflow_federated as tff
from absl.testing import absltest, parameterized

from experiments.benchmarking import measure
from tff_vision import config as config_lib
from tff_vision import experiment, federated_stage, fresh_process, memory, process_pickle, training
from tff_vision.algorithms import keras_model

_SGD = dict(client_optimizer="sgd", client_lr=0.05, client_lr_schedule="constant")
# The composed FedAvg, a process with client state, and two that keep parts per client.
_ALGORITHMS = {
    "fedavg": {},
    "scaffold": dict(_SGD, client_momentum=0.0),
    "fedbn": dict(_SGD, norm="batch"),
    "ditto": _SGD,
}
_COMPUTATIONS = ("initialize", "next", "get_model_weights", "set_model_weights")


def _build_args(algorithm: str, with_data: bool = False):
    config = config_lib.config_from_dict(
        dict(
            fl_testing.RETINA_LABEL_EXCLUSION,
            **_ALGORITHMS[algorithm],
            algorithm=algorithm,
            rounds=2,
            output_dir="/unused",
        )
    )
    setup = experiment.setup(config)
    parts = federated_stage.build_parts(config, setup.dataset, setup.partition, lambda _: None)
    args = config, parts.data.element_spec, experiment.model_builder(config, setup.dataset)
    return (args, parts.data) if with_data else args


def _computations(value) -> list:
    """`value` if a computation, else the computations among its attributes (a wrapper's)."""
    if isinstance(value, tff.framework.ConcreteComputation):
        return [value]
    return [v for v in vars(value).values() if isinstance(v, tff.framework.ConcreteComputation)]


def _proto(computation) -> bytes:
    return tff.framework.ConcreteComputation.get_proto(computation).SerializeToString()


class ProcessPickleTest(fl_testing.LocalContextTestCase):
    def assertSameProcess(self, built, loaded):
        self.assertIs(type(loaded), type(built))
        for name in _COMPUTATIONS:
            a, b = _computations(getattr(built, name)), _computations(getattr(loaded, name))
            self.assertNotEmpty(a, msg=name)
            self.assertEqual([_proto(c) for c in a], [_proto(c) for c in b], msg=name)
            for x, y in zip(a, b):
                self.assertEqual(x.type_signature, y.type_signature, msg=name)
                self.assertEqual(repr(x.type_signature), repr(y.type_signature), msg=name)

    @parameterized.named_parameters((name, name) for name in _ALGORITHMS)
    def test_round_trip_keeps_computations_and_types(self, algorithm):
        process, client_bytes = federated_stage.build_process(*_build_args(algorithm))
        loaded, loaded_bytes = process_pickle.loads(process_pickle.dumps((process, client_bytes)))
        self.assertSameProcess(process, loaded)
        self.assertEqual(loaded_bytes, client_bytes)
        if algorithm == "fedbn":
            self.assertEqual(loaded.num_clients, process.num_clients)

    def test_fresh_process_builds_a_process_with_the_same_rounds(self):
        # Graph names differ with what the building process traced before, so the protos
        # are compared by what they compute: a round from the same initial weights.
        args, data = _build_args("fedavg", with_data=True)
        here, _ = federated_stage.build_process(*args)
        there, _ = fresh_process.call(functools.partial(federated_stage._build_fresh, *args))
        weights = keras_model.initial_weights(args[2]())
        outputs = []
        for process in (here, there):
            step = training.RoundStep(process, data, weights)
            outputs.append(step.next(step.initial_state(), 1))
        fl_testing.assert_states_equal(outputs[0].state, outputs[1].state)
        self.assertEqual(repr(outputs[0].metrics), repr(outputs[1].metrics))
        for name in _COMPUTATIONS:
            self.assertEqual(
                getattr(here, name).type_signature, getattr(there, name).type_signature
            )

    def test_a_failing_child_names_its_error(self):
        with self.assertRaisesRegex(fresh_process.ChildFailed, "invalid literal for int"):
            fresh_process.call(functools.partial(int, "not a number"))


class ModelWeightsTest(fl_testing.RetinaTestCase):
    def test_weights_read_from_the_state_after_one_checked_call(self):
        process = fl_testing.tiny_fedavg(self.fed)
        counting = fl_testing.CountingWeights(process)
        step = training.RoundStep(counting, self.fed, process.get_model_weights(self.state0()))
        state = step.initial_state()
        first, second = step.model_weights(state), step.model_weights(state)
        self.assertEqual(counting.calls, 1)
        fl_testing.assert_states_equal(first, second)
        fl_testing.assert_states_equal(second, process.get_model_weights(state))

    def test_a_process_whose_weights_are_not_the_states_is_always_called(self):
        process = fl_testing.tiny_fedavg(self.fed)
        state = process.initialize()
        other = tff.learning.models.ModelWeights(
            trainable=[np.ones_like(w) for w in state.global_model_weights.trainable],
            non_trainable=list(state.global_model_weights.non_trainable),
        )
        calls = []

        class Shifted:
            def get_model_weights(self, s):
                calls.append(1)
                return other

        step = training.RoundStep(Shifted(), self.fed, other)
        for _ in range(2):
            fl_testing.assert_states_equal(step.model_weights(state), other)
        self.assertIsNone(step.client_models(state))  # Without a call: all share one model.
        self.assertLen(calls, 2)

    def state0(self):
        return fl_testing.tiny_fedavg(self.fed).initialize()


class LeanRunTest(run_testing.RunnerTestCase):
    def test_lean_and_fast_runs_write_the_same_results(self):
        results = {}
        for mode in ("on", "off"):
            out = self.tmp / mode
            config = config_lib.config_from_dict(
                dict(
                    fl_testing.RETINA_LABEL_EXCLUSION,
                    rounds=2,
                    lean_memory=mode,
                    output_dir=str(out),
                )
            )
            lines = []
            experiment.run_setup(experiment.setup(config), printer=lines.append)
            lean = [line for line in lines if line.startswith("lean memory:")]
            self.assertLen(lean, mode == "on")
            if lean:
                self.assertIn("a worker trains 1 client(s) at a time", lean[0])
            found = measure.run_results(out)
            results[mode] = json.dumps(found, sort_keys=True).replace(str(out), "OUT")
        self.assertEqual(results["on"], results["off"])


class MemoryModeTest(parameterized.TestCase):
    @parameterized.parameters(
        ("auto", "cnn", False),
        ("auto", "resnet18", True),
        ("auto", "mobilenetv2_small", True),
        ("on", "cnn", True),
        ("off", "resnet50", False),
    )
    def test_which_runs_are_lean(self, mode, model, lean):
        self.assertEqual(memory.is_lean(mode, model), lean)

    def test_unknown_mode_is_refused(self):
        with self.assertRaisesRegex(ValueError, "auto"):
            memory.is_lean("maybe", "cnn")

    def test_worker_env_leaves_the_callers_own_threshold(self):
        name = "MALLOC_MMAP_THRESHOLD_"
        with mock.patch.dict(os.environ):
            os.environ.pop(name, None)
            self.assertEqual(memory.worker_env(), {name: str(1 << 20)})
            os.environ[name] = "65536"
            self.assertEqual(memory.worker_env(), {})

    def test_allocator_variable_is_set_only_inside(self):
        name = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"
        self.assertNotIn(name, os.environ)
        with memory.system_tensor_allocator(True):
            self.assertEqual(os.environ[name], "true")
        self.assertNotIn(name, os.environ)
        with memory.system_tensor_allocator(False):
            self.assertNotIn(name, os.environ)


if __name__ == "__main__":
    absltest.main()
