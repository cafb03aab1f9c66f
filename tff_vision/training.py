"""The federated round loop: a TFF learning process run resumably, with metrics released.

`FederatedTrainer` drives a TFF `LearningProcess` round by round, each round
one `RoundStep` (the step the benchmark harness times as well). After each
round it releases a metrics row (`tff.program.CSVFileReleaseManager`, which
rewrites the CSV atomically and drops rows of rounds being redone, plus a
`TensorBoardReleaseManager`) and then saves the whole process state with a
`tff.program.FileProgramStateManager`. A rerun loads the latest saved state
and carries on; since every random choice is derived from (seed, round,
client), the resumed run computes exactly what an uninterrupted one would.
With a `selection.Selection`, every evaluated round is also scored on the
validation split (val_* columns) and offered to the selection, which keeps
the round the federated model reports.

The Keras baselines (local-only, pooled) have their own loop in
`tff_vision.baselines`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import algorithms, evaluation, interrupts, runtime
from tff_vision.progress import Progress
from tff_vision.selection import Selection

EvalFn = Callable[[tf.keras.Model], evaluation.EvalResult]


def _run_coroutine(coroutine):
    """`asyncio.run`, also from code already inside an event loop (e.g. a Jupyter kernel).

    The `tff.program` managers are async; inside a running loop `asyncio.run`
    refuses, so the coroutine then runs on a fresh loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclasses.dataclass
class FederatedOutcome:
    """What a federated run ended with.

    `final_eval` is the last round's test evaluation; `summary` the federated
    entry of summary.json (the round reported, see `Selection.report`) and
    `selected_eval` that round's test evaluation.
    """

    state: Any
    final_eval: evaluation.EvalResult
    rounds: int
    resumed_from: int
    seconds: float
    summary: dict[str, Any]
    selected_eval: evaluation.EvalResult


class RoundStep:
    """One federated round of a learning process over `FederatedData`: the loop's only body.

    `next(state, round_num)` samples the round's clients, builds their round
    datasets and calls `process.next`, in that order. Every choice derives from
    (seed, round, client), so a round depends only on its state and number:
    `FederatedTrainer` and the benchmark harness run the same rounds through
    this one object.

    Args:
        process: A `tff.learning.templates.LearningProcess`.
        data: A `client_data.FederatedData` providing per-round client datasets.
        initial_weights: `tff.learning.models.ModelWeights` replacing the
            process's own initialization.
        clients_per_round: Clients sampled per round (all when 0 or >= clients).
    """

    def __init__(self, process, data, initial_weights, clients_per_round: int = 0):
        self.process, self.data, self.initial_weights = process, data, initial_weights
        self.clients_per_round = clients_per_round or len(data.client_ids)

    def initial_state(self):
        state = self.process.initialize()
        return self.process.set_model_weights(state, self.initial_weights)

    def next(self, state, round_num: int):
        """Runs round `round_num` from `state`; returns the process's `LearningProcessOutput`."""
        clients = self.data.sample_clients(round_num, self.clients_per_round)
        datasets = [self.data.round_dataset(c, round_num) for c in clients]
        return self.process.next(state, datasets)

    def model_weights(self, state):
        """The global `ModelWeights` of `state`."""
        return self.process.get_model_weights(state)

    def client_models(self, state) -> list | None:
        """Each client's own `ModelWeights` in `state`; None where all share the global one."""
        return algorithms.client_models(self.process, state)


