"""TFF execution contexts over `worker_binary` processes this process owns, and their cleanup.

TFF's stock local context starts a worker that inherits the parent's
stdout/stderr and is stopped only by a `__del__` that often never runs, so the
worker outlives Python and a pipeline reading the parent's output hangs. The
contexts here run on `tff_vision.workers.LocalWorker`s instead (or on
executor services given by address) and promise that every worker this
process started stops on normal exit, exceptions, Ctrl-C, SIGTERM and SIGHUP
(`atexit`, signal handlers, `shutdown()`); SIGKILL is covered by the worker's
parent-death signal.

Contexts are built from TFF's public pieces (`RemoteExecutor` over a gRPC
stub, `ResourceManagingExecutorFactory`, the native compiler), as
`tff.backends.native.set_sync_local_cpp_execution_context` does, minus its
unmanaged process and with `tff_vision.serialization`'s faster serializer.
Several workers run TFF's mergeable-computation context: each call's
CLIENTS-placed argument is split into one contiguous slice per worker and the
partial aggregates are merged, which gives the single-worker result up to the
order of the client sums for every algorithm and aggregator of this package.

Between rounds everything that matters lives in Python, so
`restart_local_workers()` can replace our workers by fresh ones (with the same
settings) to bound the memory a long-running worker accumulates.

Security: a TFF 0.87 worker answers anyone who reaches its port, unauthenticated. Local
workers therefore serve in a network namespace of their own, reached through a Unix socket
only this user can open (`tff_vision.loopback`); where the OS refuses that, they listen on all
interfaces and a warning says so. Remote `--workers` are the user's to protect.
"""

import atexit
import contextlib
import functools
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from tff_vision import memory
from tff_vision import workers as workers_lib
from tff_vision.workers import LocalWorker, RuntimeSetupError, find_workers, worker_binary_path

# The workers' names that callers reach through the runtime, with the runtime's own.
__all__ = [
    "LocalWorker",
    "RuntimeSetupError",
    "find_workers",
    "local_context",
    "restart_local_workers",
    "restart_workers_after",
    "shutdown",
    "start_local_context",
    "start_local_multi_worker_context",
    "start_local_workers",
    "start_multi_worker_context",
    "worker_binary_path",
]

_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
]

_workers: list[LocalWorker] = []
# gRPC channels of the stubs we made: closed by `shutdown()`, which also ends the thread gRPC
# runs per channel to watch its connectivity (it holds the stub and would outlive a restart).
_channels: list = []
# Our TFF contexts: each runs an event loop in a thread that holds the loop's owner, so it is
# never collected (TFF 0.87); `shutdown()` stops those threads.
_contexts: list = []
_lock = threading.Lock()
_hooks_installed = False
# How to start the current context again with fresh workers (see `restart_local_workers`);
# None when there is no context of ours, or it has workers we did not start.
_restart = None


def _make_stub(target: str, worker: LocalWorker | None = None, timeout: float = 60.0):
    import grpc  # pylint: disable=g-import-not-at-top

    channel = grpc.insecure_channel(target, _GRPC_OPTIONS)
    with _lock:
        _channels.append(channel)
    stub = _disposal_tolerant_stub(channel)
    deadline = time.monotonic() + timeout
    while not stub.is_ready:
        if worker is not None and not worker.alive():
            status = worker.process.poll()
            what = "its network relay ended" if status is None else f"exited with status {status}"
            raise RuntimeSetupError(f"TFF worker on {target}: {what}")
        if time.monotonic() > deadline:
            raise RuntimeSetupError(
                f"no TFF executor service answered at {target} in {timeout:.0f}s"
            )
        time.sleep(0.1)
    return stub


def _disposal_tolerant_stub(channel):
    """TFF's gRPC stub, except that releasing a value over a closed channel does nothing.

    TFF releases a worker's value from a weakref finalizer whenever Python drops
    the value's handle. After `shutdown` closed the channel (at exit, on a stop
    signal), each such release fails with "Cannot invoke RPC on closed channel!",
    which Python prints as an "Exception ignored" traceback. The values end with
    the worker, so there is nothing left to release.
    """
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    class _Stub(tff.framework.RemoteExecutorGrpcStub):
        def dispose(self, request):
            try:
                return super().dispose(request)
            except ValueError:  # grpc's error for a closed channel.
                return None

    return _Stub(channel)


def _executor_factory(stub, default_num_clients: int = 0):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    from tff_vision import serialization  # pylint: disable=g-import-not-at-top

    # Arguments reach the worker through the faster, byte-identical serializer.
    serialization.install()

    def stack_fn(cardinalities):
        cardinalities = dict(cardinalities)
        if cardinalities.get(tff.CLIENTS) is None:
            cardinalities[tff.CLIENTS] = default_num_clients
        # Each value the worker holds is released as soon as Python drops it: TFF's default
        # batches 20 disposals, which keeps several rounds of model-sized values alive there.
        executor = tff.framework.RemoteExecutor(stub, dispose_batch_size=1)
        executor.set_cardinalities(cardinalities)
        return executor

    return tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)


