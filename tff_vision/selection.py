"""Which round each arm reports: the best on the validation split (MedMNIST's protocol) or the last.

MedMNIST ships train/val/test splits, and its published tables give the test
metrics of the checkpoint with the best validation AUC. Every arm (the
federated model, each local-only baseline, the pooled baseline) is scored on
val whenever it is evaluated, and a `Selection` keeps the round the arm
reports under its rule: `best_val`, the round with the highest val AUC (the
earliest of ties; a round without a defined val AUC never beats one with it),
or `final`, the last round. The kept round's number, val metrics and test
logits live in one small .npz written atomically before the round's
checkpoint, so a killed and resumed run selects exactly what an uninterrupted
one does. `Selection.report` gives the arm's summary.json entry: the test
metrics of the selected round with 95% bootstrap intervals, the round, its
val metrics, and the last round's test metrics beside them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tff_vision import client_data, evaluation, fileio
from tff_vision.config import SELECTIONS
from tff_vision.data import ImageDataset, Split
from tff_vision.evaluation import EvalResult


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The held-out splits every arm is scored on, and how it is scored on them.

    Attributes:
        test, val: The test and validation splits.
        num_classes: Number of classes.
        client_classes: The classes each client holds (test subset accuracies), or None.
        bootstrap_seed: Seed of the test-set bootstrap (the same resamples for every arm).
        flips: Score every model by its mean logits over flips (test-time augmentation).
    """

    test: Split
    val: Split
    num_classes: int
    client_classes: Sequence[Sequence[int]] | None = None
    bootstrap_seed: int = 0
    flips: bool = False

    def evaluate_test(self, model: tf.keras.Model) -> EvalResult:
        """`model` on the test split, with per-client subset accuracies."""
        return evaluation.evaluate(
            model,
            images=self.test.images,
            labels=self.test.labels,
            num_classes=self.num_classes,
            client_classes=self.client_classes,
            flips=self.flips,
        )

    def evaluate_val(self, model: tf.keras.Model) -> EvalResult:
        """`model` on the validation split."""
        return evaluation.evaluate(
            model, self.val.images, self.val.labels, self.num_classes, flips=self.flips
        )

    def test_from_logits(self, logits: np.ndarray) -> EvalResult:
        """The test evaluation of a model whose test logits were `logits` (exactly)."""
        return evaluation.evaluate_logits(
            logits, self.test.labels, self.num_classes, self.client_classes
        )

    def intervals(self, logits: np.ndarray) -> dict[str, list[float]]:
        """95% bootstrap intervals of test accuracy and AUC: `{"test_accuracy": [lo, hi], ...}`."""
        ci = evaluation.bootstrap_intervals(self.test.labels, logits, seed=self.bootstrap_seed)
        return {"test_accuracy": ci["accuracy"], "test_auc": ci["auc"]}


def held_out(
    dataset: ImageDataset,
    client_classes: Sequence[Sequence[int]] | None,
    seed: int,
    flips: bool = False,
) -> HeldOut:
    """The `HeldOut` of `dataset`, its bootstrap seeded from the experiment's `seed`."""
    return HeldOut(
        dataset.test,
        dataset.val,
        dataset.num_classes,
        client_classes,
        client_data.derive_seed(seed, "bootstrap"),
        flips,
    )


@dataclasses.dataclass(frozen=True)
class Kept:
    """The round an arm reports so far: its number, val metrics and test logits."""

    round: int
    val_accuracy: float
    val_auc: float
    test_logits: np.ndarray


class Selection:
    """The round one arm reports under `rule` ("best_val" or "final"), kept in `path`.

    With "best_val", `offer` is called after each evaluated round (in round
    order; a resumed run offers the rounds it redoes again, which give the
    same results) and keeps a round that beats the kept one in `path`;
    a new `Selection` on the same path continues from what is kept there.
    With "final", nothing is kept: the last round is reported.
    """

    def __init__(self, rule: str, held_out: HeldOut, path: pathlib.Path):
        if rule not in SELECTIONS:
            raise ValueError(f"unknown selection {rule!r}; use one of: {', '.join(SELECTIONS)}")
        self.rule, self.held_out, self.path = rule, held_out, pathlib.Path(path)
        self.kept = _load(self.path) if rule == "best_val" else None

    def offer(
        self, round_num: int, val: EvalResult, test: EvalResult | Callable[[], EvalResult]
    ) -> bool:
        """Keeps round `round_num`, scored `val`, if it is better.

        Args:
            round_num: The round.
            val: Its val evaluation.
            test: Its test evaluation, or a function giving it (called only if kept).

        Returns:
            Whether the round was kept.
        """
        if self.rule != "best_val" or not _beats(val.auc, self.kept):
            return False
        result = test() if callable(test) else test
        self.kept = Kept(round_num, float(val.accuracy), float(val.auc), result.logits)
        _save(self.path, self.kept)
        return True

    def report(
        self, final_round: int, final_test: EvalResult, final_val: EvalResult
    ) -> tuple[dict[str, Any], EvalResult]:
        """The arm's summary entry and the test evaluation of its selected round.

        Args:
            final_round: The last round.
            final_test, final_val: Test and val evaluations of the last round's model.
        """
        if self.kept is None:
            selected, test = final_round, final_test
            val_accuracy, val_auc = float(final_val.accuracy), float(final_val.auc)
        else:
            selected, test = self.kept.round, self.held_out.test_from_logits(self.kept.test_logits)
            val_accuracy, val_auc = self.kept.val_accuracy, self.kept.val_auc
        summary = {
            **test.summary(),
            "ci95": self.held_out.intervals(test.logits),
            "selected_round": selected,
            "select": self.rule,
            "val_accuracy": val_accuracy,
            "val_auc": val_auc,
            "final": {"round": final_round, **final_test.summary()},
        }
        return summary, test


def _beats(val_auc: float, kept: Kept | None) -> bool:
    """Whether a round of `val_auc` replaces `kept`: strictly higher; NaN is lowest."""
    if kept is None:
        return True
    if np.isnan(val_auc):
        return False
    return np.isnan(kept.val_auc) or val_auc > kept.val_auc


def _save(path: pathlib.Path, kept: Kept) -> None:
    def write(tmp: pathlib.Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                round=np.int64(kept.round),
                val=np.array([kept.val_accuracy, kept.val_auc], np.float64),
                test_logits=np.asarray(kept.test_logits, np.float32),
            )

    fileio.write_with_atomic(path, write)


def _load(path: pathlib.Path) -> Kept | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        val_accuracy, val_auc = (float(v) for v in f["val"])
        return Kept(int(f["round"]), val_accuracy, val_auc, f["test_logits"])
