"""Tests for tff_vision.partition (pure numpy; runs in a few seconds)."""

import os

import numpy as np
from absl.testing import absltest, parameterized

from tff_vision import partition
from tff_vision.partition import PartitionError

_RETINA_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "medmnist", "retinamnist.npz"
)

_NUM_CLASSES = 5


def _labels(n=600, num_classes=_NUM_CLASSES, seed=0):
    """Synthetic labels where every class occurs, with unequal class sizes."""
    rng = np.random.default_rng(seed)
    probs = np.arange(1, num_classes + 1, dtype=float)
    labels = rng.choice(num_classes, size=n, p=probs / probs.sum())
    labels[:num_classes] = np.arange(num_classes)
    return labels.astype(np.int64)


def _build(kind, labels, num_clients, seed):
    """Builds one partition of each type with fixed, valid parameters."""
    if kind == "iid":
        return partition.iid(labels, num_clients, seed)
    if kind == "label_exclusion":
        excluded = [[i % _NUM_CLASSES] for i in range(num_clients)]
        return partition.label_exclusion(labels, excluded, _NUM_CLASSES, seed)
    if kind == "classes":
        return partition.classes_per_client(labels, num_clients, _NUM_CLASSES, 2, seed)
    if kind == "dirichlet":
        return partition.dirichlet(labels, num_clients, _NUM_CLASSES, 0.5, seed)
    if kind == "quantity":
        return partition.quantity(labels, num_clients, 1.0, seed)
    if kind == "exclude_per_client":
        return partition.make_partition(
            "exclude_per_client:1", labels, num_clients, _NUM_CLASSES, seed
        )
    raise ValueError(kind)


_KINDS = [
    (k,)
    for k in ("iid", "label_exclusion", "classes", "dirichlet", "quantity", "exclude_per_client")
]


def _tv_from_global(part, labels):
    """Mean total-variation distance of client label mixes from the global."""
    counts = part.counts(labels).astype(float)
    global_dist = counts.sum(axis=0) / counts.sum()
    client_dist = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(client_dist - global_dist).sum(axis=1)))


