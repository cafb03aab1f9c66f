"""Tests for `tfds:NAME` datasets in tff_vision.data, offline.

CIFAR-10 and MNIST come from `tfds.testing.mock_data` (random examples; CIFAR-10 with metadata
files written here, since the pip package ships none); a tiny builder defined here is prepared
for real to cover reading TFDS files, the `validation` split and resizing exactly.
"""

import os
import pathlib
import tempfile
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest

from tff_vision import data, models, partition

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_EXAMPLES = 20  # Mocked examples per split.


def _test_tmpdir(test: absltest.TestCase) -> pathlib.Path:
    """A fresh directory that also holds this test's `tempfile` files.

    TFDS creates an (empty, never removed) `mkdtemp` directory whenever a builder is made for a
    set that is not prepared yet; here it lands in the test's directory, which absltest removes.
    """
    tmp = pathlib.Path(test.create_tempdir().full_path)
    (tmp / "tempfiles").mkdir()
    test.enter_context(mock.patch.object(tempfile, "tempdir", str(tmp / "tempfiles")))
    return tmp


def _write_metadata(data_dir: pathlib.Path, name: str, splits, class_names=None) -> str:
    """Writes the metadata files of a prepared `name` (no records) under `data_dir`.

    `tfds.testing.mock_data(policy=USE_FILES, data_dir=...)` reads split names and class names
    from them, as from a real prepared dataset.
    """
    builder = tfds.builder(name, data_dir=str(data_dir))
    if class_names is not None:
        builder.info.features["label"].names = list(class_names)
    infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[NUM_EXAMPLES],
            num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_dir,
                dataset_name=builder.name,
                split=split,
                filetype_suffix="tfrecord",
                template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            ),
        )
        for split in splits
    ]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return str(data_dir)


class TffVisionToyImages(tfds.core.GeneratorBasedBuilder):
    """12x12 grey images, constant value 40 * label + 10; two classes; train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(12, 12, 1)),
                    "label": tfds.features.ClassLabel(names=["benign", "malignant"]),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=None,  # Read through the feature dict.
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(10),
            "validation": self._generate_examples(4),
            "test": self._generate_examples(6),
        }

    def _generate_examples(self, n):
        for i in range(n):
            label = i % 2
            image = np.full((12, 12, 1), 40 * label + 10, np.uint8)
            yield i, {"image": image, "label": label, "id": str(i)}


class TffVisionToyText(tfds.core.GeneratorBasedBuilder):
    """A text set: not image classification."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield 0, {"text": "a", "label": 0}


class MockedTfdsTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = _test_tmpdir(self)

    def _cifar10(self, size=None, splits=("train", "test")):
        metadata = _write_metadata(self.tmp / "metadata", "cifar10", splits, CIFAR10_NAMES)
        with tfds.testing.mock_data(
            num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata
        ):
            return data.load("tfds:cifar10", size, data_dir=str(self.tmp), allow_download=False)

    def test_cifar10_native_size_and_carved_val(self):
        ds = self._cifar10()
        self.assertEqual(ds.name, "tfds:cifar10")
        self.assertEqual((ds.size, ds.input_shape, ds.num_classes), (32, (32, 32, 3), 10))
        self.assertEqual(ds.class_names, CIFAR10_NAMES)
        self.assertEqual(ds.task, "multi-class")
        # No `validation` split: the last 10% of train.
        self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (18, 2, 20))
        for split in (ds.train, ds.val, ds.test):
            self.assertEqual(split.images.dtype, np.uint8)
            self.assertEqual(split.images.shape[1:], (32, 32, 3))
            self.assertEqual(split.labels.dtype, np.int64)
            self.assertTrue(np.all((split.labels >= 0) & (split.labels < 10)))
        # Mocked splits hold the same examples: val is the tail of the full train split.
        np.testing.assert_array_equal(ds.val.labels, ds.test.labels[18:])
        np.testing.assert_array_equal(ds.train.images, ds.test.images[:18])

    def test_cifar10_validation_split_and_resize(self):
        ds = self._cifar10(size=28, splits=("train", "validation", "test"))
        self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (20, 20, 20))
        self.assertEqual((ds.size, ds.input_shape), (28, (28, 28, 3)))
        self.assertEqual(ds.train.images.dtype, np.uint8)
        self.assertEqual(ds.train.images.shape, (20, 28, 28, 3))

    def test_size_equal_to_native_reads_unchanged(self):
        np.testing.assert_array_equal(self._cifar10(32).train.images, self._cifar10().train.images)

    def test_mnist_grey_default_mock(self):
        # Default policy, no metadata files: split names unknown, read as train and test.
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            ds = data.load("tfds:mnist", None, data_dir=str(self.tmp))
        self.assertEqual((ds.size, ds.input_shape, ds.num_classes), (28, (28, 28, 1), 10))
        self.assertEqual(ds.train.images.shape, (18, 28, 28, 1))
        self.assertEqual(ds.class_names, tuple(str(i) for i in range(10)))

    def test_feeds_partition_and_model(self):
        ds = self._cifar10()
        part = partition.make_partition(
            "label_exclusion",
            ds.train.labels,
            num_clients=3,
            num_classes=ds.num_classes,
            seed=0,
            exclude="1;2;3",
        )
        self.assertEqual(part.num_classes, 10)
        model = models.build_model("cnn", ds.input_shape, ds.num_classes, seed=0)
        logits = model(ds.test.images[:4].astype(np.float32) / 255.0)
        self.assertEqual(tuple(logits.shape), (4, 10))

    def test_not_prepared_without_download(self):
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            with self.assertRaises(data.DataError) as cm:
                data.load("tfds:cifar10", None, data_dir=str(self.tmp), allow_download=False)
        msg = str(cm.exception)
        self.assertIn("not prepared in " + str(self.tmp / "tfds"), msg)
        self.assertIn(f"tfds build cifar10 --data_dir={self.tmp / 'tfds'}", msg)
        self.assertNotIn("\n", msg)

    def test_failed_download(self):
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            with absltest.mock.patch.object(
                tfds.core.DatasetBuilder,
                "download_and_prepare",
                side_effect=OSError("network unreachable\nmore"),
            ):
                with self.assertRaises(data.DataError) as cm:
                    data.load("tfds:cifar10", None, data_dir=str(self.tmp))
        msg = str(cm.exception)
        self.assertRegex(msg, r"'cifar10' is not prepared in .*network unreachable.*tfds build")
        self.assertNotIn("\n", msg)


class TfdsTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = _test_tmpdir(self)

    def test_prepared_builder(self):
        with self.assertRaisesRegex(data.DataError, "not prepared"):
            data.load("tfds:tff_vision_toy_images", data_dir=str(self.tmp), allow_download=False)
        ds = data.load("tfds:tff_vision_toy_images", None, data_dir=str(self.tmp))
        self.assertTrue((self.tmp / "tfds" / "tff_vision_toy_images" / "1.0.0").is_dir())
        self.assertEqual(ds.source, str(self.tmp / "tfds" / "tff_vision_toy_images" / "1.0.0"))
        self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (10, 4, 6))
        self.assertEqual(ds.class_names, ("benign", "malignant"))
        self.assertEqual(ds.task, "binary-class")
        self.assertEqual((ds.size, ds.input_shape), (12, (12, 12, 1)))
        for split in (ds.train, ds.val, ds.test):
            self.assertCountEqual(np.unique(split.images), np.unique(40 * split.labels + 10))
            np.testing.assert_array_equal(split.images[:, 0, 0, 0], 40 * split.labels + 10)
        # Prepared now; resizing keeps constant images exact.
        big = data.load("tfds:tff_vision_toy_images", 24, str(self.tmp), allow_download=False)
        self.assertEqual(big.train.images.shape, (10, 24, 24, 1))
        self.assertEqual(big.train.images.dtype, np.uint8)
        np.testing.assert_array_equal(
            big.train.images, np.broadcast_to(ds.train.images[:, :1, :1], (10, 24, 24, 1))
        )
        np.testing.assert_array_equal(big.train.labels, ds.train.labels)

    def test_unknown_name(self):
        with self.assertRaises(data.DataError) as cm:
            data.load("tfds:nosuch_dataset_xyz", data_dir=str(self.tmp))
        self.assertEqual(
            str(cm.exception),
            "unknown TFDS dataset 'nosuch_dataset_xyz'; see tfds.list_builders() for the names",
        )
        with self.assertRaisesRegex(data.DataError, "empty TFDS dataset name"):
            data.load("tfds:", data_dir=str(self.tmp))

    def test_not_image_classification(self):
        with self.assertRaisesRegex(data.DataError, "not an image classification set.*text, label"):
            data.load("tfds:tff_vision_toy_text", data_dir=str(self.tmp))

    def test_bad_size(self):
        for size in (4, 1000):
            with self.assertRaisesRegex(data.DataError, f"unsupported image size {size}"):
                data.load("tfds:mnist", size, data_dir=str(self.tmp), allow_download=False)

    def test_data_dir_and_info(self):
        self.assertEqual(data.tfds_data_dir(str(self.tmp)), self.tmp / "tfds")
        with absltest.mock.patch.dict("os.environ", {data.DATA_DIR_ENV: str(self.tmp)}):
            self.assertEqual(data.tfds_data_dir(None), self.tmp / "tfds")
            info = data.dataset_info("tfds:mnist")
        self.assertLen(info["label"], 10)
        self.assertEqual(
            (info["task"], info["n_channels"], info["native_size"]), ("multi-class", 1, 28)
        )
        self.assertTrue(data.is_tfds("TFDS:cifar10"))
        self.assertFalse(data.is_tfds("retinamnist"))


if __name__ == "__main__":
    absltest.main()
