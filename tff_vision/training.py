"""The federated round loop: a TFF learning process run resumably, with metrics released.

`FederatedTrainer` drives a TFF `LearningProcess` round by round, each round
one `RoundStep` (the step the benchmark harness times as well). After each
round it releases a metrics row (`tff.program.CSVFileReleaseManager`, which
rewrites the CSV atomically and drops rows of rounds being redone, plus a
`TensorBoardReleaseManager`) and then saves the whole process state
(`checkpoints.NpzStateManager`). A rerun loads the latest saved state
and carries on; since every random choice is derived from (seed, round,
client), the resumed run computes exactly what an uninterrupted one would.
With a `selection.Selection`, every evaluated round is also scored on the
validation split (val_* columns) and offered to the selection, which keeps
the round the federated model reports. With `ema_decay`, the model scored is
an exponential moving average of the global weights, saved with each
round's state so that a resumed run averages exactly as an uninterrupted one.

The Keras baselines (local-only, pooled) have their own loop in
`tff_vision.baselines`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_vision import (
    algorithms,
    checkpoints,
    communication,
    evaluation,
    interrupts,
    memory,
    runtime,
)
from tff_vision.availability import Availability, num_batches
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
    `selected_eval` that round's test evaluation. `client_weights`, where
    asked for (`FederatedTrainer.client_weights`), is the model each client
    receives from the last round.
    """

    state: Any
    final_eval: evaluation.EvalResult
    rounds: int
    resumed_from: int
    seconds: float
    summary: dict[str, Any]
    selected_eval: evaluation.EvalResult
    client_weights: list | None = None
    communication: dict[str, Any] | None = None


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
        availability: Which sampled clients report and how much work they do
            (`availability.Availability`; default: all of them, all of it).
            With one that is active, `participation` describes the last round:
            clients sampled and reporting, and batches done out of the full ones.
    """

    def __init__(
        self,
        process,
        data,
        initial_weights,
        clients_per_round: int = 0,
        availability: Availability | None = None,
    ):
        self.process, self.data, self.initial_weights = process, data, initial_weights
        self.clients_per_round = clients_per_round or len(data.client_ids)
        self.availability = availability or Availability()
        self.participation: dict[str, Any] = {}
        self.reported: list[str] = []
        self._weights_in_state: bool | None = None  # See `model_weights`.

    def initial_state(self):
        state = self.process.initialize()
        return self.process.set_model_weights(state, self.initial_weights)

    def next(self, state, round_num: int):
        """Runs round `round_num` from `state`; returns the process's `LearningProcessOutput`.

        A round in which no sampled client reports leaves `state` unchanged
        (its output has no metrics).
        """
        clients = self.data.sample_clients(round_num, self.clients_per_round)
        reporting = self.availability.reporting(round_num, clients)
        self.reported = reporting
        work = [self._client_work(c, round_num) for c in reporting]
        if self.availability.active:
            self.participation = {
                "clients_sampled": len(clients),
                "clients_reporting": len(reporting),
                "reporting_clients": " ".join(reporting),
                "batches_done": sum(done for _, done, _ in work),
                "batches_full": sum(full for _, _, full in work),
            }
        if not work:
            return tff.learning.templates.LearningProcessOutput(state, None)
        return self.process.next(state, [data for data, _, _ in work])

    def clients_reporting(self, round_num: int) -> list[str]:
        """The clients that report in round `round_num` (no side effect: for past rounds)."""
        clients = self.data.clients_of_round(round_num, self.clients_per_round)
        return self.availability.reporting(round_num, clients)

    def _client_work(self, client: str, round_num: int) -> tuple[Any, int, int]:
        """(the client's round data, batches it does, its full batches), after partial work."""
        data = self.data.round_dataset(client, round_num)
        if not self.availability.partial_work:
            return data, 0, 0
        index, dataset = data if isinstance(data, tuple) else (None, data)
        full = num_batches(dataset)
        done = self.availability.batches(round_num, client, full)
        dataset = dataset.take(done)
        return (dataset if index is None else (index, dataset)), done, full

    def model_weights(self, state):
        """The global `ModelWeights` of `state`.

        A call of the process's `get_model_weights` sends the whole state to
        the worker and its weights back (for ResNet-18, 90 MB and a peak of
        memory in both processes). Where that computation is the composed
        processes' projection `state.global_model_weights`, the weights are
        read from the state here instead: checked once, on the first state,
        against a call of it, to the last bit.
        """
        if self._weights_in_state is None:
            called = self.process.get_model_weights(state)
            self._weights_in_state = _same_weights(called, _global_weights(state))
            return called
        if self._weights_in_state:
            return _global_weights(state)
        return self.process.get_model_weights(state)

    def client_models(self, state) -> list | None:
        """Each client's own `ModelWeights` in `state`; None where all share the global one."""
        if not algorithms.has_client_models(self.process):
            return None
        return algorithms.client_models(self.process, state, self.model_weights(state))


def _global_weights(state) -> tff.learning.models.ModelWeights | None:
    if not isinstance(state, tff.learning.templates.LearningAlgorithmState):
        return None
    return state.global_model_weights


def _same_weights(a, b) -> bool:
    """Whether two `ModelWeights` hold the same arrays, bit for bit, in the same structure."""
    if not isinstance(b, tff.learning.models.ModelWeights) or type(a) is not type(b):
        return False
    try:
        tf.nest.assert_same_structure(a, b)
    except (TypeError, ValueError):
        return False
    pairs = zip(map(np.asarray, tf.nest.flatten(a)), map(np.asarray, tf.nest.flatten(b)))
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in pairs
    )


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
        availability: Client dropout and partial work (see `RoundStep`); the
            rounds' participation joins metrics.csv.
        client_bytes: What one reporting client receives and sends per round
            (`communication.client_bytes(process)`): metrics.csv gets the
            round's and the cumulative `bytes_*` columns, the outcome the totals.
        ema_decay: Score an exponential moving average of the global weights
            (d * ema + (1 - d) * w_r after round r, starting at w_1) instead of
            each round's own; 0 = off. Not for processes whose clients keep
            models of their own (the registry refuses those).
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
        availability: Availability | None = None,
        client_bytes: communication.RoundBytes | None = None,
        ema_decay: float = 0.0,
    ):
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.step = RoundStep(process, data, initial_weights, clients_per_round, availability)
        self.ema_decay = ema_decay
        self.ema = None  # The moving average of the global weights, with ema_decay.
        self.client_bytes = client_bytes
        self.rounds = rounds
        self.restart_workers_every = restart_workers_every
        self.eval_model, self.evaluate = eval_model, evaluate
        self.selection = selection
        self.eval_every = max(1, eval_every)
        self.printer = printer
        output_dir = pathlib.Path(output_dir)
        self.checkpoint_dir = output_dir / "checkpoints" / "federated"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.state_manager = checkpoints.NpzStateManager(
            self.checkpoint_dir, keep_total=keep_checkpoints
        )
        self.csv = tff.program.CSVFileReleaseManager(
            output_dir / "metrics.csv",
            save_mode=tff.program.CSVSaveMode.WRITE,
            key_fieldname="round",
        )
        self.tensorboard = tff.program.TensorBoardReleaseManager(output_dir / "tb" / "federated")

    def restore(self) -> tuple[Any, int]:
        """The latest saved state and its round, or the initial state and 0 (sets `ema`)."""
        initial = self.step.initial_state()
        versions = _run_coroutine(self.state_manager.get_versions()) or []
        if not versions:
            return initial, 0
        latest = max(versions)
        if not self.ema_decay:
            return _run_coroutine(self.state_manager.load(latest, initial)), latest
        structure = (initial, self.step.model_weights(initial))
        state, self.ema = _run_coroutine(self.state_manager.load(latest, structure))
        return state, latest

    def _average(self, state) -> None:
        """Folds `state`'s global weights into `ema`; the first round's weights start it."""
        weights = self.step.model_weights(state)
        if self.ema is None:
            self.ema = weights
            return
        decay = self.ema_decay
        self.ema = tf.nest.map_structure(
            lambda a, w: (decay * np.asarray(a) + (1 - decay) * np.asarray(w)).astype(
                np.asarray(a).dtype
            ),
            self.ema,
            weights,
        )

    def client_weights(self, state) -> list:
        """The `ModelWeights` each client receives in `state`: its own, or the global model."""
        own = self.step.client_models(state)
        return own or [self.step.model_weights(state)] * len(self.step.data.client_ids)

    def _score(self, state) -> tuple[evaluation.EvalResult, evaluation.EvalResult | None]:
        """Test, then (with a selection) val evaluation of `state`'s model.

        Where each client has its own model (FedBN), each one is scored and the
        results combined (`evaluation.ClientModelsResult`): the global model of
        such a process is used by no client.
        """
        own = self.step.client_models(state)
        shared = self.ema if self.ema is not None else self.step.model_weights(state)
        scored = [self._score_weights(w) for w in own or [shared]]
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
        client_rounds = sum(len(self.step.clients_reporting(r)) for r in range(1, done + 1))
        for round_num in range(done + 1, self.rounds + 1):
            interrupts.raise_if_interrupted()
            t0 = time.monotonic()
            output = self.step.next(state, round_num)
            state = output.state
            if self.ema_decay:
                self._average(state)
            row = _train_row(output.metrics)
            row.update(self.step.participation)
            client_rounds += len(self.step.reported)
            if self.client_bytes is not None:
                row.update(
                    communication.metrics_row(
                        self.client_bytes.times(len(self.step.reported)),
                        self.client_bytes.times(client_rounds),
                    )
                )
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
            saved = (state, self.ema) if self.ema_decay else state
            _run_coroutine(self.state_manager.save(saved, round_num))
            progress.update(round_num, row["seconds"], _progress_metrics(row))
            if runtime.restart_workers_after(round_num, self.restart_workers_every, self.rounds):
                self.printer(f"[federated] fresh TFF worker(s) after round {round_num}")
            memory.trim_heap()
        interrupts.raise_if_interrupted()
        if final_eval is None:  # Nothing left to run: evaluate the restored final state.
            final_eval, final_val = self._score(state)
        if self.selection is None:
            summary, selected = final_eval.summary(), final_eval
        else:
            summary, selected = self.selection.report(self.rounds, final_eval, final_val)
        if self.ema_decay:
            summary["model"] = (
                f"exponential moving average (decay {self.ema_decay:g}) of the global weights"
            )
        seconds = time.monotonic() - start
        outcome = FederatedOutcome(state, final_eval, self.rounds, done, seconds, summary, selected)
        if self.client_bytes is not None:
            outcome.communication = {
                "per_client_per_round": self.client_bytes.as_dict(),
                "client_rounds": client_rounds,
                "total": self.client_bytes.times(client_rounds).as_dict(),
            }
        return outcome

    async def _release(self, row: dict[str, float], round_num: int) -> None:
        await self.csv.release(row, key=round_num)
        await self.tensorboard.release(row, key=round_num)


def _train_row(metrics) -> dict[str, float]:
    if metrics is None:  # No client reported.
        return {"train_loss": math.nan, "train_accuracy": math.nan, "train_examples": 0}
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