class CommonPropertiesTest(parameterized.TestCase):
    def assertValidPartition(self, part, labels, num_clients):
        n = len(np.asarray(labels).reshape(-1))
        self.assertLen(part.client_indices, num_clients)
        self.assertLen(part.client_classes, num_clients)
        for i, idx in enumerate(part.client_indices):
            self.assertEqual(idx.dtype, np.int64)
            self.assertEqual(idx.ndim, 1)
            self.assertGreater(len(idx), 0, f"client {i} is empty")
            self.assertTrue(np.all(np.diff(idx) > 0), f"client {i} indices not strictly ascending")
        allidx = np.concatenate(part.client_indices)
        # Disjoint and covering: the concatenation is a permutation of 0..N-1.
        np.testing.assert_array_equal(np.sort(allidx), np.arange(n))

    @parameterized.parameters(*_KINDS)
    def test_disjoint_covering_nonempty(self, kind):
        labels = _labels()
        for num_clients in (1, 3, 4):
            if kind == "classes" and num_clients * 2 < _NUM_CLASSES:
                continue
            if kind in ("label_exclusion", "exclude_per_client") and (num_clients == 1):
                continue  # A single excluding client drops a whole class.
            part = _build(kind, labels, num_clients, seed=3)
            self.assertValidPartition(part, labels, num_clients)
            self.assertEqual(part.num_classes, _NUM_CLASSES)

    @parameterized.parameters(*_KINDS)
    def test_same_seed_same_partition(self, kind):
        labels = _labels()
        a = _build(kind, labels, 4, seed=11)
        b = _build(kind, labels, 4, seed=11)
        self.assertEqual(a, b)
        for x, y in zip(a.client_indices, b.client_indices):
            np.testing.assert_array_equal(x, y)
        self.assertEqual(a.client_classes, b.client_classes)

    @parameterized.parameters(*_KINDS)
    def test_different_seed_different_partition(self, kind):
        labels = _labels()
        a = _build(kind, labels, 4, seed=1)
        b = _build(kind, labels, 4, seed=2)
        self.assertNotEqual(a, b)
        self.assertFalse(
            all(
                len(x) == len(y) and np.array_equal(x, y)
                for x, y in zip(a.client_indices, b.client_indices)
            )
        )

    @parameterized.parameters(*_KINDS)
    def test_does_not_touch_global_rng(self, kind):
        np.random.seed(0)
        expected = np.random.random_sample(3)
        np.random.seed(0)
        _build(kind, _labels(), 4, seed=5)
        np.testing.assert_array_equal(np.random.random_sample(3), expected)

    @parameterized.parameters(*_KINDS)
    def test_accepts_column_labels(self, kind):
        labels = _labels()
        flat = _build(kind, labels, 4, seed=7)
        column = _build(kind, labels.reshape(-1, 1).astype(np.uint8), 4, seed=7)
        self.assertEqual(flat, column)

    @parameterized.parameters(*_KINDS)
    def test_client_classes_match_counts(self, kind):
        labels = _labels()
        part = _build(kind, labels, 4, seed=0)
        counts = part.counts(labels)
        for i, classes in enumerate(part.client_classes):
            # For the exclusion types these are the allowed classes, which
            # all occur here; for the others, the classes with count > 0.
            self.assertEqual(np.flatnonzero(counts[i]).tolist(), classes)

    @parameterized.parameters(0, -1, 2.5, True)
    def test_bad_num_clients(self, num_clients):
        labels = _labels()
        with self.assertRaises(PartitionError):
            partition.iid(labels, num_clients, 0)
        with self.assertRaises(PartitionError):
            partition.dirichlet(labels, num_clients, _NUM_CLASSES, 1.0, 0)
        with self.assertRaises(PartitionError):
            partition.quantity(labels, num_clients, 1.0, 0)

    def test_more_clients_than_examples(self):
        labels = np.array([0, 1, 2])
        for fn in (
            lambda: partition.iid(labels, 4, 0),
            lambda: partition.quantity(labels, 4, 0.0, 0),
            lambda: partition.dirichlet(labels, 4, 3, 1.0, 0),
        ):
            with self.assertRaisesRegex(PartitionError, "fewer clients"):
                fn()

    def test_bad_labels(self):
        with self.assertRaisesRegex(PartitionError, "shape"):
            partition.iid(np.zeros((4, 2), np.int64), 2, 0)
        with self.assertRaisesRegex(PartitionError, "empty"):
            partition.iid(np.zeros(0, np.int64), 1, 0)
        with self.assertRaisesRegex(PartitionError, "num_classes"):
            partition.dirichlet(np.array([0, 1, 7]), 2, 5, 1.0, 0)
        with self.assertRaisesRegex(PartitionError, "negative"):
            partition.iid(np.array([0, -1, 1]), 2, 0)
        with self.assertRaisesRegex(PartitionError, "non-integer"):
            partition.iid(np.array([0.5, 1.0]), 2, 0)


class IidTest(absltest.TestCase):
    def test_sizes_balanced(self):
        part = partition.iid(_labels(n=601), 4, seed=0)
        sizes = part.sizes
        self.assertEqual(sizes.sum(), 601)
        self.assertLessEqual(sizes.max() - sizes.min(), 1)
        self.assertEqual(part.spec, "iid")


