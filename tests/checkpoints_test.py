"""Tests of the trainer's round checkpoints (`tff_vision.checkpoints.NpzStateManager`)."""

import asyncio
import collections
import pathlib
import tempfile

import attrs
import numpy as np
import tensorflow_federated as tff
from absl.testing import absltest

from tff_vision import checkpoints


@attrs.define
class _State:
    weights: list
    counters: collections.OrderedDict
    step: object


def _state(seed: int) -> _State:
    rng = np.random.default_rng(seed)
    return _State(
        weights=[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,))],
        counters=collections.OrderedDict(b=np.int64(seed), a=np.arange(3, dtype=np.int32)),
        step=2.5,  # A Python float: saved with the dtype TF gives it (float32).
    )


def _run(coroutine):
    return asyncio.run(coroutine)


class NpzStateManagerTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.root = pathlib.Path(self.create_tempdir().full_path)
        self.manager = checkpoints.NpzStateManager(self.root, keep_total=2)

    def test_loads_the_arrays_saved_bit_for_bit_in_the_given_structure(self):
        state = _state(1)
        _run(self.manager.save(state, 1))
        loaded = _run(self.manager.load(1, _state(0)))
        self.assertIsInstance(loaded, _State)
        self.assertEqual(list(loaded.counters), ["b", "a"])
        for got, want in zip(loaded.weights, state.weights):
            self.assertEqual(got.dtype, want.dtype)
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(loaded.counters["a"], state.counters["a"])
        self.assertEqual(loaded.counters["b"], 1)
        self.assertEqual(loaded.step.dtype, np.float32)
        self.assertEqual(float(loaded.step), 2.5)

    def test_keeps_the_newest_versions_and_ignores_unfinished_writes(self):
        for version in (1, 2, 3):
            _run(self.manager.save(_state(version), version))
        (self.root / ".round_4.npz.tmp123").write_bytes(b"half a file")
        self.assertEqual(_run(self.manager.get_versions()), [2, 3])
        self.assertEqual(
            sorted(p.name for p in self.root.glob("round_*")), ["round_2.npz", "round_3.npz"]
        )
        loaded = _run(self.manager.load(3, _state(0)))
        np.testing.assert_array_equal(loaded.weights[0], _state(3).weights[0])

    def test_no_versions_is_none_and_a_missing_one_is_not_found(self):
        self.assertIsNone(_run(self.manager.get_versions()))
        with self.assertRaises(tff.program.ProgramStateNotFoundError):
            _run(self.manager.load(1, _state(0)))

    def test_refuses_to_overwrite_a_version(self):
        _run(self.manager.save(_state(1), 1))
        with self.assertRaises(tff.program.ProgramStateExistsError):
            _run(self.manager.save(_state(2), 1))

    def test_a_state_of_another_structure_is_refused_with_the_fix(self):
        _run(self.manager.save(_state(1), 1))
        with self.assertRaisesRegex(ValueError, "holds 5 tensors but the process state has 2"):
            _run(self.manager.load(1, [np.zeros(1), np.zeros(1)]))

    def test_reads_the_savedmodel_checkpoints_of_older_runs(self):
        def plain(seed):  # A structure TFF's SavedModel writer can encode.
            state = _state(seed)
            return collections.OrderedDict(weights=state.weights, counters=state.counters)

        legacy = tff.program.FileProgramStateManager(self.root, prefix="round_")
        _run(legacy.save(plain(4), 3))
        self.assertEqual(_run(self.manager.get_versions()), [3])
        loaded = _run(self.manager.load(3, plain(0)))
        np.testing.assert_array_equal(loaded["weights"][1], plain(4)["weights"][1])
        _run(self.manager.save(plain(5), 4))
        _run(self.manager.save(plain(6), 5))
        self.assertEqual(_run(self.manager.get_versions()), [4, 5])  # The old directory is gone.

    def test_keep_total_zero_keeps_every_version(self):
        manager = checkpoints.NpzStateManager(tempfile.mkdtemp(dir=self.root), keep_total=0)
        for version in (1, 2, 3):
            _run(manager.save(_state(version), version))
        self.assertEqual(_run(manager.get_versions()), [1, 2, 3])


if __name__ == "__main__":
    absltest.main()
