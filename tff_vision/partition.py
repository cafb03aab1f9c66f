"""Partitions of a labelled training set among simulated clients (hospitals).

A partition assigns every training-example index to exactly one client. All
builders are pure numpy, deterministic given ``seed`` (they use only
``np.random.default_rng(seed)``, never the global RNG), return sorted
``int64`` index arrays, and refuse to build a partition with an empty client.

Partition types (the ``spec`` strings accepted by :func:`make_partition`):

* ``iid``: a uniform random split into near-equal parts.
* ``label_exclusion``: client ``i`` lacks the classes of the ``i``-th group of
  an exclusion string such as ``"1;2;3"`` (see :func:`parse_exclude`); each
  class is split evenly among the clients that accept it.
* ``classes:K``: the ``#C=K`` label skew of NIID-Bench (Li et al., 2022): each
  client holds exactly ``K`` distinct classes.
* ``dirichlet:ALPHA``: label-distribution skew; per class, client proportions
  are drawn from ``Dir(ALPHA)`` (small ``ALPHA`` means more skew).
* ``quantity:SIGMA``: quantity skew; client sizes follow a normalised
  ``lognormal(0, SIGMA)``, labels stay IID.
* ``exclude_per_client:K``: ``label_exclusion`` with a rule-generated
  exclusion (see :func:`exclude_per_client`): each client lacks ``K`` classes.

Every failure raises :class:`PartitionError` with a one-line message that names
the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = [
    "PartitionError",
    "Partition",
    "VALID_SPECS",
    "parse_exclude",
    "parse_spec",
    "iid",
    "label_exclusion",
    "classes_per_client",
    "dirichlet",
    "quantity",
    "exclude_per_client",
    "make_partition",
]

# Maximum number of Dirichlet draws before giving up on `min_size`.
_DIRICHLET_MAX_TRIES = 1000

# Spec name -> (parameter type or None, human-readable form).
_SPEC_FORMS = {
    "iid": (None, "iid"),
    "label_exclusion": (None, 'label_exclusion (with --exclude="1;2;3")'),
    "classes": (int, "classes:K (integer K >= 1)"),
    "dirichlet": (float, "dirichlet:ALPHA (ALPHA > 0)"),
    "quantity": (float, "quantity:SIGMA (SIGMA >= 0)"),
    "exclude_per_client": (int, "exclude_per_client:K (integer K >= 0)"),
}

VALID_SPECS = tuple(form for _, form in _SPEC_FORMS.values())
_VALID_SPECS_TEXT = ", ".join(VALID_SPECS)


class PartitionError(ValueError):
    """Raised for a partition that cannot be built.

    The message is one line naming the problem and the fix.
    """


@dataclasses.dataclass(frozen=True)
class Partition:
    """An assignment of training-example indices to clients.

    Attributes:
        spec: The partition spec, e.g. ``"label_exclusion"``, ``"iid"``,
            ``"dirichlet:0.5"``.
        client_indices: One sorted ``int64`` array of training-example indices
            per client. The arrays are disjoint and together cover the set.
        client_classes: The classes each client has: for ``label_exclusion``
            the allowed (non-excluded) classes, otherwise the classes with a
            positive count.
        num_classes: Number of classes of the task.
    """

    spec: str
    client_indices: list[np.ndarray]
    client_classes: list[list[int]]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.client_indices) != len(self.client_classes):
            raise PartitionError(
                f"Partition has {len(self.client_indices)} index arrays but "
                f"{len(self.client_classes)} class lists; give one of each per "
                "client."
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (
            self.spec == other.spec
            and self.num_classes == other.num_classes
            and self.client_classes == other.client_classes
            and len(self.client_indices) == len(other.client_indices)
            and all(np.array_equal(a, b) for a, b in zip(self.client_indices, other.client_indices))
        )

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.client_indices)

    @property
    def sizes(self) -> np.ndarray:
        """Number of examples per client, shape ``(num_clients,)``."""
        return np.array([len(idx) for idx in self.client_indices], dtype=np.int64)

    def counts(self, labels: Any) -> np.ndarray:
        """Per-client class counts.

        Args:
            labels: The training labels the partition was built from, shape
                ``(N,)`` or ``(N, 1)``.

        Returns:
            An ``int64`` array of shape ``(num_clients, num_classes)``.
        """
        labels = _as_labels(labels, self.num_classes)
        table = np.zeros((self.num_clients, self.num_classes), dtype=np.int64)
        for i, idx in enumerate(self.client_indices):
            table[i] = np.bincount(labels[idx], minlength=self.num_classes)
        return table

    def to_frame(
        self, labels: Any, class_names: Sequence[str] | Mapping[Any, str] | None = None
    ) -> pandas.DataFrame:
        """Client-by-class count table with totals.

        Args:
            labels: The training labels the partition was built from.
            class_names: Optional class names, either a sequence of
                ``num_classes`` names or a mapping from class id (int or str,
                as in MedMNIST's ``INFO[...]['label']``) to name. Defaults to
                the integer class ids.

        Returns:
            A DataFrame with one row per client (index named ``'client'``)
            plus a ``'total'`` row, one column per class plus a ``'total'``
            column.
        """
        import pandas as pd  # pylint: disable=import-outside-toplevel

        table = self.counts(labels)
        columns = _class_columns(class_names, self.num_classes)
        frame = pd.DataFrame(
            table,
            columns=columns,
            index=pd.Index(range(self.num_clients), name="client", dtype=object),
        )
        frame["total"] = table.sum(axis=1)
        frame.loc["total"] = frame.sum(axis=0)
        frame.index.name = "client"
        return frame.astype(np.int64)


# ---------------------------------------------------------------------------
# Validation helpers.


def _as_labels(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Returns `labels` as a 1-D int64 array, validating shape and range."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise PartitionError(
            f"labels have shape {arr.shape}; pass a 1-D array of integer "
            "class ids (shape (N,) or (N, 1))."
        )
    if arr.size == 0:
        raise PartitionError("labels are empty; pass the non-empty training labels.")
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise PartitionError(
                f"labels have dtype {arr.dtype} with non-integer values; pass integer class ids."
            )
    arr = arr.astype(np.int64, copy=False)
    low, high = int(arr.min()), int(arr.max())
    if low < 0:
        raise PartitionError(
            f"labels contain the negative class id {low}; class ids must be in [0, num_classes)."
        )
    if num_classes is not None and high >= num_classes:
        raise PartitionError(
            f"labels contain class id {high} but num_classes={num_classes}; "
            "pass the right num_classes or fix the labels."
        )
    return arr


def _check_num_clients(num_clients: Any, num_examples: int) -> int:
    """Validates that there are at least one client and no more than examples."""
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, (int, np.integer))
        or num_clients < 1
    ):
        raise PartitionError(f"num_clients={num_clients!r} is invalid; use an integer >= 1.")
    if num_clients > num_examples:
        raise PartitionError(
            f"num_clients={num_clients} exceeds the {num_examples} training "
            "examples, so some client would be empty; use fewer clients."
        )
    return int(num_clients)


def _check_num_classes(num_classes: Any) -> int:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise PartitionError(f"num_classes={num_classes!r} is invalid; use an integer >= 1.")
    return int(num_classes)


def _check_not_empty(client_indices: Sequence[np.ndarray], spec: str, fix: str) -> None:
    """Raises PartitionError naming the first empty client."""
    for i, idx in enumerate(client_indices):
        if len(idx) == 0:
            raise PartitionError(
                f"partition {spec!r} leaves client {i} with no training examples; {fix}."
            )


def _class_columns(class_names: Any, num_classes: int) -> list[Any]:
    """Column labels for `Partition.to_frame`."""
    if class_names is None:
        return list(range(num_classes))
    if isinstance(class_names, Mapping):
        columns = []
        for c in range(num_classes):
            if c in class_names:
                columns.append(class_names[c])
            elif str(c) in class_names:
                columns.append(class_names[str(c)])
            else:
                raise PartitionError(
                    f"class_names has no entry for class {c}; give a name for "
                    f"every class in [0, {num_classes})."
                )
        return columns
    names = list(class_names)
    if len(names) != num_classes:
        raise PartitionError(
            f"class_names has {len(names)} entries but num_classes="
            f"{num_classes}; give one name per class."
        )
    return names


def _finish(
    spec: str,
    client_indices: Sequence[np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    client_classes: list[list[int]] | None = None,
) -> Partition:
    """Sorts the indices and builds the Partition (classes from counts)."""
    sorted_indices = [np.sort(np.asarray(idx, dtype=np.int64)) for idx in client_indices]
    if client_classes is None:
        client_classes = [
            np.flatnonzero(np.bincount(labels[idx], minlength=num_classes)).astype(int).tolist()
            for idx in sorted_indices
        ]
    return Partition(
        spec=spec,
        client_indices=sorted_indices,
        client_classes=client_classes,
        num_classes=num_classes,
    )


def _fmt_float(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------------------
# Spec parsing.


def parse_exclude(spec: str, num_clients: int, num_classes: int) -> list[list[int]]:
    """Parses an exclusion string into per-client lists of excluded classes.

    Client ``i`` lacks the classes of the ``i``-th ``';'``-separated group. A
    group may list several classes separated by ``','`` or be empty (the client
    lacks nothing): ``"1;2;3"`` -> ``[[1], [2], [3]]`` and ``"1,2;3;"`` ->
    ``[[1, 2], [3], []]``.

    Args:
        spec: The exclusion string.
        num_clients: Number of clients; must equal the number of groups.
        num_classes: Number of classes; class ids must be in
            ``[0, num_classes)``.

    Returns:
        One sorted list of excluded class ids per client.

    Raises:
        PartitionError: For a wrong number of groups, a non-integer entry, a
            class out of range, a class repeated within a group, or a client
            that excludes every class.
    """
    num_classes = _check_num_classes(num_classes)
    if not isinstance(spec, str):
        raise PartitionError(
            f'exclude={spec!r} is not a string; pass e.g. --exclude="1;2;3" '
            "(one ;-separated group of excluded classes per client)."
        )
    groups = spec.split(";")
    if len(groups) != num_clients:
        raise PartitionError(
            f"exclude={spec!r} has {len(groups)} ;-separated group(s) but there "
            f"are {num_clients} clients; give exactly one group per client, "
            'e.g. "1;2;3" for 3 clients (an empty group excludes nothing).'
        )
    excluded = []
    for i, group in enumerate(groups):
        group = group.strip()
        classes: list[int] = []
        if group:
            for token in group.split(","):
                token = token.strip()
                try:
                    c = int(token)
                except ValueError:
                    raise PartitionError(
                        f"exclude={spec!r}: group {i} (client {i}) has "
                        f"non-integer entry {token!r}; use integer class ids "
                        'separated by "," within a group and ";" between '
                        'clients, e.g. "1,2;3;".'
                    ) from None
                if not 0 <= c < num_classes:
                    raise PartitionError(
                        f"exclude={spec!r}: client {i} excludes class {c}, "
                        f"outside [0, {num_classes}); use class ids 0.."
                        f"{num_classes - 1}."
                    )
                if c in classes:
                    raise PartitionError(
                        f"exclude={spec!r}: client {i} lists class {c} twice; "
                        "list each excluded class once per group."
                    )
                classes.append(c)
        if len(classes) == num_classes:
            raise PartitionError(
                f"exclude={spec!r}: client {i} excludes all {num_classes} "
                "classes and would have no data; leave it at least one class."
            )
        excluded.append(sorted(classes))
    return excluded


def parse_spec(spec: str) -> tuple[str, float | int | None]:
    """Parses and validates a partition spec string.

    Args:
        spec: One of ``iid``, ``label_exclusion``, ``classes:K``,
            ``dirichlet:ALPHA``, ``quantity:SIGMA``, ``exclude_per_client:K``.

    Returns:
        ``(name, parameter)``; the parameter is ``None`` for ``iid`` and
        ``label_exclusion``, an ``int`` for ``classes`` and
        ``exclude_per_client``, a ``float`` for ``dirichlet`` and
        ``quantity``.

    Raises:
        PartitionError: For an unknown name or a missing or bad parameter; the
            message lists the valid forms.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PartitionError(
            f"partition spec {spec!r} is empty or not a string; use one of: {_VALID_SPECS_TEXT}."
        )
    name, sep, raw = spec.strip().partition(":")
    name = name.strip().lower()
    raw = raw.strip()
    if name not in _SPEC_FORMS:
        raise PartitionError(f"unknown partition spec {spec!r}; use one of: {_VALID_SPECS_TEXT}.")
    kind, form = _SPEC_FORMS[name]
    if kind is None:
        if sep:
            raise PartitionError(
                f"partition spec {spec!r}: {name!r} takes no parameter; use "
                f"{form!r}. Valid forms: {_VALID_SPECS_TEXT}."
            )
        return name, None
    if not raw:
        raise PartitionError(
            f"partition spec {spec!r} is missing its parameter; use {form}. "
            f"Valid forms: {_VALID_SPECS_TEXT}."
        )
    bad = PartitionError(
        f"partition spec {spec!r} has a bad parameter {raw!r}; use {form}. "
        f"Valid forms: {_VALID_SPECS_TEXT}."
    )
    if kind is int:
        try:
            value: int | float = int(raw)
        except ValueError:
            raise bad from None
        minimum = 1 if name == "classes" else 0
        if value < minimum:
            raise bad
        return name, value
    try:
        value = float(raw)
    except ValueError:
        raise bad from None
    if not math.isfinite(value):
        raise bad
    if name == "dirichlet" and value <= 0:
        raise bad
    if name == "quantity" and value < 0:
        raise bad
    return name, value


# ---------------------------------------------------------------------------
# Partition builders.


def iid(labels: Any, num_clients: int, seed: int) -> Partition:
    """Uniform random split into ``num_clients`` near-equal parts.

    Args:
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        num_clients: Number of clients (``1 <= num_clients <= N``).
        seed: RNG seed.

    Returns:
        The partition; client sizes differ by at most one.
    """
    labels = _as_labels(labels)
    num_classes = int(labels.max()) + 1
    num_clients = _check_num_clients(num_clients, len(labels))
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(len(labels)), num_clients)
    return _finish("iid", parts, labels, num_classes)