class LabelExclusionTest(parameterized.TestCase):
    def test_exclusion_and_balance(self):
        labels = _labels(n=1000)
        excluded = [[1], [2, 3], []]
        part = partition.label_exclusion(labels, excluded, _NUM_CLASSES, seed=0)
        counts = part.counts(labels)
        self.assertEqual(part.spec, "label_exclusion")
        for i, ex in enumerate(excluded):
            allowed = [c for c in range(_NUM_CLASSES) if c not in ex]
            self.assertEqual(part.client_classes[i], allowed)
            for c in ex:
                self.assertEqual(counts[i, c], 0, f"client {i} has class {c}")
            for c in allowed:
                self.assertGreater(counts[i, c], 0, f"client {i} lacks class {c}")
        totals = np.bincount(labels, minlength=_NUM_CLASSES)
        np.testing.assert_array_equal(counts.sum(axis=0), totals)
        for c in range(_NUM_CLASSES):
            accepting = [i for i, ex in enumerate(excluded) if c not in ex]
            per_client = counts[accepting, c]
            self.assertLessEqual(
                per_client.max() - per_client.min(), 1, f"class {c} split unevenly: {per_client}"
            )

    def test_class_excluded_everywhere(self):
        labels = _labels()
        with self.assertRaisesRegex(PartitionError, r"class 1 .*excluded from every"):
            partition.label_exclusion(labels, [[1], [1, 2]], _NUM_CLASSES, 0)

    def test_absent_class_may_be_excluded_everywhere(self):
        labels = np.array([0, 0, 1, 1, 2, 2])  # Class 3 never occurs.
        part = partition.label_exclusion(labels, [[3], [3]], 4, 0)
        self.assertEqual(part.client_classes, [[0, 1, 2], [0, 1, 2]])

    def test_empty_client_is_named(self):
        # Client 2 only accepts class 0, which has one example that goes to
        # client 0 (the first accepting client).
        labels = np.array([0, 1, 1, 2, 2])
        with self.assertRaisesRegex(PartitionError, r"client 2 .*fewer clients"):
            partition.label_exclusion(labels, [[], [0], [1, 2]], 3, 0)

    def test_one_line_messages(self):
        labels = _labels()
        with self.assertRaises(PartitionError) as cm:
            partition.label_exclusion(labels, [[1], [1]], _NUM_CLASSES, 0)
        self.assertNotIn("\n", str(cm.exception))

    def test_make_partition_matches_direct_call(self):
        labels = _labels()
        via_spec = partition.make_partition(
            "label_exclusion", labels, 3, _NUM_CLASSES, 4, exclude="1;2;3"
        )
        direct = partition.label_exclusion(labels, [[1], [2], [3]], _NUM_CLASSES, 4)
        self.assertEqual(via_spec, direct)

    @parameterized.parameters(None, "", "   ")
    def test_make_partition_needs_exclude(self, exclude):
        with self.assertRaisesRegex(PartitionError, r'--exclude="1;2;3"'):
            partition.make_partition(
                "label_exclusion", _labels(), 3, _NUM_CLASSES, 0, exclude=exclude
            )


class ParseExcludeTest(parameterized.TestCase):
    @parameterized.parameters(
        ("1;2;3", 3, [[1], [2], [3]]),
        ("1,2;3;", 3, [[1, 2], [3], []]),
        (" 2 , 0 ; ;4", 3, [[0, 2], [], [4]]),
        ("", 1, [[]]),
        ("0,1,2,3", 1, [[0, 1, 2, 3]]),
    )
    def test_valid(self, spec, num_clients, expected):
        self.assertEqual(partition.parse_exclude(spec, num_clients, _NUM_CLASSES), expected)

    @parameterized.named_parameters(
        ("too_few_groups", "1;2", 3, r"'1;2' has 2 .*3 clients"),
        ("too_many_groups", "1;2;3;4", 3, r"has 4 .*3 clients"),
        ("non_integer", "1;x;3", 3, r"non-integer entry 'x'"),
        ("empty_entry", "1,,2;3;4", 3, r"non-integer entry ''"),
        ("float", "1.5;2;3", 3, r"non-integer entry '1.5'"),
        ("out_of_range", "1;5;3", 3, r"class 5, outside \[0, 5\)"),
        ("negative", "-1;2;3", 3, r"class -1, outside"),
        ("duplicate", "1,1;2;3", 3, r"client 0 lists class 1 twice"),
        ("excludes_all", "0,1,2,3,4;2;3", 3, r"client 0 excludes all 5"),
    )
    def test_errors(self, spec, num_clients, regex):
        with self.assertRaisesRegex(PartitionError, regex) as cm:
            partition.parse_exclude(spec, num_clients, _NUM_CLASSES)
        self.assertNotIn("\n", str(cm.exception))

    def test_not_a_string(self):
        with self.assertRaises(PartitionError):
            partition.parse_exclude([[1], [2]], 2, _NUM_CLASSES)


