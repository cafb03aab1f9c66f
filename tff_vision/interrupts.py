"""Ctrl-C that is never lost: a SIGINT flag that long loops check.

Python raises KeyboardInterrupt wherever the main thread happens to be, and
when that is inside a garbage-collector callback (JAX, which TFF imports,
registers one) or a `__del__`, Python prints "Exception ignored in ..." and
carries on. `install_interrupt_guard()` remembers every SIGINT, and long loops
call `raise_if_interrupted()`, so a swallowed Ctrl-C still stops the run at
the next round. `signals_interrupt()` makes SIGTERM and SIGHUP (a batch
scheduler's preemption, a closed terminal) stop a run the same way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# A SIGINT arrived (see `install_interrupt_guard`); its KeyboardInterrupt may have been swallowed.
_interrupted = False
# The last signal that stopped the run (SIGINT unless `signals_interrupt` saw another).
_stop_signal = signal.SIGINT


def _on_sigint(signum, frame) -> None:
    global _interrupted, _stop_signal
    _interrupted, _stop_signal = True, signal.SIGINT
    signal.default_int_handler(signum, frame)  # Raises KeyboardInterrupt.


def _on_stop_signal(signum, frame) -> None:  # pylint: disable=unused-argument
    global _interrupted, _stop_signal
    _interrupted, _stop_signal = True, signal.Signals(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install_interrupt_guard() -> None:
    """Makes Ctrl-C (SIGINT) also set a flag that `raise_if_interrupted` checks.

    For programs that end on Ctrl-C (the runners). Only replaces Python's
    default SIGINT handler, and only from the main thread: a notebook's or a
    caller's own handler is left alone. A run calls it as it starts, so that
    `stop_signal` forgets the signal that stopped an earlier run of this process.
    """
    global _stop_signal
    _stop_signal = signal.SIGINT
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
        raise KeyboardInterrupt(f"interrupted ({_stop_signal.name})")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within it, SIGTERM and SIGHUP stop the main thread as Ctrl-C does (KeyboardInterrupt).

    A signal that is ignored stays ignored (SIGHUP under `nohup`). The handlers
    before it come back afterwards; off the main thread it does nothing. Within
    it, `stop_signal` starts again from SIGINT (a Ctrl-C that Python's own
    handler turns into KeyboardInterrupt names no signal). Where the span ends
    without an exception, a stop within it was handled there (or came after its
    work): `raise_if_interrupted` forgets it, so that a later run in this
    process (a notebook's next cell, the next test) does not stop for it.
    """
    global _stop_signal, _interrupted
    _stop_signal = signal.SIGINT
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, _on_stop_signal) for s in stops}
    try:
        yield
        _interrupted = False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_signal() -> signal.Signals:
    """The signal that stopped this run: SIGINT unless `signals_interrupt` saw another."""
    return _stop_signal
