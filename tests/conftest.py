"""pytest glue: absl flags parsed, quiet TF, terminal-like Ctrl-C, no leftover workers, tiers.

`pytest -m "not slow"` is the iteration tier: it leaves out the modules that run
whole experiments (runner subprocesses, notebooks, multi-round runs of every
algorithm), which take most of the suite's time.
"""

import os
import signal

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Ctrl-C tests need SIGINT to behave as in a terminal. A shell that starts pytest in the
# background (`make test &`, CI wrappers) leaves SIGINT ignored, and an ignored signal stays
# ignored in every child, so runners would never see the KeyboardInterrupt under test.
# Handling it here makes children start with the default again (handlers reset at exec).
signal.signal(signal.SIGINT, signal.default_int_handler)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    from tff_vision import runtime

    runtime.shutdown()


# Modules whose tests run whole experiments: marked `slow` (see the module docstring).
_SLOW_MODULES = frozenset(
    {
        "algorithms_learn_test",
        "algorithms_run_test",
        "cell_host_test",
        "multiworker_test",
        "notebooks_test",
        "output_lock_test",
        "resume_test",
        "run_test",
        "sweep_cli_test",
        "sweep_ray_test",
    }
)


def pytest_collection_modifyitems(config, items):
    del config
    slow = pytest.mark.slow
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in _SLOW_MODULES:
            item.add_marker(slow)
