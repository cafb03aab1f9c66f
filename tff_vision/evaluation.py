"""Evaluation of a logits classifier on a labelled test split.

The split is given as numpy arrays: uint8 images `[N, H, W, C]` and integer
labels `[N]` (or `[N, 1]`, as stored in MedMNIST files). Images are scaled
exactly as for training (`client_data.scale_images`) and fed to the model in
batches with `predict_on_batch` (after its one-time trace, the fastest way to
run a Keras model on CPU for a few hundred images; it is cached on the model,
so repeated evaluations of one model do not retrace).

Metrics: accuracy, macro one-vs-rest ROC AUC, mean sparse categorical
cross-entropy, the confusion matrix and, for label-excluding partitions, each
client's "subset accuracy": the accuracy on the test examples whose true class
is one that client holds. `evaluate_logits` computes them all from stored
logits, bit-identically to `evaluate`; `bootstrap_intervals` gives seeded
percentile-bootstrap intervals of accuracy and macro AUC over the examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from sklearn import metrics as sk_metrics

from tff_vision import client_data

DEFAULT_BATCH_SIZE = 256
BOOTSTRAP_RESAMPLES = 1000
_BOOTSTRAP_BLOCK = 100  # Resamples ranked at once: bounds memory for large test splits.


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation of a classifier on a test split.

    Attributes:
        accuracy: Fraction of examples whose arg-max prediction is the label.
        auc: Macro one-vs-rest ROC AUC (see `macro_auc`); NaN if undefined.
        loss: Mean sparse categorical cross-entropy of the logits.
        confusion: int64 `[num_classes, num_classes]`; rows are true classes,
            columns predicted classes.
        per_client_subset_accuracy: Client id ("0", "1", ...) -> accuracy on the
            test examples whose true class that client holds (see
            `subset_accuracy`); empty when no client classes were given.
        per_client_subset_auc: Client id -> macro AUC on those examples (over
            the classes present there; NaN for fewer than 2), or empty.
        num_examples: Number of test examples.
        logits: float32 `[num_examples, num_classes]`, the model's outputs the
            metrics come from (`evaluate_logits` gives them back exactly).
    """

    accuracy: float
    auc: float
    loss: float
    confusion: np.ndarray
    per_client_subset_accuracy: dict[str, float]
    num_examples: int
    logits: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    per_client_subset_auc: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics for CSV / TensorBoard rows (no confusion matrix).

        Args:
            prefix: Prepended to every key, e.g. "eval_" or "test/".

        Returns:
            `{prefix + "accuracy", prefix + "auc", prefix + "loss"}` plus
            `prefix + "subset_accuracy/<client>"` and `prefix + "subset_auc/<client>"`
            for each client, and over the clients `worst_subset_accuracy`,
            `subset_accuracy_spread` (max - min), `worst_subset_auc`, `subset_auc_spread`.
        """
        row = {
            f"{prefix}accuracy": float(self.accuracy),
            f"{prefix}auc": float(self.auc),
            f"{prefix}loss": float(self.loss),
        }
        for client, value in self.per_client_subset_accuracy.items():
            row[f"{prefix}subset_accuracy/{client}"] = float(value)
        for client, value in self.per_client_subset_auc.items():
            row[f"{prefix}subset_auc/{client}"] = float(value)
        row.update({f"{prefix}{k}": v for k, v in self._worst_and_spread().items()})
        return row

    def _worst_and_spread(self) -> dict[str, float]:
        """The lowest per-client subset accuracy and AUC, and max minus min of each."""
        row = {}
        for name, values in (
            ("accuracy", self.per_client_subset_accuracy),
            ("auc", self.per_client_subset_auc),
        ):
            extremes = worst_and_spread(values)
            if extremes is not None:
                row[f"worst_subset_{name}"], row[f"subset_{name}_spread"], _ = extremes
        return row

    def summary(self) -> dict[str, Any]:
        """Test metrics as plain Python floats for a JSON summary.

        NaN values stay NaN (Python's `json` writes them as `NaN`).
        """
        result: dict[str, Any] = {
            "test_accuracy": float(self.accuracy),
            "test_auc": float(self.auc),
            "test_loss": float(self.loss),
        }
        if self.per_client_subset_accuracy:
            result["per_client_subset_accuracy"] = {
                str(k): float(v) for k, v in self.per_client_subset_accuracy.items()
            }
        if self.per_client_subset_auc:
            result["per_client_subset_auc"] = {
                str(k): float(v) for k, v in self.per_client_subset_auc.items()
            }
        result.update(self._worst_and_spread())
        return result


def worst_and_spread(values: dict[str, float]) -> tuple[float, float, str] | None:
    """(lowest value, max - min, the key of the lowest) over the defined values; None if none."""
    defined = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    if not defined:
        return None
    worst = min(defined, key=defined.get)
    return defined[worst], max(defined.values()) - defined[worst], worst


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    return images


def _flat_labels(labels: np.ndarray, num_examples: int | None = None) -> np.ndarray:
    """Labels `[N]` or `[N, 1]` -> int64 `[N]`."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N] or [N, 1], got {labels.shape}")
    if num_examples is not None and len(labels) != num_examples:
        raise ValueError(f"got {len(labels)} labels for {num_examples} examples")
    return labels.astype(np.int64)


