"""Loads, verifies and downloads MedMNIST datasets.

Files are the official MedMNIST `.npz` archives (`retinamnist.npz`,
`retinamnist_64.npz`, ...). Their URLs, md5 sums, class names, task types and
split sizes come from the `medmnist` package's `INFO` table; only that table is
used from `medmnist` (its dataset classes need PyTorch).

The data directory is, in order: the explicit `data_dir` argument (the
runners' `--data_dir`), the environment variable `TFF_VISION_DATA_DIR`, or
`data/` at the project root.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import pathlib
from typing import Optional

import numpy as np

DATA_DIR_ENV = "TFF_VISION_DATA_DIR"
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"
SIZES = (28, 64, 128, 224)
_SPLITS = ("train", "val", "test")
_SUPPORTED_TASKS = ("multi-class", "binary-class", "ordinal-regression")


class DataError(Exception):
    """A dataset cannot be loaded; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images `(N, H, W, C)` uint8 and integer labels `(N,)` of one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A labelled image-classification dataset with train/val/test splits."""

    name: str
    size: int
    task: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


@functools.lru_cache(maxsize=None)
def medmnist_info() -> dict:
    """Returns `medmnist.INFO`, silencing the package's import-time print."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from medmnist.info import INFO  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise DataError(
            f"cannot import medmnist ({e}); install the project environment with `make env`"
        ) from e
    return INFO


def available_datasets() -> list[str]:
    """Names of the 2D multi-class MedMNIST datasets this package can load."""
    return sorted(
        name
        for name, info in medmnist_info().items()
        if not name.endswith("3d") and info["task"] in _SUPPORTED_TASKS
    )


def dataset_info(name: str) -> dict:
    """Returns the INFO entry of a 2D MedMNIST dataset, or raises DataError."""
    info = medmnist_info()
    key = name.lower()
    if key not in info:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(available_datasets())}"
        )
    if key.endswith("3d"):
        raise DataError(
            f"{name!r} is a 3D dataset; only 2D MedMNIST datasets are "
            f"supported: {', '.join(available_datasets())}"
        )
    if info[key]["task"] not in _SUPPORTED_TASKS:
        raise DataError(
            f"{name!r} is a {info[key]['task']} task; only single-label "
            f"classification is supported: {', '.join(available_datasets())}"
        )
    return info[key]


def file_name(name: str, size: int = 28) -> str:
    """The official file name: `retinamnist.npz`, `retinamnist_64.npz`, ..."""
    _check_size(size)
    return f"{name.lower()}.npz" if size == 28 else f"{name.lower()}_{size}.npz"


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise DataError(
            f"unsupported image size {size}; MedMNIST sizes are {', '.join(map(str, SIZES))}"
        )


def _info_key(key: str, size: int) -> str:
    return key if size == 28 else f"{key}_{size}"


def resolve_data_dir(data_dir: Optional[str] = None) -> pathlib.Path:
    """The data directory: argument, else $TFF_VISION_DATA_DIR, else `data/`."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(chosen).expanduser()


def md5sum(path: os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name: str, size: int, data_dir: pathlib.Path) -> pathlib.Path:
    """Downloads the official file into `data_dir`, checking its md5.

    Raises:
      DataError: naming the exact file expected and where to put it, when the
        download fails (e.g. no network).
    """
    info = dataset_info(name)
    fname = file_name(name, size)
    url, md5 = info[_info_key("url", size)], info[_info_key("MD5", size)]
    target = data_dir / fname
    try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        data_dir.mkdir(parents=True, exist_ok=True)
        path = tf.keras.utils.get_file(
            fname,
            origin=url,
            md5_hash=md5,
            hash_algorithm="md5",
            cache_dir=str(data_dir),
            cache_subdir=".",
        )
    except Exception as e:  # pylint: disable=broad-except
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{fname} not found in {data_dir} and download failed ({reason}); "
            f"download {url} (md5 {md5}) and put it at {target}, or pass "
            f"--data_dir (or set ${DATA_DIR_ENV}) to the folder that holds it"
        ) from e
    return pathlib.Path(path)


def locate(
    name: str, size: int = 28, data_dir: Optional[str] = None, allow_download: bool = True
) -> pathlib.Path:
    """Returns the verified path of a dataset file, downloading it if allowed."""
    info = dataset_info(name)
    _check_size(size)
    root = resolve_data_dir(data_dir)
    path = root / file_name(name, size)
    md5 = info[_info_key("MD5", size)]
    if not path.exists():
        if not allow_download:
            raise DataError(
                f"{path.name} not found in {root}; download "
                f"{info[_info_key('url', size)]} (md5 {md5}) and put it at {path}"
            )
        path = download(name, size, root)
    if not path.is_file():
        raise DataError(f"{path} is not a file; put the official {path.name} there")
    actual = md5sum(path)
    if actual != md5:
        raise DataError(
            f"{path} has md5 {actual} but medmnist INFO expects {md5} (corrupt or "
            f"not the official file); delete it and download "
            f"{info[_info_key('url', size)]} again"
        )
    return path


def load(
    name: str, size: int = 28, data_dir: Optional[str] = None, allow_download: bool = True
) -> ImageDataset:
    """Loads a 2D MedMNIST dataset with md5 verification.

    Args:
      name: dataset name, e.g. 'retinamnist', 'breastmnist', 'octmnist'.
      size: image side, one of 28, 64, 128, 224.
      data_dir: folder holding the `.npz` files (see module docstring).
      allow_download: download from Zenodo when the file is missing.

    Returns:
      An `ImageDataset` with uint8 images of shape `(N, size, size, C)` and
      int64 labels of shape `(N,)`; class names, task and split sizes from INFO.

    Raises:
      DataError: unknown dataset, missing/corrupt/mismatched file.
    """
    info = dataset_info(name)
    path = locate(name, size, data_dir, allow_download)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(
            f"cannot read {path} ({type(e).__name__}: {e}); delete it "
            "and download the official file again"
        ) from e
    splits = {}
    for split in _SPLITS:
        try:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        except KeyError as e:
            raise DataError(
                f"{path} lacks the array {e.args[0]!r}; it is not a "
                "MedMNIST file, replace it with the official one"
            ) from e
        if images.ndim == 3:
            images = images[..., np.newaxis]
        expected = info["n_samples"][split]
        if len(images) != expected or len(labels) != expected:
            raise DataError(
                f"{path}: {split} has {len(images)} images, INFO "
                f"expects {expected}; replace it with the official file"
            )
        splits[split] = Split(images=images, labels=labels.reshape(-1).astype(np.int64))
    class_names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    return ImageDataset(
        name=name.lower(),
        size=size,
        task=info["task"],
        class_names=class_names,
        source=str(path),
        **splits,
    )
