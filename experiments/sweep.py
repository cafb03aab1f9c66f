"""Runs a grid of federated experiments: partitions x algorithms x models x seeds.

Every cell is one `python -m experiments.run` writing into
<sweep_dir>/cells/<cell name>/ (its stdout/stderr in log.txt there); progress,
one line per cell, and a summary come here. By default cells run one after
another in resident cell hosts (`experiments.cell_host`: the same run, each
cell with a fresh TFF context and exactly the numbers it gives alone, without
paying Python's start, the imports and the process's tracing every time);
--cell_processes=fresh starts one process per cell. See the `tff_vision.sweep` package for
the design (status of a cell, sweep.json, resume, grid changes, Ctrl-C).

Example:

  python -m experiments.sweep --sweep_dir=/tmp/s1 \\
      --partitions=iid,label_exclusion,classes:2,dirichlet:0.1,dirichlet:0.5 \\
      --algorithms=fedavg --models=cnn --seeds=0,1 \\
      --dataset=retinamnist --data_dir=../shared/medmnist --rounds=3 --num_clients=3
  python -m experiments.report --sweep_dir=/tmp/s1

With --launcher=ray each cell is a Ray task on a cluster instead (see
`tff_vision.sweep.launchers`): the same command on whichever node has the
cell's --cell_cpus and --cell_gpus free; --sweep_dir must be on a filesystem
every node shares. Everything else (sweep.json, resume, progress) is the same.

  ray start --head --port=6379                      # once per cluster, then on each node:
  ray start --address=HEAD_HOST:6379
  python -m experiments.sweep --launcher=ray --ray_address=HEAD_HOST:6379 \\
      --cell_gpus=0.25 --sweep_dir=/shared/s1 ...

Every `experiments.run` flag given here (all but --partition, --algorithm,
--model, --seed and --output_dir, which the sweep sets per cell) is passed
to every cell. Rerunning the same command skips done cells and resumes the
others; a rerun may add cells (new partitions, seeds, ...), but must keep the
other flags.

Exit status: 0 all cells done, 1 some cell failed (the others still ran),
2 bad sweep flags or no reachable Ray cluster (one-line error, nothing run),
130 interrupted (143 on SIGTERM).
"""

from __future__ import annotations

import functools
import pathlib
import sys
import time

from absl import app, flags

from experiments import run as run_flags  # Defines every experiments.run flag, forwarded below.
from experiments.cli import fail, parse_flags
from tff_vision import sweep

flags.DEFINE_string("sweep_dir", None, "Directory of the sweep (sweep.json, cells/); required.")
flags.DEFINE_list(
    "partitions",
    None,
    "Comma-separated partition specs, e.g. iid,label_exclusion,classes:2,dirichlet:0.1 "
    "(label_exclusion uses --exclude if given, else client i lacks class i).",
)
flags.DEFINE_list(
    "algorithms", ["fedavg"], "Comma-separated federated algorithms (as --algorithm takes)."
)
flags.DEFINE_list(
    "models", None, "Comma-separated models (as --model takes). Default: --model's default."
)
flags.DEFINE_list("seeds", ["0"], "Comma-separated seeds, e.g. 0,1,2.")
flags.DEFINE_boolean("dry_run", False, "Print the cells and their status; run nothing.")
flags.DEFINE_integer(
    "max_parallel", 1, "Cells run at once (for GPU machines; 1 on CPU).", lower_bound=1
)
flags.DEFINE_enum(
    "cell_processes",
    "resident",
    list(sweep.CELL_PROCESSES),
    "--launcher=local: resident (cells run one after another in long-lived cell hosts, "
    "each cell with a fresh TFF context and the results it gives alone; a cell no longer pays "
    "Python's start, the TF imports and the tracing of its algorithm's process) or fresh "
    "(one python -m experiments.run process per cell).",
)
flags.DEFINE_integer(
    "cells_per_host",
    sweep.CELLS_PER_HOST,
    "--cell_processes=resident: a cell host serves at most this many cells, then a new one "
    "starts (bounds the memory a process gathers).",
    lower_bound=1,
)
flags.DEFINE_enum(
    "launcher",
    "local",
    ["local", "ray"],
    "Where cells run: local (subprocesses here, --max_parallel at once) or ray (one Ray task "
    "per cell on the cluster at --ray_address; --sweep_dir on a filesystem all nodes share).",
)
flags.DEFINE_string(
    "ray_address",
    None,
    "--launcher=ray: the cluster's HOST:PORT (as `ray start --head` printed it), or auto "
    "(RAY_ADDRESS, else a cluster started on this machine). Default: auto.",
)
flags.DEFINE_float("cell_cpus", 1.0, "--launcher=ray: CPUs Ray reserves for each cell.")
flags.DEFINE_float(
    "cell_gpus",
    0.0,
    "--launcher=ray: GPUs Ray reserves for each cell; a fraction (e.g. 0.25) packs several "
    "cells onto one GPU. A cell sees only the GPU Ray gives it (none with 0).",
)