def _native_context_args(stub, default_num_clients: int) -> dict:
    """Keyword arguments of TFF's sync or async execution context over one executor service."""
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    return dict(
        executor_fn=_executor_factory(stub, default_num_clients),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )


def _drop_stock_context() -> None:
    """Releases the context `import tensorflow_federated` installs, before teardown.

    TFF's import installs a local C++ context whose `ServiceManager.__del__`
    runs during interpreter teardown, after `subprocess` is gone, and prints
    an "Exception ignored ... 'NoneType' object has no attribute 'Popen'"
    traceback on every exit of a process that imported TFF. Replacing the
    default context from an `atexit` hook collects it while modules still
    work.
    """
    if "tensorflow_federated" not in sys.modules:
        return
    _set_no_default_context()


def _install_context(context) -> None:
    """Makes `context` TFF's default and registers it for `shutdown()`."""
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    with _lock:
        _contexts.append(context)
    tff.framework.set_default_context(context)


def _register_worker(worker: LocalWorker) -> None:
    _install_exit_hooks()
    with _lock:
        _workers.append(worker)


def _stop_event_loop(context) -> None:
    """Ends the event-loop thread of a TFF sync or mergeable context (see `_contexts`)."""
    runner = getattr(context, "_async_runner", None)
    loop, thread = getattr(runner, "_event_loop", None), getattr(runner, "_thread", None)
    if loop is None or thread is None or not thread.is_alive():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def _set_no_default_context() -> None:
    try:
        # pylint: disable=g-import-not-at-top
        from tensorflow_federated.python.core.impl.context_stack import set_default_context

        set_default_context.set_no_default_context()
    except Exception:  # pylint: disable=broad-except
        pass


atexit.register(_drop_stock_context)


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(shutdown)
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        shutdown()
        # Re-raise as the default action would, after cleanup.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, on_signal)


def start_local_context(
    max_concurrent_computation_calls: int = -1,
    log_path: os.PathLike | None = None,
    default_num_clients: int = 0,
    env: dict[str, str] | None = None,
) -> LocalWorker:
    """Starts a managed local worker and installs it as TFF's default context.

    Args:
      max_concurrent_computation_calls: passed to the worker; nonpositive means
        no limit.
      log_path: where the worker's output goes (default: discarded).
      default_num_clients: CLIENTS cardinality when it cannot be inferred.
      env: extra environment variables for the worker (e.g. TF thread settings).

    Returns:
      The `LocalWorker`; `shutdown()` (also run at exit) stops it.
    """
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    global _restart
    worker = LocalWorker(max_concurrent_computation_calls, log_path, env=env)
    _register_worker(worker)
    _restart = functools.partial(
        start_local_context, max_concurrent_computation_calls, log_path, default_num_clients, env
    )
    stub = _make_stub(worker.target, worker)
    _install_context(
        tff.framework.SyncExecutionContext(**_native_context_args(stub, default_num_clients))
    )
    return worker