class ClassesPerClientTest(parameterized.TestCase):
    @parameterized.parameters((3, 2), (5, 1), (4, 3), (2, 5), (7, 2))
    def test_exactly_k_classes_all_covered(self, num_clients, k):
        labels = _labels(n=700)
        part = partition.classes_per_client(labels, num_clients, _NUM_CLASSES, k, seed=0)
        counts = part.counts(labels)
        self.assertEqual(part.spec, f"classes:{k}")
        for i in range(num_clients):
            self.assertEqual(int(np.count_nonzero(counts[i])), k)
            self.assertLen(part.client_classes[i], k)
        # Every class owned by someone, so every example placed.
        self.assertTrue(np.all(counts.sum(axis=0) > 0))
        np.testing.assert_array_equal(
            counts.sum(axis=0), np.bincount(labels, minlength=_NUM_CLASSES)
        )

    def test_owners_split_evenly(self):
        labels = _labels(n=700)
        part = partition.classes_per_client(labels, 4, _NUM_CLASSES, 3, 1)
        counts = part.counts(labels)
        for c in range(_NUM_CLASSES):
            owned = counts[:, c][counts[:, c] > 0]
            self.assertLessEqual(owned.max() - owned.min(), 1)

    @parameterized.parameters(
        (2, 2, "cannot cover all 5 classes"),  # 2 * 2 < 5.
        (3, 0, r"k must be an integer in \[1, 5\]"),
        (3, 6, r"k must be an integer in \[1, 5\]"),
    )
    def test_errors(self, num_clients, k, regex):
        with self.assertRaisesRegex(PartitionError, regex):
            partition.classes_per_client(_labels(), num_clients, _NUM_CLASSES, k, 0)

    def test_too_few_examples_for_owners(self):
        labels = np.array([0] * 10 + [1] * 10 + [2])
        with self.assertRaisesRegex(PartitionError, "class 2 has 1"):
            partition.classes_per_client(labels, 3, 3, 3, 0)


class DirichletTest(parameterized.TestCase):
    def test_small_alpha_is_more_skewed(self):
        labels = _labels(n=2000, num_classes=10)

        def mean_tv(alpha):
            return np.mean(
                [
                    _tv_from_global(partition.dirichlet(labels, 10, 10, alpha, seed), labels)
                    for seed in range(5)
                ]
            )

        skewed, near_iid = mean_tv(0.1), mean_tv(10.0)
        self.assertGreater(skewed, 0.45)
        self.assertLess(near_iid, 0.25)
        self.assertGreater(skewed, 2.5 * near_iid)

    @parameterized.parameters(0.0, -1.0, float("nan"), float("inf"))
    def test_bad_alpha(self, alpha):
        with self.assertRaisesRegex(PartitionError, "alpha"):
            partition.dirichlet(_labels(), 3, _NUM_CLASSES, alpha, 0)

    def test_min_size_respected(self):
        labels = _labels(n=1000)
        for seed in range(3):
            part = partition.dirichlet(labels, 5, _NUM_CLASSES, 0.3, seed, min_size=40)
            self.assertGreaterEqual(part.sizes.min(), 40)
            self.assertEqual(part.spec, "dirichlet:0.3")

    def test_impossible_min_size(self):
        labels = _labels(n=100)
        with self.assertRaisesRegex(PartitionError, "smaller min_size"):
            partition.dirichlet(labels, 5, _NUM_CLASSES, 1.0, 0, min_size=30)
        # Feasible in size, but one class per client and near-zero alpha make
        # an even split astronomically unlikely: gives up after bounded tries.
        labels = np.repeat(np.arange(2), 50)
        with self.assertRaisesRegex(PartitionError, "larger alpha"):
            partition.dirichlet(labels, 4, 2, 1e-3, 0, min_size=20)


class QuantityTest(absltest.TestCase):
    def test_sigma_zero_equal_sizes(self):
        labels = _labels(n=603)
        for seed in range(3):
            sizes = partition.quantity(labels, 7, 0.0, seed).sizes
            self.assertEqual(sizes.sum(), 603)
            self.assertLessEqual(sizes.max() - sizes.min(), 1)

    def test_large_sigma_more_spread(self):
        labels = _labels(n=2000)

        def mean_cv(sigma):
            cvs = []
            for seed in range(5):
                sizes = partition.quantity(labels, 10, sigma, seed).sizes
                cvs.append(sizes.std() / sizes.mean())
            return np.mean(cvs)

        self.assertLess(mean_cv(0.1), 0.2)
        self.assertGreater(mean_cv(1.5), 0.6)
        self.assertGreater(mean_cv(1.5), 3 * mean_cv(0.1))

    def test_every_client_nonempty_at_extreme_sigma(self):
        labels = _labels(n=50)
        part = partition.quantity(labels, 20, 5.0, 0)
        self.assertGreaterEqual(part.sizes.min(), 1)
        self.assertEqual(part.sizes.sum(), 50)

    def test_labels_iid(self):
        labels = _labels(n=3000)
        part = partition.quantity(labels, 5, 0.0, 0)
        self.assertLess(_tv_from_global(part, labels), 0.08)
        # Skewed sizes, but big clients still look like the global mix.
        part = partition.quantity(labels, 5, 0.5, 1)
        counts = part.counts(labels).astype(float)
        global_dist = counts.sum(axis=0) / counts.sum()
        for i in np.flatnonzero(part.sizes >= 300):
            dist = counts[i] / counts[i].sum()
            self.assertLess(0.5 * np.abs(dist - global_dist).sum(), 0.12)

    def test_bad_sigma(self):
        with self.assertRaisesRegex(PartitionError, "sigma"):
            partition.quantity(_labels(), 3, -0.5, 0)


