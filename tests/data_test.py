"""Tests for tff_vision.data on the real MedMNIST files in ../shared/medmnist."""

import hashlib
import pathlib
import shutil
import tempfile

import numpy as np
from absl.testing import absltest, parameterized

from tff_vision import data

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "medmnist"


def _require(name):
    path = SHARED / name
    if not path.exists():
        raise absltest.SkipTest(f"real MedMNIST file {path} not present")
    return path


class LoadTest(parameterized.TestCase):
    @parameterized.parameters(
        ("retinamnist", 28, (28, 28, 3), 5, (1080, 120, 400)),
        ("breastmnist", 28, (28, 28, 1), 2, (546, 78, 156)),
        ("breastmnist", 64, (64, 64, 1), 2, (546, 78, 156)),
    )
    def test_real_file(self, name, size, shape, num_classes, sizes):
        _require(data.file_name(name, size))
        ds = data.load(name, size, data_dir=str(SHARED), allow_download=False)
        self.assertEqual(ds.input_shape, shape)
        self.assertEqual(ds.num_classes, num_classes)
        self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), sizes)
        self.assertEqual(ds.train.images.dtype, np.uint8)
        self.assertEqual(ds.train.labels.shape, (sizes[0],))
        self.assertEqual(set(np.unique(ds.train.labels)), set(range(num_classes)))

    def test_class_names_from_info(self):
        _require("breastmnist.npz")
        ds = data.load("breastmnist", data_dir=str(SHARED), allow_download=False)
        self.assertEqual(ds.class_names, ("malignant", "normal, benign"))
        self.assertEqual(ds.task, "binary-class")

    def test_size_none_is_28(self):
        _require("breastmnist.npz")
        ds = data.load("breastmnist", None, data_dir=str(SHARED), allow_download=False)
        self.assertEqual((ds.size, ds.input_shape), (28, (28, 28, 1)))

    def test_data_dir_env(self):
        _require("retinamnist.npz")
        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(data.resolve_data_dir(None), data.DEFAULT_DATA_DIR)
            with absltest.mock.patch.dict("os.environ", {data.DATA_DIR_ENV: tmp}):
                self.assertEqual(data.resolve_data_dir(None), pathlib.Path(tmp))
                self.assertEqual(data.resolve_data_dir("/x"), pathlib.Path("/x"))


class ErrorTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = pathlib.Path(self.create_tempdir().full_path)

    def test_unknown_dataset(self):
        with self.assertRaisesRegex(data.DataError, "unknown dataset 'nosuch'.*retinamnist"):
            data.load("nosuch", data_dir=str(self.tmp))

    def test_3d_and_multilabel_rejected(self):
        with self.assertRaisesRegex(data.DataError, "3D"):
            data.dataset_info("organmnist3d")
        with self.assertRaisesRegex(data.DataError, "multi-label"):
            data.dataset_info("chestmnist")

    def test_bad_size(self):
        with self.assertRaisesRegex(data.DataError, "unsupported image size 32"):
            data.load("retinamnist", 32, data_dir=str(self.tmp))

    def test_missing_file_names_file_and_place(self):
        with self.assertRaises(data.DataError) as cm:
            data.load("octmnist", 64, data_dir=str(self.tmp), allow_download=False)
        msg = str(cm.exception)
        self.assertIn("octmnist_64.npz", msg)
        self.assertIn(str(self.tmp / "octmnist_64.npz"), msg)
        self.assertIn(data.dataset_info("octmnist")["MD5_64"], msg)
        self.assertNotIn("\n", msg)

    def test_failed_download_names_file_and_place(self):
        with absltest.mock.patch(
            "tensorflow.keras.utils.get_file", side_effect=OSError("network unreachable")
        ):
            with self.assertRaisesRegex(
                data.DataError, r"retinamnist\.npz not found.*network unreachable.*put it at"
            ):
                data.load("retinamnist", data_dir=str(self.tmp), allow_download=True)

    def test_corrupt_file(self):
        src = _require("retinamnist.npz")
        target = self.tmp / "retinamnist.npz"
        payload = bytearray(src.read_bytes())
        payload[len(payload) // 2] ^= 0xFF
        target.write_bytes(bytes(payload))
        with self.assertRaisesRegex(data.DataError, "has md5 .* but medmnist INFO expects"):
            data.load("retinamnist", data_dir=str(self.tmp), allow_download=False)

    def test_md5_mismatch_other_dataset_file(self):
        # A real, readable file under the wrong name: md5 does not match INFO.
        shutil.copy(_require("breastmnist.npz"), self.tmp / "retinamnist.npz")
        with self.assertRaisesRegex(data.DataError, "bd4c0672f1bba3e3a89f0e4e876791e4"):
            data.load("retinamnist", data_dir=str(self.tmp), allow_download=False)

    def test_md5sum(self):
        path = self.tmp / "f"
        path.write_bytes(b"abc" * 1000)
        self.assertEqual(data.md5sum(path), hashlib.md5(b"abc" * 1000).hexdigest())


if __name__ == "__main__":
    absltest.main()