def start_local_workers(
    n: int,
    host: str = "127.0.0.1",
    max_concurrent_computation_calls: int = -1,
    log_dir: os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> list[LocalWorker]:
    """Starts `n` managed `worker_binary` executor services that only this user can reach.

    Each is a `LocalWorker` (in a private network namespace where the OS
    allows it) registered for `shutdown()` and the exit hooks.
    This only starts them; pass `[w.target for w in workers]` to
    `start_multi_worker_context`.

    Args:
        n: number of workers, >= 1.
        host: loopback address to reach them by where they cannot have a
            network of their own ("127.0.0.1", "::1", "localhost"); anything
            else is refused.
        max_concurrent_computation_calls: passed to every worker.
        log_dir: if given, worker i writes its output to `log_dir/worker_i.log`.
        env: extra environment variables for the workers.

    Returns:
        The started workers.
    """
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    workers_lib.check_loopback(host)
    workers = []
    for i in range(n):
        log_path = pathlib.Path(log_dir) / f"worker_{i}.log" if log_dir else None
        worker = LocalWorker(max_concurrent_computation_calls, log_path, host=host, env=env)
        _register_worker(worker)
        workers.append(worker)
    return workers


def start_multi_worker_context(
    targets: Sequence[str],
    default_num_clients: int = 0,
    num_subrounds: int | None = None,
    workers: Sequence[LocalWorker] | None = None,
    timeout: float = 60.0,
):
    """Installs TFF's mergeable-computation context over several executor services.

    Every computation is compiled to `MergeableCompForm` (TFF's
    `compile_to_mergeable_comp_form`): its CLIENTS-placed arguments are split
    into `num_subrounds` contiguous slices (default: one per target), each
    slice runs up to the aggregation on one worker, the partial aggregates are
    merged, and the server-side remainder runs once. Computations with two
    dependent aggregation stages cannot be compiled this way and fail at call
    time with TFF's `ValueError`.

    Targets are gRPC targets: `host:port`, or a local worker's
    `unix:<socket>`. Local workers come from `start_local_workers`; a remote
    `worker_binary` (started by the user on another machine) is an explicit
    opt-in by listing its address here.
    WARNING: TFF's executor service speaks plain, unauthenticated,
    unencrypted gRPC: anyone who can reach a worker's port can run arbitrary
    TensorFlow on it and read the model and client data sent to it. Reach
    remote workers through an SSH tunnel (`localhost:<port>`), or only inside
    a trusted, private network.

    Args:
        targets: executor service addresses, e.g. `["localhost:9001", w.target]`.
        default_num_clients: CLIENTS cardinality when it cannot be inferred.
        num_subrounds: slices per call (default `len(targets)`); more than
            targets runs the extra slices one after another.
        workers: the `LocalWorker`s behind some targets, to report a worker
            that died while we wait for it (default: those this process
            started).
        timeout: seconds to wait for each service to answer.

    Returns:
        The installed `MergeableCompExecutionContext`.
    """
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    targets = list(targets)
    if not targets:
        raise ValueError("start_multi_worker_context needs at least one target")
    if workers is None:
        with _lock:
            workers = list(_workers)
    by_target = {w.target: w for w in workers}
    async_contexts = []
    for target in targets:
        stub = _make_stub(target, by_target.get(target), timeout)
        async_contexts.append(
            tff.framework.AsyncExecutionContext(**_native_context_args(stub, default_num_clients))
        )
    context = tff.backends.native.create_mergeable_comp_execution_context(
        async_contexts=async_contexts, num_subrounds=num_subrounds
    )
    _install_context(context)
    global _restart
    _restart = None  # Set by `start_local_multi_worker_context` when every worker is ours.
    return context


def start_local_multi_worker_context(
    n: int,
    max_concurrent_computation_calls: int = -1,
    log_dir: os.PathLike | None = None,
    default_num_clients: int = 0,
    env: dict[str, str] | None = None,
) -> list[LocalWorker]:
    """`start_local_workers(n)` plus `start_multi_worker_context` over them.

    Returns:
        The workers; `shutdown()` (also run at exit) stops them.
    """
    workers = start_local_workers(
        n,
        max_concurrent_computation_calls=max_concurrent_computation_calls,
        log_dir=log_dir,
        env=env,
    )
    start_multi_worker_context(
        [w.target for w in workers], default_num_clients=default_num_clients, workers=workers
    )
    global _restart
    _restart = functools.partial(
        start_local_multi_worker_context,
        n,
        max_concurrent_computation_calls,
        log_dir,
        default_num_clients,
        env,
    )
    return workers


def restart_local_workers() -> bool:
    """Replaces the workers of the current context by fresh ones with the same settings.

    Only for contexts made by `start_local_context` or
    `start_local_multi_worker_context` (remote workers are not ours to
    restart). Call it between computations: values held by the old workers
    are gone, and the first call after it pays the workers' start-up again.

    Returns:
        Whether the workers were restarted.
    """
    recipe = _restart
    if recipe is None:
        return False
    shutdown()
    memory.release_free_memory()  # What the old context held, back to the OS.
    recipe()
    return True


def restart_workers_after(round_num: int, every: int, last_round: int) -> bool:
    """`restart_local_workers()` if round `round_num` ends a period of `every` rounds.

    Never after `last_round` (nothing runs after it) and never with `every` 0.

    Returns:
        Whether the workers were restarted.
    """
    if every and round_num % every == 0 and round_num < last_round:
        return restart_local_workers()
    return False


def shutdown() -> None:
    """Stops every worker this process started, with our contexts and channels. Idempotent.

    When it stopped or closed any, TFF is left with no default context, so that a later
    computation call fails at once ("no default context") instead of waiting
    forever on a worker that is gone.
    """
    global _restart
    with _lock:
        workers, channels, contexts = list(_workers), list(_channels), list(_contexts)
        _workers.clear()
        _channels.clear()
        _contexts.clear()
        _restart = None
    if workers or channels or contexts:
        _set_no_default_context()
    for context in contexts:
        _stop_event_loop(context)
    for channel in channels:
        with contextlib.suppress(Exception):
            channel.close()
    for worker in workers:
        worker.stop()


@contextlib.contextmanager
def local_context(**kwargs) -> Iterator[LocalWorker]:
    """Context manager form of `start_local_context` that always shuts down."""
    try:
        yield start_local_context(**kwargs)
    finally:
        shutdown()