class ExcludePerClientTest(parameterized.TestCase):
    @parameterized.parameters((3, 0), (3, 1), (4, 2), (6, 4))
    def test_each_client_lacks_k(self, num_clients, k):
        excluded = partition.exclude_per_client(num_clients, _NUM_CLASSES, k)
        self.assertLen(excluded, num_clients)
        for ex in excluded:
            self.assertLen(ex, k)
            self.assertLen(set(ex), k)
            self.assertTrue(all(0 <= c < _NUM_CLASSES for c in ex))
        if k:
            # Rotation: consecutive clients exclude different class sets.
            self.assertNotEqual(excluded[0], excluded[1])

    @parameterized.parameters(-1, 5)
    def test_bad_k(self, k):
        with self.assertRaises(PartitionError):
            partition.exclude_per_client(3, _NUM_CLASSES, k)

    def test_make_partition_valid(self):
        labels = _labels()
        part = partition.make_partition("exclude_per_client:1", labels, 3, _NUM_CLASSES, 0)
        self.assertEqual(part.spec, "exclude_per_client:1")
        counts = part.counts(labels)
        excluded = partition.exclude_per_client(3, _NUM_CLASSES, 1)
        for i, ex in enumerate(excluded):
            self.assertEqual(counts[i, ex[0]], 0)
            self.assertEqual(int(np.count_nonzero(counts[i])), _NUM_CLASSES - 1)
        np.testing.assert_array_equal(
            np.sort(np.concatenate(part.client_indices)), np.arange(len(labels))
        )

    def test_make_partition_bad_k(self):
        with self.assertRaisesRegex(PartitionError, r"\[0, 4\]"):
            partition.make_partition("exclude_per_client:5", _labels(), 3, _NUM_CLASSES, 0)


class CountsAndFrameTest(parameterized.TestCase):
    @parameterized.parameters(*_KINDS)
    def test_counts_equal_bincount(self, kind):
        labels = _labels()
        part = _build(kind, labels, 4, seed=2)
        counts = part.counts(labels)
        self.assertEqual(counts.shape, (4, _NUM_CLASSES))
        for i, idx in enumerate(part.client_indices):
            expected = np.bincount(labels[idx], minlength=_NUM_CLASSES)
            np.testing.assert_array_equal(counts[i], expected)

    def test_to_frame(self):
        labels = _labels()
        part = partition.dirichlet(labels, 3, _NUM_CLASSES, 1.0, 0)
        frame = part.to_frame(labels)
        self.assertEqual(frame.index.name, "client")
        self.assertEqual(list(frame.index), [0, 1, 2, "total"])
        self.assertEqual(list(frame.columns), list(range(_NUM_CLASSES)) + ["total"])
        counts = part.counts(labels)
        np.testing.assert_array_equal(frame.iloc[:3, :_NUM_CLASSES].to_numpy(), counts)
        np.testing.assert_array_equal(
            frame["total"].to_numpy()[:3], [len(i) for i in part.client_indices]
        )
        np.testing.assert_array_equal(
            frame.loc["total"].to_numpy()[:_NUM_CLASSES],
            np.bincount(labels, minlength=_NUM_CLASSES),
        )
        self.assertEqual(frame.loc["total", "total"], len(labels))

    def test_to_frame_class_names(self):
        labels = _labels()
        part = partition.iid(labels, 2, 0)
        names = ["a", "b", "c", "d", "e"]
        frame = part.to_frame(labels, class_names=names)
        self.assertEqual(list(frame.columns), names + ["total"])
        by_str_key = part.to_frame(labels, class_names={str(i): n for i, n in enumerate(names)})
        self.assertTrue(frame.equals(by_str_key))
        with self.assertRaises(PartitionError):
            part.to_frame(labels, class_names=["a", "b"])