def label_exclusion(
    labels: Any, excluded: Sequence[Sequence[int]], num_classes: int, seed: int
) -> Partition:
    """Partition where client ``i`` never sees the classes ``excluded[i]``.

    Every example goes to exactly one client that accepts its class: for each
    class, its indices are shuffled with the seeded RNG and split as evenly as
    possible (``np.array_split``) among the accepting clients, in client order.

    Args:
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        excluded: One sequence of excluded class ids per client (e.g. from
            :func:`parse_exclude`); ``len(excluded)`` is the number of clients.
        num_classes: Number of classes.
        seed: RNG seed.

    Returns:
        The partition; ``client_classes[i]`` are the classes client ``i``
        accepts.

    Raises:
        PartitionError: If a class present in ``labels`` is excluded from every
            client, or if some client ends up with no examples.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _as_labels(labels, num_classes)
    num_clients = _check_num_clients(len(excluded), len(labels))
    allowed = []
    for i, group in enumerate(excluded):
        group_set = {int(c) for c in group}
        bad = sorted(c for c in group_set if not 0 <= c < num_classes)
        if bad:
            raise PartitionError(
                f"client {i} excludes class(es) {bad} outside "
                f"[0, {num_classes}); use class ids 0..{num_classes - 1}."
            )
        allowed.append([c for c in range(num_classes) if c not in group_set])
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        owners = [i for i in range(num_clients) if c in allowed[i]]
        if not owners:
            raise PartitionError(
                f"class {c} ({idx.size} training examples) is excluded from "
                f"every one of the {num_clients} clients; leave it allowed for "
                "at least one client."
            )
        for owner, chunk in zip(owners, np.array_split(rng.permutation(idx), len(owners))):
            parts[owner].append(chunk)
    client_indices = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
    _check_not_empty(
        client_indices,
        "label_exclusion",
        "use fewer clients or a different exclusion so that it keeps a class with enough examples",
    )
    return _finish("label_exclusion", client_indices, labels, num_classes, client_classes=allowed)


def classes_per_client(
    labels: Any, num_clients: int, num_classes: int, k: int, seed: int
) -> Partition:
    """``#C=k`` label skew (NIID-Bench): each client holds exactly ``k`` classes.

    Classes are dealt round-robin over a seeded random ordering of the classes:
    client ``i`` owns ``order[(i * k + j) % num_classes]`` for ``j < k``, so the
    ``k`` classes of a client are distinct and every class has at least one
    owner when ``num_clients * k >= num_classes``. Each class's examples are
    shuffled and split evenly among its owners.

    Args:
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        num_clients: Number of clients.
        num_classes: Number of classes.
        k: Classes per client, ``1 <= k <= num_classes``.
        seed: RNG seed.

    Returns:
        The partition.

    Raises:
        PartitionError: If ``k`` is out of range, the classes cannot all be
            covered (``num_clients * k < num_classes``), or some class has
            fewer examples than owners.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _as_labels(labels, num_classes)
    num_clients = _check_num_clients(num_clients, len(labels))
    spec = f"classes:{k}"
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (1 <= k <= num_classes):
        raise PartitionError(
            f"{spec}: k must be an integer in [1, {num_classes}] (the number "
            "of classes); pick k in that range."
        )
    k = int(k)
    if num_clients * k < num_classes:
        raise PartitionError(
            f"{spec}: {num_clients} clients x {k} classes cannot cover all "
            f"{num_classes} classes; use k >= {math.ceil(num_classes / num_clients)}"
            " or more clients."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    owned = [
        sorted(int(order[(i * k + j) % num_classes]) for j in range(k)) for i in range(num_clients)
    ]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        owners = [i for i in range(num_clients) if c in owned[i]]
        idx = np.flatnonzero(labels == c)
        if idx.size < len(owners):
            raise PartitionError(
                f"{spec}: class {c} has {idx.size} training example(s) but "
                f"{len(owners)} clients own it, so some client would get fewer "
                f"than {k} classes; use fewer clients or a smaller k."
            )
        for owner, chunk in zip(owners, np.array_split(rng.permutation(idx), len(owners))):
            parts[owner].append(chunk)
    client_indices = [np.concatenate(p) for p in parts]
    _check_not_empty(client_indices, spec, "use fewer clients or a larger k")
    return _finish(spec, client_indices, labels, num_classes)


def dirichlet(
    labels: Any, num_clients: int, num_classes: int, alpha: float, seed: int, min_size: int = 1
) -> Partition:
    """Label-distribution skew with Dirichlet-distributed class proportions.

    For each class, client proportions are drawn from ``Dir(alpha, ..., alpha)``
    and the shuffled class indices are cut at those proportions. The whole draw
    is repeated (at most 1000 times) until every client has at least
    ``min_size`` examples.

    Args:
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        num_clients: Number of clients.
        num_classes: Number of classes.
        alpha: Dirichlet concentration, ``> 0``; small means more skew.
        seed: RNG seed.
        min_size: Minimum examples per client, ``>= 1``.

    Returns:
        The partition.

    Raises:
        PartitionError: If ``alpha <= 0``, ``min_size < 1``, or no draw gives
            every client ``min_size`` examples.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _as_labels(labels, num_classes)
    num_clients = _check_num_clients(num_clients, len(labels))
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not (math.isfinite(alpha) and alpha > 0):
        raise PartitionError(
            f"dirichlet alpha={alpha} is invalid; use a finite alpha > 0 "
            "(e.g. 0.1 for strong skew, 100 for near-IID)."
        )
    spec = f"dirichlet:{_fmt_float(alpha)}"
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise PartitionError(f"{spec}: min_size={min_size!r} is invalid; use an integer >= 1.")
    if num_clients * min_size > len(labels):
        raise PartitionError(
            f"{spec}: {num_clients} clients x min_size {min_size} exceeds the "
            f"{len(labels)} training examples; use fewer clients or a smaller "
            "min_size."
        )
    class_idx = [np.flatnonzero(labels == c) for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    for _ in range(_DIRICHLET_MAX_TRIES):
        cuts = []
        totals = np.zeros(num_clients, dtype=np.int64)
        for idx in class_idx:
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cut = (np.cumsum(proportions)[:-1] * idx.size).astype(np.int64)
            cut = np.clip(cut, 0, idx.size)
            totals += np.diff(np.concatenate([[0], cut, [idx.size]]))
            cuts.append(cut)
        if totals.min() >= min_size:
            break
    else:
        raise PartitionError(
            f"{spec}: no Dirichlet draw in {_DIRICHLET_MAX_TRIES} tries gave "
            f"every one of {num_clients} clients >= {min_size} example(s); use "
            "a larger alpha, fewer clients, or a smaller min_size."
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx, cut in zip(class_idx, cuts):
        for owner, chunk in enumerate(np.split(rng.permutation(idx), cut)):
            parts[owner].append(chunk)
    client_indices = [np.concatenate(p) for p in parts]
    _check_not_empty(client_indices, spec, "use fewer clients or a larger alpha")
    return _finish(spec, client_indices, labels, num_classes)


def _quantity_sizes(num_examples: int, proportions: np.ndarray) -> np.ndarray:
    """Splits `num_examples` by `proportions`, giving every client >= 1.

    Each client first gets one example; the rest are divided by largest
    remainder, so equal proportions give sizes that differ by at most one.
    """
    num_clients = proportions.size
    rest = num_examples - num_clients
    share = proportions * rest
    sizes = np.floor(share).astype(np.int64)
    leftover = rest - int(sizes.sum())
    if leftover > 0:
        # Largest fractional part first; stable so ties go to lower indices.
        order = np.argsort(-(share - sizes), kind="stable")
        sizes[order[:leftover]] += 1
    return sizes + 1


def quantity(labels: Any, num_clients: int, sigma: float, seed: int) -> Partition:
    """Quantity skew: lognormal client sizes, IID labels.

    Client proportions are ``lognormal(0, sigma)`` draws normalised to sum to
    one; every client gets at least one example and the examples are a uniform
    random permutation cut at those sizes.

    Args:
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        num_clients: Number of clients (``<= N``).
        sigma: Lognormal sigma, ``>= 0``; ``0`` gives equal sizes (differing by
            at most one).
        seed: RNG seed.

    Returns:
        The partition.

    Raises:
        PartitionError: If ``sigma < 0`` or there are fewer examples than
            clients.
    """
    labels = _as_labels(labels)
    num_classes = int(labels.max()) + 1
    num_clients = _check_num_clients(num_clients, len(labels))
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        sigma = float("nan")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise PartitionError(
            f"quantity sigma={sigma} is invalid; use a finite sigma >= 0 (0 "
            "gives equal client sizes)."
        )
    spec = f"quantity:{_fmt_float(sigma)}"
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)
    sizes = _quantity_sizes(len(labels), weights / weights.sum())
    parts = np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])
    _check_not_empty(parts, spec, "use fewer clients or a smaller sigma")
    return _finish(spec, parts, labels, num_classes)


def exclude_per_client(num_clients: int, num_classes: int, k: int) -> list[list[int]]:
    """Rule-generated exclusion: client ``i`` lacks ``k`` consecutive classes.

    Client ``i`` lacks classes ``(i + j) % num_classes`` for ``j < k``; the
    window rotates with the client index so exclusions spread over the classes.

    Args:
        num_clients: Number of clients (``>= 1``).
        num_classes: Number of classes.
        k: Classes excluded per client, in ``[0, num_classes - 1]``.

    Returns:
        One sorted list of excluded class ids per client, suitable for
        :func:`label_exclusion`.
    """
    num_classes = _check_num_classes(num_classes)
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, (int, np.integer))
        or num_clients < 1
    ):
        raise PartitionError(f"num_clients={num_clients!r} is invalid; use an integer >= 1.")
    if (
        isinstance(k, bool)
        or not isinstance(k, (int, np.integer))
        or not (0 <= k <= num_classes - 1)
    ):
        raise PartitionError(
            f"exclude_per_client:{k}: k must be an integer in "
            f"[0, {num_classes - 1}] so each client keeps a class; pick k in "
            "that range."
        )
    return [sorted((i + j) % num_classes for j in range(k)) for i in range(num_clients)]


def make_partition(
    spec: str,
    labels: Any,
    num_clients: int,
    num_classes: int,
    seed: int,
    exclude: str | None = None,
) -> Partition:
    """Builds a partition from a spec string.

    Args:
        spec: ``iid`` | ``label_exclusion`` | ``classes:K`` |
            ``dirichlet:ALPHA`` | ``quantity:SIGMA`` | ``exclude_per_client:K``.
        labels: Training labels, shape ``(N,)`` or ``(N, 1)``.
        num_clients: Number of clients.
        num_classes: Number of classes.
        seed: RNG seed.
        exclude: Exclusion string for ``label_exclusion`` (see
            :func:`parse_exclude`), e.g. ``"1;2;3"``. Ignored by the other
            partition types, so one flag value can be shared across a sweep.

    Returns:
        The partition; its ``spec`` is the canonical form of ``spec``.

    Raises:
        PartitionError: For an unknown or malformed spec, a missing or bad
            ``exclude``, or a partition that cannot be built.
    """
    name, param = parse_spec(spec)
    num_classes = _check_num_classes(num_classes)
    if name == "iid":
        labels = _as_labels(labels, num_classes)
        return dataclasses.replace(iid(labels, num_clients, seed), num_classes=num_classes)
    if name == "label_exclusion":
        if exclude is None or not str(exclude).strip():
            raise PartitionError(
                'partition "label_exclusion" needs the excluded classes of each '
                'client; pass --exclude, e.g. --exclude="1;2;3" (client i lacks '
                "the classes of the i-th ;-separated group)."
            )
        labels = _as_labels(labels, num_classes)
        _check_num_clients(num_clients, labels.size)
        excluded = parse_exclude(exclude, num_clients, num_classes)
        return label_exclusion(labels, excluded, num_classes, seed)
    if name == "classes":
        return classes_per_client(labels, num_clients, num_classes, param, seed)
    if name == "dirichlet":
        return dirichlet(labels, num_clients, num_classes, param, seed)
    if name == "quantity":
        labels = _as_labels(labels, num_classes)
        return dataclasses.replace(
            quantity(labels, num_clients, param, seed), num_classes=num_classes
        )
    if name == "exclude_per_client":
        labels = _as_labels(labels, num_classes)
        _check_num_clients(num_clients, labels.size)
        excluded = exclude_per_client(num_clients, num_classes, param)
        part = label_exclusion(labels, excluded, num_classes, seed)
        return dataclasses.replace(part, spec=f"exclude_per_client:{param}")
    raise AssertionError(f"unhandled spec {name!r}")  # pragma: no cover
