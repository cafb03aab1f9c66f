"""The sweep suite: sweep cells per hour with resident cell hosts against a fresh process per cell.

Runs one grid twice through the real CLI, `python -m experiments.sweep`, into
temporary directories: `--cell_processes=fresh` (one `experiments.run`
process per cell), then `resident` (cells one after another in cell hosts).
The ratio is cells per hour after over before, from each sweep's wall time;
the target is met only if every cell's results are identical in both:
metrics.csv without its wall-time columns and summary.json without its wall
times. The full grid is the 20-cell CNN ablation of
notebooks/noniid_ablation.ipynb; the quick one 4 of its cells.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from experiments.benchmarking.config import BenchmarkConfig, Row, yes_no
from experiments.benchmarking.measure import run_results

Printer = Callable[[str], None]

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = 1.6


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """A sweep's axes and the run flags every cell shares."""

    partitions: tuple[str, ...]
    algorithms: tuple[str, ...]
    seeds: tuple[int, ...]
    models: tuple[str, ...] = ("cnn",)
    fixed: tuple[tuple[str, str], ...] = (
        ("num_clients", "3"),
        ("rounds", "3"),
        ("local_epochs", "3"),
        ("client_lr", "0.003"),
        ("proximal_strength", "0.01"),
    )

    @property
    def cells(self) -> int:
        return len(self.partitions) * len(self.algorithms) * len(self.seeds) * len(self.models)

    def flags(self, dataset: str, data_dir: str | None) -> list[str]:
        axes = {
            "partitions": self.partitions,
            "algorithms": self.algorithms,
            "models": self.models,
            "seeds": self.seeds,
        }
        out = [f"--{name}={','.join(map(str, values))}" for name, values in axes.items()]
        out += [f"--{name}={value}" for name, value in self.fixed]
        out.append(f"--dataset={dataset}")
        return out + ([f"--data_dir={data_dir}"] if data_dir else [])


# The CNN ablation of notebooks/noniid_ablation.ipynb and the README.
FULL_GRID = SweepGrid(
    partitions=("iid", "label_exclusion", "classes:2", "dirichlet:0.1", "dirichlet:0.5"),
    algorithms=("fedavg", "fedprox"),
    seeds=(0, 1),
)
QUICK_GRID = SweepGrid(
    partitions=("iid", "dirichlet:0.5"), algorithms=("fedavg", "fedprox"), seeds=(0,)
)
MODES = ("fresh", "resident")


def suite_sweep(
    config: BenchmarkConfig, printer: Printer, grid: SweepGrid | None = None
) -> list[Row]:
    """One row: cells per hour of `grid` (default: by `config.sweep_quick`), resident / fresh."""
    grid = grid or (QUICK_GRID if config.sweep_quick else FULL_GRID)
    flags = grid.flags(config.dataset, config.data_dir)
    with tempfile.TemporaryDirectory(prefix="tff_vision_sweep_suite_") as tmp:
        dirs = {mode: pathlib.Path(tmp) / mode for mode in MODES}
        walls = {}
        for mode in MODES:
            walls[mode] = run_sweep(dirs[mode], mode, flags)
            printer(
                f"  sweep {mode}: {grid.cells} cells in {walls[mode]:.0f}s "
                f"({per_hour(grid.cells, walls[mode]):.0f} cells/h)"
            )
        cells = sorted(p.name for p in (dirs["fresh"] / "cells").iterdir())
        same = {name: same_results(dirs["fresh"], dirs["resident"], name) for name in cells}
        seconds = {mode: cell_seconds(dirs[mode]) for mode in MODES}
    return [_row(config, grid, walls, same, seconds)]


def _row(
    config: BenchmarkConfig,
    grid: SweepGrid,
    walls: Mapping[str, float],
    same: Mapping[str, bool],
    seconds: Mapping[str, Mapping[str, float]],
) -> Row:
    before, after = (per_hour(grid.cells, walls[m]) for m in MODES)
    fixed = dict(grid.fixed)
    identical = sum(same.values())
    ratio = after / before
    return Row(
        suite="sweep",
        setting=f"{grid.cells}-cell CNN ablation grid: resident cell hosts / fresh processes",
        data=(
            f"{config.dataset}, {fixed['num_clients']} clients, {fixed['rounds']} rounds x "
            f"{fixed['local_epochs']} local epochs"
        ),
        values=(
            f"fresh {before:.0f} cells/h ({walls['fresh']:.0f}s), resident {after:.0f} cells/h "
            f"({walls['resident']:.0f}s); {identical}/{len(same)} cells identical"
        ),
        ratio=ratio,
        target=f">= {TARGET:g}",
        met=yes_no(ratio >= TARGET and identical == len(same) == grid.cells),
        details={
            "wall_seconds": dict(walls),
            "cells_per_hour": {"fresh": before, "resident": after},
            "cell_seconds": {m: dict(seconds[m]) for m in MODES},
            "identical": dict(same),
            "grid": dataclasses.asdict(grid),
        },
    )


def per_hour(cells: int, seconds: float) -> float:
    return cells * 3600.0 / seconds


def run_sweep(sweep_dir: pathlib.Path, mode: str, flags: Sequence[str]) -> float:
    """Runs `python -m experiments.sweep` to its end; its wall seconds. RuntimeError if it fails."""
    command = [sys.executable, "-m", "experiments.sweep", f"--sweep_dir={sweep_dir}"]
    command += [f"--cell_processes={mode}", *flags]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    start = time.monotonic()
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"sweep ({mode}) exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return wall


def cell_seconds(sweep_dir: pathlib.Path) -> dict[str, float]:
    """Each cell's recorded duration (sweep.json)."""
    records = json.loads((sweep_dir / "sweep.json").read_text())["cells"]
    return {r["name"]: r.get("seconds") for r in records}


def same_results(before: pathlib.Path, after: pathlib.Path, name: str) -> bool:
    """Whether cell `name` of both sweeps has the same `run_results` (False if one has none)."""
    try:
        return run_results(before / "cells" / name) == run_results(after / "cells" / name)
    except OSError:
        return False
