"""Runs one function in a fresh Python process and returns its result.

What a function leaves behind in the process that ran it stays out of the
caller's. Building a TFF learning process is such a function: TensorFlow keeps
the graphs of its tracing alive, held from its C++ side, for the life of the
process (~0.3 GB for ResNet-18), and glibc keeps the heap they grew. Built in
a fresh process, only the serialized computations come back
(`tff_vision.process_pickle`).

The child dies with the caller (`childproc.die_with_parent`), including when
the caller is killed; a KeyboardInterrupt in the caller (Ctrl-C, or SIGTERM
under `interrupts.signals_interrupt`) kills it too. Its output goes to a
temporary file, shown only if it fails.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import TypeVar

from tff_vision import childproc

T = TypeVar("T")

_TAIL_LINES = 20


class ChildFailed(RuntimeError):
    """The fresh process exited with an error; the message ends with its output's tail."""


def call(fn: Callable[[], T]) -> T:
    """`fn()`, computed in a fresh Python process with this one's environment.

    Args:
        fn: A picklable callable (a module-level function, or a
            `functools.partial` of one with picklable arguments).

    Raises:
        ChildFailed: If `fn` raised or the child died.
    """
    with tempfile.TemporaryDirectory(prefix="tffv-fresh-") as tmp:
        request, result, log = (pathlib.Path(tmp) / name for name in ("fn", "result", "log"))
        request.write_bytes(pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL))
        with open(log, "wb") as output:
            status = subprocess.run(
                [sys.executable, "-m", __name__, str(request), str(result)],
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=childproc.die_with_parent(),
                check=False,
            ).returncode
        if status != 0 or not result.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-_TAIL_LINES:]
            name = getattr(getattr(fn, "func", fn), "__qualname__", repr(fn))
            raise ChildFailed(
                f"{name} failed in a fresh process (exit status {status}):\n" + "\n".join(tail)
            )
        from tff_vision import process_pickle  # pylint: disable=g-import-not-at-top

        return process_pickle.loads(result.read_bytes())


def _child_env() -> dict[str, str]:
    """This environment, with this copy of tff_vision first on the child's import path."""
    root = str(pathlib.Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


def _main(request: str, result: str) -> None:
    from tff_vision import process_pickle  # pylint: disable=g-import-not-at-top

    fn = pickle.loads(pathlib.Path(request).read_bytes())
    pathlib.Path(result).write_bytes(process_pickle.dumps(fn()))


if __name__ == "__main__":
    _main(*sys.argv[1:])
