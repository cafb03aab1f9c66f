"""Performance harness: FedAvg overhead, memory, clients, multi-worker runs, sweep cells.

Everything but run_memory and sweep is measured inside one Python process (plus the
TFF worker processes it starts), with the package's own pieces: `FederatedData` for the
per-round datasets, `build_fedavg` for the process, `training.RoundStep` for
each round (the step `FederatedTrainer` runs, without evaluation, checkpoints
or metric files) and `runtime` for the TFF workers.

Suites (each yields rows `suite, setting, data, values, ratio, target, met`):

* overhead: FedAvg round time (steady state: median of rounds 2..n; the first
  round, which includes TFF compilation, is reported separately) against one
  plain `keras.Model.fit` epoch over the same examples (same model, batch size
  and uint8 -> float pipeline), for each model and client count, on real
  data split iid. Target: round / epoch <= 1.15.
* memory: RSS of this process plus its TFF workers at two rounds of a
  small-model run on synthetic data. Target: growth < 5%. A second row
  builds the same round datasets without TFF, to attribute growth to the
  input pipeline. Runs first by default: earlier suites leave freed memory
  behind that muddles RSS.
* clients: many registered clients with a few sampled per round against as
  many clients as are sampled, same examples per round (synthetic data).
  Target: round-time ratio <= 1.2; also reports RSS per registered client.
* workers: the same small experiment on 1 local worker and on n workers
  (TFF's mergeable context, `runtime.start_local_multi_worker_context`):
  round time, the largest weight difference after one round from the same
  start state (target: <= 1e-6; only the order of the client sums differs)
  and after all rounds run freely (reported; training amplifies last-bit
  differences).

* run_memory: peak RSS, process plus TFF workers, of the README's reference
  federated run (ResNet-18, 20 rounds) started as a process of its own;
  with a baseline tree (older code), the same for it and whether both wrote
  the same metrics. Target: <= 2.5 GB.
* sweep: the 20-cell CNN ablation grid through `experiments.sweep`, one
  process per cell against resident cell hosts: cells per hour, and whether
  every cell's results are identical. Target: >= 1.6x.

Rows report wall-clock ratios and, in `values`, the CPU seconds of this
process plus its workers, which a loaded machine disturbs much less. Timings
depend on the machine and its load; `meta` records the CPU count and load
averages before and after.

Modules: `config` (settings, rows, result), `measure` (clocks, RSS),
`runs` (the timed experiments), `suites`, `run_memory`, `sweep_suite`, `harness` (`run`).
"""

from experiments.benchmarking.config import COLUMNS, SUITES, BenchmarkConfig, BenchmarkResult, Row
from experiments.benchmarking.harness import run
from experiments.benchmarking.measure import process_tree_rss, steady_seconds

__all__ = [
    "COLUMNS",
    "SUITES",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Row",
    "process_tree_rss",
    "run",
    "steady_seconds",
]
