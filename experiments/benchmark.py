"""Measures FedAvg overhead, memory, client scaling, multi-worker runs and sweep cells.

Prints one table (suite, setting, data, values, ratio, target, met) and, with
--output, writes it with the raw timings as JSON. See `experiments/benchmarking/`
for what each suite measures. Timings are only meaningful on an otherwise
idle machine; the JSON records the load averages before and after.

Examples:

  python -m experiments.benchmark --quick --data_dir=../shared/medmnist \\
      --output=/tmp/bench.json
  python -m experiments.benchmark --suites=overhead --models=cnn --clients=3,10
  python -m experiments.benchmark --suites=workers --workers=2,3,4
  git worktree add /tmp/before <commit>
  python -m experiments.benchmark --suites=run_memory --baseline_tree=/tmp/before \
      --data_dir=../shared/medmnist

Exit status: 0 done (targets met or not), 2 bad input (one-line error),
130 interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging

from experiments import benchmarking
from experiments.cli import fail, parse_flags
from tff_vision import data as data_lib
from tff_vision import devices, interrupts, models, runtime

flags.DEFINE_list("suites", list(benchmarking.SUITES), "Suites to run, in order.")
flags.DEFINE_boolean("quick", False, "Reduced version (< 10 min on 2 idle cores).")
flags.DEFINE_string("output", None, "Write the table and raw timings to this JSON file.")
flags.DEFINE_string(
    "data_dir",
    None,
    f"Directory with the .npz files. Default: ${data_lib.DATA_DIR_ENV}, else data/.",
)
flags.DEFINE_string("dataset", "retinamnist", "MedMNIST dataset of the real-data suites.")
flags.DEFINE_boolean("download", False, "Download the dataset when it is missing.")
flags.DEFINE_list("models", None, "Models of the overhead suite (default: cnn,resnet18).")
flags.DEFINE_list("clients", None, "Client counts of the overhead suite (default: 3,10).")
flags.DEFINE_integer("rounds", None, "Rounds per overhead setting (default 6, quick 3).")
flags.DEFINE_list("workers", None, "Worker counts of the workers suite (default 2,3,4; quick 2).")
flags.DEFINE_integer("batch_size", 32, "Batch size of clients and the Keras baseline.")
flags.DEFINE_integer(
    "max_concurrent_calls", -1, "--max_concurrent_computation_calls of the TFF workers."
)
flags.DEFINE_integer(
    "worker_threads", None, "TF_NUM_INTRA/INTEROP_THREADS of the TFF workers (default: TF's)."
)
flags.DEFINE_integer(
    "memory_restart_every",
    None,
    "Memory suite: fresh TFF worker every N rounds, as the runner's --restart_workers_every "
    "(default 50, quick 20; 0 = never, to see the worker's own growth).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "run_memory_rounds",
    None,
    "run_memory suite: rounds of the reference run (20; quick 4).",
    lower_bound=1,
)
flags.DEFINE_list(
    "run_memory_flags",
    [],
    "run_memory suite: further experiments.run flags of the reference run, e.g. "
    "--run_memory_flags=--worker_concurrency=1.",
)
flags.DEFINE_string(
    "baseline_tree",
    None,
    "run_memory suite: a checkout of older code (git worktree add DIR COMMIT) whose "
    "reference run is measured too, for a before/after row.",
)
flags.DEFINE_enum(
    "op_determinism",
    "auto",
    devices.OP_DETERMINISM_MODES,
    "TF op determinism for the Keras baseline and the TFF workers alike (auto: on with a GPU).",
)

flags.DEFINE_bool(
    "mixed_precision",
    False,
    "Models in bfloat16 compute with float32 weights, Keras baseline and TFF clients alike.",
)

FLAGS = flags.FLAGS


def _ints(name: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        fail(f"--{name} takes comma-separated integers, got {','.join(values)!r}")
    return ()  # Unreachable.


# Flag -> the `BenchmarkConfig` field it sets.
_FIELD_OF_FLAG = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "download": "allow_download",
    "batch_size": "batch_size",
    "max_concurrent_calls": "max_concurrent_computation_calls",
    "worker_threads": "worker_threads",
    "op_determinism": "op_determinism",
    "mixed_precision": "mixed_precision",
}
# The same for flags whose default (None) leaves the preset's value.
_FIELD_OF_OPTIONAL_FLAG = {
    "rounds": "overhead_rounds",
    "memory_restart_every": "memory_restart_every",
    "run_memory_rounds": "memory_run_rounds",
    "baseline_tree": "memory_baseline_tree",
}


def config_from_flags() -> benchmarking.BenchmarkConfig:
    """The `BenchmarkConfig` the flags ask for."""
    overrides = {field: FLAGS[flag].value for flag, field in _FIELD_OF_FLAG.items()}
    overrides["suites"] = tuple(FLAGS.suites)
    for flag, field in _FIELD_OF_OPTIONAL_FLAG.items():
        if FLAGS[flag].value is not None:
            overrides[field] = FLAGS[flag].value
    overrides["memory_run_flags"] = tuple(FLAGS.run_memory_flags)
    if FLAGS.baseline_tree and not os.path.isdir(os.path.join(FLAGS.baseline_tree, "experiments")):
        fail(f"--baseline_tree={FLAGS.baseline_tree} is no checkout of this repository")
    if FLAGS.models:
        unknown = [m for m in FLAGS.models if m not in models.MODEL_NAMES]
        if unknown:
            fail(f"unknown model(s) {unknown}; use some of {', '.join(models.MODEL_NAMES)}")
        overrides["overhead_models"] = tuple(FLAGS.models)
    if FLAGS.clients:
        overrides["overhead_clients"] = _ints("clients", FLAGS.clients)
    if FLAGS.workers:
        counts = _ints("workers", FLAGS.workers)
        overrides["workers_counts"] = counts
    config_cls = benchmarking.BenchmarkConfig
    preset = config_cls.quick if FLAGS.quick else config_cls.full
    config = preset(**overrides)
    if config.workers_counts and max(config.workers_counts) > config.workers_clients:
        config = dataclasses.replace(config, workers_clients=max(config.workers_counts))
    try:
        config.validate()
    except ValueError as e:
        fail(str(e))
    return config


def main(argv: list[str]) -> None:
    interrupts.install_interrupt_guard()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    config = config_from_flags()
    try:
        result = benchmarking.run(config, printer=lambda line: print(line, flush=True))
    except data_lib.DataError as e:
        fail(str(e))
    except KeyboardInterrupt:
        runtime.shutdown()
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        runtime.shutdown()
    meta = result.meta
    print(
        f"\n{meta['devices']}, op determinism {'on' if meta['op_determinism'] else 'off'}, "
        f"{meta['precision']}, "
        f"load average {meta['load_average_start']} -> "
        f"{meta['load_average_end']}, {meta['seconds']:.0f}s"
    )
    print(result.table(), flush=True)
    if FLAGS.output:
        result.write_json(FLAGS.output)
        print(f"wrote {FLAGS.output}")


def entry_point() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry_point()