_RAY_FLAGS = ("ray_address", "cell_cpus", "cell_gpus")
_LOG = sweep.LOG_FILE

FLAGS = flags.FLAGS


def _flag_text(flag: flags.Flag) -> str:
    """The value of a flag as it would be written after `--name=`."""
    text = flag.serialize()
    prefix = f"--{flag.name}="
    if text.startswith(prefix):
        return text[len(prefix) :]
    return "false" if text == f"--no{flag.name}" else "true"


def forwarded_flags() -> dict[str, str]:
    """Every experiments.run flag set on the command line, by name (swept ones included).

    `sweep.expand_grid` refuses the swept flags (--partition, ...) with a one-line error.
    """
    fixed = {}
    for flag in FLAGS.flags_by_module_dict().get(run_flags.__name__, []):
        if flag.present and flag.value is not None:
            fixed[flag.name] = _flag_text(flag)
    return dict(sorted(fixed.items()))


def _check_flags(argv: list[str]) -> None:
    """Fails (exit 2, one line) for arguments that are not flags or a missing required flag."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    if not FLAGS.sweep_dir:
        fail("--sweep_dir is required; pass e.g. --sweep_dir=runs/sweep1")
    if not FLAGS.partitions:
        fail("--partitions is required; pass e.g. --partitions=iid,dirichlet:0.5")
    _check_launcher_flags()


def _check_launcher_flags() -> None:
    """Fails (exit 2, one line) for flags of the other launcher or bad cell resources."""
    if FLAGS.launcher == "local":
        given = [name for name in _RAY_FLAGS if FLAGS[name].present]
        if given:
            fail(f"--{given[0]} applies to --launcher=ray only; add --launcher=ray or drop it")
        if FLAGS["cells_per_host"].present and FLAGS.cell_processes != "resident":
            fail("--cells_per_host applies to --cell_processes=resident only; drop it")
        return
    for name in ("cell_processes", "cells_per_host"):
        if FLAGS[name].present:
            fail(
                f"--{name} applies to --launcher=local only; Ray runs every cell as a fresh "
                "process (drop it)"
            )
    if FLAGS["max_parallel"].present:
        fail(
            "--max_parallel applies to --launcher=local only; with --launcher=ray the cluster "
            "runs as many cells as its resources hold (size each with --cell_cpus/--cell_gpus)"
        )
    try:
        sweep.launchers.check_cell_resources(FLAGS.cell_cpus, FLAGS.cell_gpus)
    except sweep.SweepError as e:
        fail(str(e))


def _plan(sweep_dir: pathlib.Path) -> tuple[list[sweep.Cell], sweep.SweepState, dict[str, str]]:
    """The grid's cells, the recorded state and the fixed flags; fails (exit 2) on bad flags."""
    models = FLAGS.models or [FLAGS["model"].default]
    try:
        fixed = forwarded_flags()
        cells = sweep.expand_grid(FLAGS.partitions, FLAGS.algorithms, models, FLAGS.seeds, fixed)
        if sweep_dir.exists() and not sweep_dir.is_dir():
            raise sweep.SweepError(f"--sweep_dir={sweep_dir} is a file; choose a directory")
        state = sweep.SweepState.load(sweep_dir)
        state.check_fixed_flags(fixed)
    except sweep.SweepError as e:
        fail(str(e))
    return cells, state, fixed