class MakePartitionTest(parameterized.TestCase):
    @parameterized.parameters(
        ("iid", ("iid", None)),
        ("label_exclusion", ("label_exclusion", None)),
        ("classes:3", ("classes", 3)),
        ("dirichlet:0.5", ("dirichlet", 0.5)),
        ("quantity:0", ("quantity", 0.0)),
        (" Dirichlet : 1e-1 ", ("dirichlet", 0.1)),
        ("exclude_per_client:0", ("exclude_per_client", 0)),
    )
    def test_parse_spec(self, spec, expected):
        name, value = partition.parse_spec(spec)
        self.assertEqual((name, value), expected)
        self.assertIsInstance(value, type(expected[1]))

    @parameterized.parameters(
        "bogus",
        "",
        "iid:2",
        "dirichlet",
        "dirichlet:abc",
        "dirichlet:0",
        "dirichlet:-0.1",
        "dirichlet:nan",
        "classes:0",
        "classes:1.5",
        "classes:",
        "quantity:-1",
        "quantity:inf",
        "exclude_per_client:-1",
        "label_exclusion:1",
    )
    def test_bad_specs_list_valid_forms(self, spec):
        with self.assertRaisesRegex(
            PartitionError,
            r"iid, label_exclusion.*dirichlet:ALPHA"
            r".*exclude_per_client:K",
        ) as cm:
            partition.make_partition(spec, _labels(), 3, _NUM_CLASSES, 0)
        self.assertNotIn("\n", str(cm.exception))

    @parameterized.parameters(
        ("iid", "iid"),
        ("classes:2", "classes:2"),
        ("dirichlet:0.50", "dirichlet:0.5"),
        ("quantity:1", "quantity:1"),
        ("label_exclusion", "label_exclusion"),
    )
    def test_dispatch(self, spec, canonical):
        labels = _labels()
        part = partition.make_partition(spec, labels, 3, _NUM_CLASSES, 0, exclude="1;2;3")
        self.assertEqual(part.spec, canonical)
        self.assertEqual(part.num_classes, _NUM_CLASSES)
        self.assertLen(part.client_indices, 3)

    def test_num_classes_kept_when_top_class_absent(self):
        labels = np.array([0, 1, 0, 1, 2, 2])  # Classes 3 and 4 never occur.
        for spec in ("iid", "quantity:1"):
            part = partition.make_partition(spec, labels, 2, 5, 0)
            self.assertEqual(part.num_classes, 5)
            self.assertEqual(part.counts(labels).shape, (2, 5))


class RetinaMnistTest(absltest.TestCase):
    def test_label_exclusion_on_real_labels(self):
        if not os.path.exists(_RETINA_PATH):
            self.skipTest(
                f"RetinaMNIST file not found at {_RETINA_PATH}; "
                "this test needs the shared MedMNIST data."
            )
        with np.load(_RETINA_PATH, allow_pickle=False) as data:
            labels = data["train_labels"]
        self.assertEqual(labels.shape[0], 1080)
        part = partition.make_partition("label_exclusion", labels, 3, 5, seed=0, exclude="1;2;3")
        counts = part.counts(labels)
        flat = labels.reshape(-1).astype(np.int64)
        totals = np.bincount(flat, minlength=5)
        np.testing.assert_array_equal(counts.sum(axis=0), totals)
        self.assertEqual(counts.sum(), 1080)
        for client, excluded_class in enumerate((1, 2, 3)):
            self.assertEqual(counts[client, excluded_class], 0)
            for c in range(5):
                if c != excluded_class:
                    self.assertGreater(counts[client, c], 0)
        # Classes 0 and 4 go to all three clients; 1, 2, 3 to two each.
        for c in range(5):
            owners = counts[:, c][counts[:, c] > 0]
            self.assertLen(owners, 3 if c in (0, 4) else 2)
            self.assertLessEqual(owners.max() - owners.min(), 1)
        frame = part.to_frame(labels)
        self.assertEqual(frame.loc["total", "total"], 1080)
        self.assertEqual(frame.loc[0, 1], 0)


if __name__ == "__main__":
    absltest.main()