def predict_logits(
    model: tf.keras.Model,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flips: bool = False,
) -> np.ndarray:
    """Runs `model` on scaled uint8 `images` in batches.

    Args:
        model: A Keras model mapping float32 images in [0, 1] to logits.
        images: uint8 `[N, H, W, C]`.
        batch_size: Images per forward pass (bounds memory for large inputs).
        flips: Test-time augmentation: the mean of the logits of each image and
            its horizontal, vertical and double flip.

    Returns:
        float32 logits `[N, num_classes]`.
    """
    images = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    if not flips:
        return _predict(model, images, batch_size)
    views = (images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1])
    logits = [_predict(model, np.ascontiguousarray(view), batch_size) for view in views]
    return np.mean(logits, axis=0, dtype=np.float32)


def _predict(model: tf.keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    batches = [
        np.asarray(model.predict_on_batch(client_data.scale_images(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches).astype(np.float32, copy=False)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64)."""
    return np.exp(_log_softmax(logits))


def predict_probabilities(
    model: tf.keras.Model, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Class probabilities `[N, num_classes]` (softmax of the model's logits)."""
    return softmax(predict_logits(model, images, batch_size))


def cross_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of `logits` `[N, C]` at `labels` `[N]`."""
    labels = _flat_labels(labels, len(logits))
    if len(labels) == 0:
        return float("nan")
    log_probs = _log_softmax(logits)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC.

    With 2 classes this is the binary AUC of `probs[:, 1]`. With more, it is
    the mean over the classes present in `labels` of the binary AUC of
    `probs[:, c]` for "label == c" (a class absent from the labels has no
    defined AUC). With all classes present this equals sklearn's
    `roc_auc_score(labels, probs, multi_class="ovr", average="macro")`.

    Args:
        labels: Integer labels `[N]` or `[N, 1]`.
        probs: Scores `[N, num_classes]` (need not sum to 1).

    Returns:
        The AUC, or NaN if fewer than 2 classes are present in `labels`.
    """
    probs = np.asarray(probs)
    labels = _flat_labels(labels, len(probs))
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, num_classes], got {probs.shape}")
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(sk_metrics.roc_auc_score(labels, probs[:, 1]))
    aucs = [sk_metrics.roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def subset_accuracy(
    labels: np.ndarray,
    predictions: np.ndarray,
    client_classes: Sequence[Sequence[int]],
) -> dict[str, float]:
    """Each client's accuracy on the test examples of the classes it holds.

    Args:
        labels: True labels `[N]` or `[N, 1]`.
        predictions: Predicted labels `[N]`.
        client_classes: `client_classes[i]` = the classes client i holds.

    Returns:
        `{str(i): accuracy}`; NaN for a client none of whose classes occur.
    """
    predictions = np.asarray(predictions).reshape(-1)
    labels = _flat_labels(labels, len(predictions))
    result = {}
    for i, classes in enumerate(client_classes):
        mask = np.isin(labels, np.asarray(list(classes), np.int64))
        result[str(i)] = (
            float(np.mean(predictions[mask] == labels[mask])) if mask.any() else float("nan")
        )
    return result


def subset_auc(
    labels: np.ndarray, probs: np.ndarray, client_classes: Sequence[Sequence[int]]
) -> dict[str, float]:
    """Each client's `macro_auc` on the test examples of the classes it holds.

    Returns:
        `{str(i): auc}`; NaN for a client with fewer than 2 of its classes present.
    """
    labels = _flat_labels(labels, len(probs))
    result = {}
    for i, classes in enumerate(client_classes):
        mask = np.isin(labels, np.asarray(list(classes), np.int64))
        result[str(i)] = macro_auc(labels[mask], probs[mask]) if mask.any() else float("nan")
    return result


def evaluate(
    model: tf.keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    client_classes: Sequence[Sequence[int]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flips: bool = False,
) -> EvalResult:
    """Evaluates a logits classifier on a labelled test split.

    Args:
        model: Keras model mapping float32 images in [0, 1] to logits
            `[B, num_classes]`.
        images: uint8 `[N, H, W, C]`, N >= 1.
        labels: Integer labels in `[0, num_classes)`, shape `[N]` or `[N, 1]`.
        num_classes: Number of classes (size of the confusion matrix).
        client_classes: Optional classes of each client for
            `per_client_subset_accuracy`.
        batch_size: Images per forward pass.
        flips: Score the mean logits over flips (see `predict_logits`).

    Returns:
        The `EvalResult`.
    """
    images = _check_images(images)
    labels = _flat_labels(labels, len(images))
    if len(labels) == 0:
        raise ValueError("cannot evaluate on an empty test split")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    logits = predict_logits(model, images, batch_size, flips)
    return evaluate_logits(logits, labels, num_classes, client_classes)


def evaluate_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    client_classes: Sequence[Sequence[int]] | None = None,
) -> EvalResult:
    """The `EvalResult` of a model whose outputs on the split were `logits` `[N, num_classes]`.

    `evaluate` computes its metrics here, so a model's stored float32 logits
    give back exactly the metrics of its evaluation. Stacked logits
    `[clients, N, num_classes]` of each client's own model give back their
    `ClientModelsResult`.
    """
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 3:
        return client_models_result(
            [evaluate_logits(x, labels, num_classes, client_classes) for x in logits]
        )
    labels = _flat_labels(labels, len(logits))
    if logits.shape != (len(labels), num_classes):
        raise ValueError(
            f"model output shape {logits.shape} != ({len(labels)}, {num_classes}) expected"
        )
    predictions = logits.argmax(axis=-1)
    probs = softmax(logits)
    confusion = sk_metrics.confusion_matrix(labels, predictions, labels=range(num_classes))
    client_classes = client_classes or []
    return EvalResult(
        accuracy=float(np.mean(predictions == labels)),
        auc=macro_auc(labels, probs),
        loss=cross_entropy(labels, logits),
        confusion=confusion.astype(np.int64),
        per_client_subset_accuracy=subset_accuracy(labels, predictions, client_classes),
        num_examples=len(labels),
        logits=logits,
        per_client_subset_auc=subset_auc(labels, probs, client_classes),
    )


@dataclasses.dataclass(frozen=True)
class ClientModelsResult(EvalResult):
    """Every client's own model scored on one split, for algorithms without one global model.

    Under FedBN each client's model is the shared weights with its own
    normalization layers (FedPer and FedRep: the shared body with its own head;
    Ditto: its personal model); the model the server holds (with averaged local
    parts) is used by no client, so it is not what is scored.
    `accuracy`, `auc` and `loss` are the mean over clients of each client's own
    model on the whole split (the convention of the FedBN paper's tables);
    `per_client_subset_accuracy`/`_auc` give client k's own model on client
    k's classes; `confusion` is summed over clients; `logits` are stacked
    `[clients, N, num_classes]`.

    Attributes:
        clients: Client id -> its own model's `EvalResult` on the whole split.
        model: What the clients' models are, for summary.json (default `MODEL`).
    """

    clients: dict[str, EvalResult] = dataclasses.field(default_factory=dict, repr=False)
    model: str = dataclasses.field(default="", compare=False)

    MODEL = (
        "each client's own model (fedbn: the shared weights with its own normalization layers; "
        "fedper, fedrep: the shared body with its own head; ditto: its personal model)"
    )

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """`EvalResult.as_dict` plus `prefix + "client/<k>/accuracy"` and `.../auc`."""
        row = super().as_dict(prefix)
        for client, result in self.clients.items():
            row[f"{prefix}client/{client}/accuracy"] = float(result.accuracy)
            row[f"{prefix}client/{client}/auc"] = float(result.auc)
        return row

    def summary(self) -> dict[str, Any]:
        """`EvalResult.summary`, saying which models the numbers come from, and each client's."""
        result = super().summary()
        result["model"] = self.model or self.MODEL
        result["metrics_are"] = "mean over clients of each client's own model"
        result["per_client"] = {
            client: {
                "test_accuracy": float(r.accuracy),
                "test_auc": float(r.auc),
                "subset_accuracy": self.per_client_subset_accuracy.get(client, float("nan")),
                "subset_auc": self.per_client_subset_auc.get(client, float("nan")),
            }
            for client, r in self.clients.items()
        }
        return result


def client_models_result(results: Sequence[EvalResult], model: str = "") -> ClientModelsResult:
    """Combines `results[k]`, client k's own model on a split, into a `ClientModelsResult`.

    `model` says what the clients' models are (default `ClientModelsResult.MODEL`).
    """
    if not results:
        raise ValueError("need one evaluation per client, got none")
    clients = {str(k): r for k, r in enumerate(results)}
    logits = [r.logits for r in results]
    return ClientModelsResult(
        accuracy=float(np.mean([r.accuracy for r in results])),
        auc=float(np.mean([r.auc for r in results])),
        loss=float(np.mean([r.loss for r in results])),
        confusion=np.sum([r.confusion for r in results], axis=0),
        per_client_subset_accuracy={
            k: r.per_client_subset_accuracy[k]
            for k, r in clients.items()
            if k in r.per_client_subset_accuracy
        },
        num_examples=results[0].num_examples,
        logits=None if any(x is None for x in logits) else np.stack(logits),
        per_client_subset_auc={
            k: r.per_client_subset_auc[k]
            for k, r in clients.items()
            if k in r.per_client_subset_auc
        },
        clients=clients,
        model=model,
    )


def bootstrap_intervals(
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile-bootstrap intervals of accuracy and macro AUC over the examples.

    Each of `resamples` resamples draws N example indices with replacement
    (numpy `default_rng(seed)`: the same seed and N give the same resamples,
    so arms scored on one split are resampled alike) and recomputes accuracy
    and `macro_auc` (from ranks, all resamples at once; equal to `macro_auc`
    of the resample up to rounding; a resample with fewer than 2 classes has
    no AUC and is left out). The interval is the central `level` of the
    resampled values.

    Stacked logits `[clients, N, num_classes]` (a `ClientModelsResult`'s)
    give intervals of the mean over clients: each resample scores every
    client's model on the same examples.

    Returns:
        `{"accuracy": [lo, hi], "auc": [lo, hi]}`; NaN bounds where undefined.
    """
    logits = np.asarray(logits)
    stacked = logits if logits.ndim == 3 else logits[None]
    labels = _flat_labels(labels, stacked.shape[1])
    if len(labels) == 0 or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need examples, resamples >= 1 and 0 < level < 1, got {level}")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(labels), size=(resamples, len(labels)))
    scores = [_resampled_scores(labels, client_logits, indices) for client_logits in stacked]
    accuracy = np.mean([acc for acc, _ in scores], axis=0)
    auc = np.mean([auc for _, auc in scores], axis=0)
    tail = 50.0 * (1.0 - level)
    return {"accuracy": _percentiles(accuracy, tail), "auc": _percentiles(auc, tail)}


def _resampled_scores(
    labels: np.ndarray, logits: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro AUC of one model's `logits` on each resample `indices[b]`."""
    probs = softmax(logits)
    correct = logits.argmax(axis=-1) == labels
    accuracy = correct[indices].mean(axis=1)
    auc = np.concatenate(
        [
            _resampled_macro_auc(labels, probs, indices[i : i + _BOOTSTRAP_BLOCK])
            for i in range(0, len(indices), _BOOTSTRAP_BLOCK)
        ]
    )
    return accuracy, auc


def _percentiles(values: np.ndarray, tail: float) -> list[float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(values, [tail, 100.0 - tail])]


def _resampled_macro_auc(labels: np.ndarray, probs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`macro_auc` of each resample `labels[indices[b]]`, `probs[indices[b]]`, vectorized.

    A resample is the count of each example in it. One-vs-rest AUC of class c
    is then the Mann-Whitney statistic over the examples sorted once by
    `probs[:, c]`: count-weighted pairs (positive, negative) ranked right, ties
    counting one half, over all pairs; this equals the ROC area sklearn computes.
    """
    blocks, n = indices.shape
    offsets = (np.arange(blocks) * n)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=blocks * n).reshape(blocks, n)
    counts = counts.astype(np.float64)
    num_classes = probs.shape[1]
    present = sum(counts[:, labels == c].sum(axis=1) > 0 for c in range(num_classes))
    aucs = np.stack(
        [_weighted_auc(labels == c, probs[:, c], counts) for c in _auc_classes(num_classes)]
    )
    defined = np.isfinite(aucs)  # The classes present in the resample (all, if 2 or more).
    auc = np.where(defined, aucs, 0.0).sum(axis=0) / np.maximum(defined.sum(axis=0), 1)
    return np.where(present >= 2, auc, np.nan)


def _auc_classes(num_classes: int) -> range:
    """The classes `macro_auc` averages over: class 1 alone for a binary task."""
    return range(1, 2) if num_classes == 2 else range(num_classes)


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC of `scores` for `positive` `[N]` under each row of example counts `[B, N]`."""
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)  # Groups of tied scores.
    sorted_counts, sorted_positive = counts[:, order], positive[order]
    pos = np.add.reduceat(sorted_counts * sorted_positive, starts, axis=1)
    neg = np.add.reduceat(sorted_counts * ~sorted_positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # Negatives scored lower than each group.
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return wins / (pos.sum(axis=1) * neg.sum(axis=1))