def _dry_run(
    sweep_dir: pathlib.Path, state: sweep.SweepState, cells: list[sweep.Cell], fixed: dict[str, str]
) -> None:
    """Prints the cells, their status and the first command; writes nothing."""
    change = state.copy().merge(sweep.grid_axes(cells), cells, fixed)
    print(f"sweep {sweep_dir}: {len(cells)} cells (dry run, nothing is written)")
    if change.describe():
        print(change.describe())
    print("\n".join(sweep.describe(state, cells)))
    print(f"first cell: {' '.join(cells[0].command(sweep_dir)[1:])}")


def _launcher(sweep_dir: pathlib.Path) -> tuple[sweep.Launcher, str]:
    """The launcher the flags ask for, and how it runs the cells (for the first line)."""
    if FLAGS.launcher == "ray":
        launcher = sweep.RayLauncher(
            sweep_dir,
            address=FLAGS.ray_address or "auto",
            cell_cpus=FLAGS.cell_cpus,
            cell_gpus=FLAGS.cell_gpus,
        )
        return launcher, launcher.describe()
    launcher = sweep.LocalLauncher(
        sweep_dir,
        python=sys.executable,
        max_parallel=FLAGS.max_parallel,
        cell_processes=FLAGS.cell_processes,
        cells_per_host=FLAGS.cells_per_host,
    )
    how = "in resident cell hosts" if FLAGS.cell_processes == "resident" else "as fresh processes"
    return launcher, f"up to {FLAGS.max_parallel} at a time, {how}"


def _run(
    sweep_dir: pathlib.Path, state: sweep.SweepState, cells: list[sweep.Cell], fixed: dict[str, str]
) -> sweep.Outcome:
    """Records the grid in sweep.json and runs its cells, holding the sweep dir's lock.

    The launcher comes first: an unreachable Ray cluster fails before anything is written.
    """
    say = functools.partial(print, flush=True)
    launcher = None
    try:
        launcher, how = _launcher(sweep_dir)
        with sweep.lock_sweep_dir(sweep_dir):
            change = state.merge(sweep.grid_axes(cells), cells, fixed)
            state.save()
            say(f"sweep {sweep_dir}: {len(cells)} cells, {how}; logs in cells/<name>/{_LOG}")
            if change.describe():
                say(change.describe())
            return sweep.Runner(state, cells, printer=say, launcher=launcher).run()
    except sweep.SweepError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write to --sweep_dir={sweep_dir} ({e.strerror or e}); choose a writable one")
    finally:
        if launcher is not None:
            launcher.close()


def main(argv: list[str]) -> None:
    start = time.monotonic()
    _check_flags(argv)
    sweep_dir = pathlib.Path(FLAGS.sweep_dir).expanduser().resolve()
    cells, state, fixed = _plan(sweep_dir)
    if FLAGS.dry_run:
        _dry_run(sweep_dir, state, cells, fixed)
        return
    outcome = _run(sweep_dir, state, cells, fixed)
    out = sys.stderr if outcome.exit_code else sys.stdout
    for line in sweep.summary_lines(state, cells, outcome, time.monotonic() - start):
        print(line, file=out, flush=True)
    if outcome.exit_code == 0:
        print(f"report: {sys.executable} -m experiments.report --sweep_dir={sweep_dir}")
    sys.exit(outcome.exit_code)


def entry_point() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry_point()
