"""Ctrl-C that is never lost: a SIGINT flag that long loops check.

Python raises KeyboardInterrupt wherever the main thread happens to be, and
when that is inside a garbage-collector callback (JAX, which TFF imports,
registers one) or a `__del__`, Python prints "Exception ignored in ..." and
carries on. `install_interrupt_guard()` remembers every SIGINT, and long loops
call `raise_if_interrupted()`, so a swallowed Ctrl-C still stops the run at
the next round.
"""

from __future__ import annotations

import signal
import threading

# A SIGINT arrived (see `install_interrupt_guard`); its KeyboardInterrupt may have been swallowed.
_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)  # Raises KeyboardInterrupt.


def install_interrupt_guard() -> None:
    """Makes Ctrl-C (SIGINT) also set a flag that `raise_if_interrupted` checks.

    For programs that end on Ctrl-C (the runners). Only replaces Python's
    default SIGINT handler, and only from the main thread: a notebook's or a
    caller's own handler is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def raise_if_interrupted() -> None:
    """Raises KeyboardInterrupt once if a SIGINT arrived since the last such raise.

    Its own KeyboardInterrupt may have been swallowed (see the module docstring).
    """
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise KeyboardInterrupt("interrupted (SIGINT)")