class FederatedTrainer:
    """Runs a TFF learning process for `rounds` rounds with checkpoints and metrics.

    Args:
        process, data, initial_weights, clients_per_round: The `RoundStep`
            every round runs. The initial weights replace the process's own
            initialization, so that baselines and the federated model start
            from identical weights.
        rounds: Total number of rounds.
        eval_model: A Keras model with the process's architecture; the global
            weights are assigned to it for evaluation.
        evaluate: Function evaluating `eval_model` on the test set.
        output_dir: Directory for `metrics.csv`, `tb/` and `checkpoints/federated/`.
        eval_every: Evaluate every this many rounds (and always at the end).
        keep_checkpoints: How many round checkpoints to keep.
        printer: Where progress lines go.
        restart_workers_every: Replace the TFF workers this process started by
            fresh ones after every this many rounds
            (`runtime.restart_local_workers`; 0 = never): bounds the memory a
            long-running worker accumulates. Results do not change.
        selection: Scores each evaluated round on the validation split and keeps
            the round to report (None: no validation, the last round).
    """

    def __init__(
        self,
        process: tff.learning.templates.LearningProcess,
        data,
        rounds: int,
        eval_model: tf.keras.Model,
        evaluate: EvalFn,
        output_dir: os.PathLike,
        initial_weights: tff.learning.models.ModelWeights,
        clients_per_round: int = 0,
        eval_every: int = 1,
        keep_checkpoints: int = 2,
        printer: Callable[[str], None] = print,
        restart_workers_every: int = 0,
        selection: Selection | None = None,
    ):
        self.step = RoundStep(process, data, initial_weights, clients_per_round)
        self.rounds = rounds
        self.restart_workers_every = restart_workers_every
        self.eval_model, self.evaluate = eval_model, evaluate
        self.selection = selection
        self.eval_every = max(1, eval_every)
        self.printer = printer
        output_dir = pathlib.Path(output_dir)
        self.checkpoint_dir = output_dir / "checkpoints" / "federated"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.state_manager = tff.program.FileProgramStateManager(
            self.checkpoint_dir, prefix="round_", keep_total=keep_checkpoints, keep_first=False
        )
        self.csv = tff.program.CSVFileReleaseManager(
            output_dir / "metrics.csv",
            save_mode=tff.program.CSVSaveMode.WRITE,
            key_fieldname="round",
        )
        self.tensorboard = tff.program.TensorBoardReleaseManager(output_dir / "tb" / "federated")

    def restore(self) -> tuple[Any, int]:
        """The latest saved state and its round, or the initial state and 0."""
        initial = self.step.initial_state()
        versions = _run_coroutine(self.state_manager.get_versions()) or []
        if not versions:
            return initial, 0
        latest = max(versions)
        return _run_coroutine(self.state_manager.load(latest, initial)), latest

    def _score(self, state) -> tuple[evaluation.EvalResult, evaluation.EvalResult | None]:
        """Test, then (with a selection) val evaluation of `state`'s model.

        Where each client has its own model (FedBN), each one is scored and the
        results combined (`evaluation.ClientModelsResult`): the global model of
        such a process is used by no client.
        """
        own = self.step.client_models(state)
        scored = [self._score_weights(w) for w in own or [self.step.model_weights(state)]]
        if own is None:
            return scored[0]
        test = evaluation.client_models_result([t for t, _ in scored])
        val = evaluation.client_models_result([v for _, v in scored]) if self.selection else None
        return test, val

    def _score_weights(self, weights) -> tuple[evaluation.EvalResult, evaluation.EvalResult | None]:
        weights.assign_weights_to(self.eval_model)
        test = self.evaluate(self.eval_model)
        val = self.selection.held_out.evaluate_val(self.eval_model) if self.selection else None
        return test, val

    def run(self) -> FederatedOutcome:
        start = time.monotonic()
        state, done = self.restore()
        if done:
            self.printer(f"[federated] resuming after round {done} from {self.checkpoint_dir}")
        progress = Progress("federated", self.rounds, printer=self.printer)
        final_eval = final_val = None
        for round_num in range(done + 1, self.rounds + 1):
            interrupts.raise_if_interrupted()
            t0 = time.monotonic()
            output = self.step.next(state, round_num)
            state = output.state
            row = _train_row(output.metrics)
            row["round_seconds"] = time.monotonic() - t0
            if round_num % self.eval_every == 0 or round_num == self.rounds:
                final_eval, final_val = self._score(state)
                row.update(final_eval.as_dict(prefix="eval_"))
                if final_val is not None:
                    row.update(final_val.as_dict(prefix="val_"))
                    # Before the round's checkpoint: a resumed run never skips an offer.
                    self.selection.offer(round_num, final_val, final_eval)
            row["seconds"] = time.monotonic() - t0
            _run_coroutine(self._release(row, round_num))
            _run_coroutine(self.state_manager.save(state, round_num))
            progress.update(round_num, row["seconds"], _progress_metrics(row))
            if runtime.restart_workers_after(round_num, self.restart_workers_every, self.rounds):
                self.printer(f"[federated] fresh TFF worker(s) after round {round_num}")
        interrupts.raise_if_interrupted()
        if final_eval is None:  # Nothing left to run: evaluate the restored final state.
            final_eval, final_val = self._score(state)
        if self.selection is None:
            summary, selected = final_eval.summary(), final_eval
        else:
            summary, selected = self.selection.report(self.rounds, final_eval, final_val)
        seconds = time.monotonic() - start
        return FederatedOutcome(state, final_eval, self.rounds, done, seconds, summary, selected)

    async def _release(self, row: dict[str, float], round_num: int) -> None:
        await self.csv.release(row, key=round_num)
        await self.tensorboard.release(row, key=round_num)


def _train_row(metrics) -> dict[str, float]:
    train = metrics["client_work"]["train"]
    return {
        "train_loss": float(train["loss"]),
        "train_accuracy": float(train["accuracy"]),
        "train_examples": int(train["num_examples"]),
    }


def _progress_metrics(row: dict[str, float]) -> dict[str, float]:
    keys = {
        "train_loss": "loss",
        "train_accuracy": "acc",
        "eval_accuracy": "test_acc",
        "eval_auc": "test_auc",
        "val_auc": "val_auc",
    }
    return {short: row[k] for k, short in keys.items() if k in row}
