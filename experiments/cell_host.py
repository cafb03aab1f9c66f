"""A sweep's resident cell host: runs `experiments.run` cells one after another in this process.

Started by `experiments.sweep --cell_processes=resident` (see
`tff_vision.sweep.hosts` for the pipe it reads cells from and replies on), not
by hand. Each cell is the flag list of one `python -m experiments.run`, parsed
anew from the flags' defaults and run through `run.run_parsed`, the very code
path of that command, with its output appended to the cell's log. Between
cells nothing of one reaches the next: TFF's workers and context are gone
(`runtime.shutdown`, so every cell starts a fresh worker), the Keras session
is cleared and the precision policy reset. What is kept is each built
federated process (`process_cache`): its computations depend only on the
settings in its cache key, never on a cell's seed, partition or directory.

Settings that stay with a process once applied (op determinism, mixed
precision; devices and TF's threads come from the host's environment) must
be those of the host's first cell: a cell with others is refused, and the
launcher runs it in a new host.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import cli
from experiments import run as run_lib  # Defines the experiments.run flags, parsed per cell.
from tff_vision import memory, process_cache, runtime
from tff_vision.sweep import hosts

# Distinct builds kept: a sweep has one per algorithm and model.
_CACHED_PROCESSES = 8
# Flags whose setting a process keeps once applied (see the module docstring).
_PROCESS_WIDE = ("op_determinism", "mixed_precision")

FLAGS = flags.FLAGS


class CellRunner:
    """Runs a cell's flags as `experiments.run` would; keeps the host's process-wide settings."""

    def __init__(self, program: str):
        self.program = program
        self.settings: dict[str, object] | None = None

    def __call__(self, argv: list[str]) -> int:
        FLAGS.unparse_flags()  # Every flag back to its default: nothing of the last cell stays.
        cli.parse_flags([self.program, *argv])  # Bad flags: one line, SystemExit(2).
        settings = {name: FLAGS[name].value for name in _PROCESS_WIDE}
        if self.settings is None:
            self.settings = settings
        elif settings != self.settings:
            changed = ", ".join(
                f"--{k}={settings[k]}" for k in settings if settings[k] != self.settings[k]
            )
            raise hosts.Refused(f"{changed} differs from this host's first cell")
        try:
            return run_lib.run_parsed([self.program])
        finally:
            reset()


def reset() -> None:
    """Leaves nothing of a cell for the next: workers, TFF context, Keras session, precision."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Loaded by the run already.

    runtime.shutdown()
    tf.keras.backend.clear_session()
    tf.keras.mixed_precision.set_global_policy("float32")  # What a fresh process starts with.
    _reset_retracing_counts()
    memory.release_free_memory()


def _reset_retracing_counts() -> None:
    """Forgets TF's per-function retracing counts, so no cell's log warns of earlier cells' traces.

    Every cell builds its own Keras models, whose predict functions share one
    code object; TF counts their traces together and warns of "excessive
    retracing" from the third cell on. Private TF state: skipped if absent.
    """
    try:
        # pylint: disable=g-import-not-at-top
        from tensorflow.python.eager.polymorphic_function import polymorphic_function as pf

        pf._frequent_tracing_detector_manager = pf._FrequentTracingDetectorManager()
    except (ImportError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; a cell host takes its cells on stdin")
    process_cache.enable(_CACHED_PROCESSES)
    return hosts.serve(CellRunner(argv[0]))


def entry_point() -> None:
    app.run(main, argv=[sys.argv[0]], flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry_point()
