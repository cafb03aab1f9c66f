"""pytest glue: absl flags parsed for absltest helpers, quiet TF, no leftover workers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    from tff_vision import runtime

    runtime.shutdown()
