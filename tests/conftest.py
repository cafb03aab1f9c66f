"""pytest glue: absl flags parsed, quiet TF, terminal-like Ctrl-C, no leftover workers."""

import os
import signal

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
