"""Child processes that die with their parent.

`die_with_parent()` gives a `preexec_fn` for `subprocess.Popen`: Linux's
`PR_SET_PDEATHSIG` kills the child with SIGKILL when its parent dies, even by
SIGKILL, so no worker or sweep cell outlives the process that started it.
libc is loaded here, in the parent: between fork and exec the child only
calls into it (loading a library after fork in a threaded process can hang).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent(*, own_process_group: bool = False) -> Callable[[], None] | None:
    """A `preexec_fn` that ties the child's life to this process; None where Linux's libc is absent.

    Args:
        own_process_group: Also start a process group of the child's own, so
            that a Ctrl-C in the terminal reaches only the parent, which then
            stops the child itself, in order.
    """
    libc = _libc()
    if libc is None and not own_process_group:
        return None

    def preexec() -> None:  # Runs in the child between fork and exec.
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if own_process_group:
            os.setpgid(0, 0)

    return preexec
