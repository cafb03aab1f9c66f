"""Loads, verifies and downloads MedMNIST and TensorFlow Datasets (TFDS) image sets.

Files are the official MedMNIST `.npz` archives (`retinamnist.npz`,
`retinamnist_64.npz`, ...). Their URLs, md5 sums, class names, task types and
split sizes come from the `medmnist` package's `INFO` table; only that table is
used from `medmnist` (its dataset classes need PyTorch).

The data directory is, in order: the explicit `data_dir` argument (the
runners' `--data_dir`), the environment variable `TFF_VISION_DATA_DIR`, or
`data/` at the project root.

`tfds:NAME` (e.g. `tfds:cifar10`, `tfds:mnist`, `tfds:NAME/CONFIG:VERSION`) loads an image
classification set through `tensorflow_datasets` instead; its files live in `<data dir>/tfds`
(see `load_tfds`). Every split is read fully into memory as numpy arrays, as for MedMNIST.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import pathlib

import numpy as np

DATA_DIR_ENV = "TFF_VISION_DATA_DIR"
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"
SIZES = (28, 64, 128, 224)
TFDS_PREFIX = "tfds:"
TFDS_SUBDIR = "tfds"
TFDS_SIZE_RANGE = (8, 512)
TFDS_VAL_FRACTION = 0.1
TFDS_VAL_MAX = 5000
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


@functools.cache
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
    """Names of the 2D multi-class MedMNIST datasets this package can load.

    Any TFDS image classification set also loads as `tfds:NAME` (e.g. `tfds:cifar10`); those
    names are not listed here (see `tfds.list_builders()`).
    """
    return sorted(
        name
        for name, info in medmnist_info().items()
        if not name.endswith("3d") and info["task"] in _SUPPORTED_TASKS
    )


def is_tfds(name: str) -> bool:
    """Whether `name` selects a TFDS dataset (`tfds:NAME`)."""
    return name.lower().startswith(TFDS_PREFIX)


def dataset_info(name: str) -> dict:
    """Returns the INFO entry of a 2D MedMNIST dataset, or raises DataError.

    For `tfds:NAME` it returns a dict in the same layout built from the TFDS metadata
    (`label`, `task`, `n_channels`, `n_samples` of the TFDS splits, `source`); nothing is
    downloaded. Class names may be placeholders ('0', '1', ...) until the set is prepared.
    """
    if is_tfds(name):
        return _tfds_dataset_info(name)
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


def resolve_data_dir(data_dir: str | None = None) -> pathlib.Path:
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
    name: str, size: int = 28, data_dir: str | None = None, allow_download: bool = True
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
    name: str,
    size: int | None = 28,
    data_dir: str | None = None,
    allow_download: bool = True,
) -> ImageDataset:
    """Loads a 2D MedMNIST dataset with md5 verification, or a TFDS set (`tfds:NAME`).

    Args:
      name: dataset name, e.g. 'retinamnist', 'breastmnist', 'octmnist', or
        'tfds:NAME' such as 'tfds:cifar10' (see `load_tfds`).
      size: image side. MedMNIST: one of 28, 64, 128, 224 (None: 28). TFDS: None for the
        native size, else resize to `size x size` (8..512).
      data_dir: folder holding the `.npz` files (see module docstring); TFDS sets live in
        its `tfds/` subfolder.
      allow_download: download from Zenodo (TFDS: download and prepare) when missing.

    Returns:
      An `ImageDataset` with uint8 images of shape `(N, size, size, C)` and
      int64 labels of shape `(N,)`; class names, task and split sizes from INFO.

    Raises:
      DataError: unknown dataset, missing/corrupt/mismatched file.
    """
    if is_tfds(name):
        return load_tfds(name, size, data_dir, allow_download)
    if size is None:
        size = 28
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


# TensorFlow Datasets (`tfds:NAME`).


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tfds_name(name: str) -> str:
    tfds_name = name[len(TFDS_PREFIX) :].strip()
    if not tfds_name:
        raise DataError(f"empty TFDS dataset name in {name!r}; pass e.g. --dataset=tfds:cifar10")
    return tfds_name


def tfds_data_dir(data_dir: str | None = None) -> pathlib.Path:
    """The TFDS data directory: `<resolve_data_dir(data_dir)>/tfds`."""
    return resolve_data_dir(data_dir) / TFDS_SUBDIR


def _import_tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise DataError(
            f"cannot import tensorflow_datasets ({e}); install the project environment with "
            "`make env`"
        ) from e
    return tfds


def _tfds_builder(name: str, data_dir: str | None):
    """Returns `(tfds module, builder, TFDS data dir)` for `tfds:NAME`, or raises DataError."""
    tfds = _import_tfds()
    tfds_name = _tfds_name(name)
    root = tfds_data_dir(data_dir)
    try:
        builder = tfds.builder(tfds_name, data_dir=str(root))
    except tfds.core.DatasetNotFoundError as e:
        raise DataError(
            f"unknown TFDS dataset {tfds_name!r}; see tfds.list_builders() for the names"
        ) from e
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(
            f"cannot open TFDS dataset {tfds_name!r} ({_first_line(e)}); check the name, "
            "config and version (NAME[/CONFIG][:VERSION], see tfds.list_builders())"
        ) from e
    return tfds, builder, root


def _tfds_keys(tfds, builder, name: str) -> tuple[str, str, bool]:
    """`(image key, label key, as_supervised)` of an image classification set.

    The dataset's `supervised_keys` are used when they name an `Image` and a `ClassLabel`
    feature; otherwise the features `image` and `label`.
    """
    features = builder.info.features
    names = list(features.keys()) if hasattr(features, "keys") else []
    candidates = []
    keys = builder.info.supervised_keys
    if isinstance(keys, (tuple, list)) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        candidates.append((keys[0], keys[1], True))
    candidates.append(("image", "label", False))
    for image_key, label_key, supervised in candidates:
        if (
            image_key in names
            and label_key in names
            and isinstance(features[image_key], tfds.features.Image)
            and isinstance(features[label_key], tfds.features.ClassLabel)
        ):
            dtype = np.dtype(features[image_key].np_dtype)
            if dtype != np.uint8:
                raise DataError(
                    f"{name} has {dtype} images; only uint8 images are supported, pick another "
                    "TFDS dataset"
                )
            return image_key, label_key, supervised
    raise DataError(
        f"{name} is not an image classification set (needs an Image feature 'image' and a "
        f"ClassLabel feature 'label'; it has: {', '.join(names) or 'none'}); pick another "
        "TFDS dataset"
    )


def _tfds_size(name: str, size: int | None, shape: tuple) -> tuple[int, bool]:
    """`(image side, whether to resize)` for the native image `shape` `(H, W, C)`."""
    height, width = shape[0], shape[1]
    if size is None:
        if height is None or width is None or height != width:
            raise DataError(
                f"{name} images are not of one square size ({height}x{width}); pass a size, "
                "e.g. --size=64"
            )
        return int(height), False
    low, high = TFDS_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not low <= size <= high:
        raise DataError(
            f"unsupported image size {size} for {name}; TFDS sets take {low}..{high} "
            "(or None for the native size)"
        )
    return int(size), (height != size or width != size)


def _tfds_dataset_info(name: str) -> dict:
    tfds, builder, _ = _tfds_builder(name, None)
    image_key, label_key, _ = _tfds_keys(tfds, builder, name)
    features = builder.info.features
    class_names = features[label_key].names
    shape = features[image_key].shape
    return {
        "label": {str(i): n for i, n in enumerate(class_names)},
        "task": "binary-class" if len(class_names) == 2 else "multi-class",
        "n_channels": shape[-1],
        "n_samples": {s: info.num_examples for s, info in builder.info.splits.items()},
        "native_size": shape[0] if shape[0] == shape[1] else None,
        "source": "tfds",
    }


def _read_tfds_split(tfds, builder, split: str, keys: tuple, size: int, resize: bool) -> Split:
    """Reads one TFDS split fully into memory as uint8 `(N, size, size, C)` and int64 labels."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    image_key, label_key, supervised = keys
    ds = builder.as_dataset(split=split, as_supervised=supervised, shuffle_files=False)
    if not supervised:
        ds = ds.map(lambda ex: (ex[image_key], ex[label_key]))

    def convert(image, label):
        if len(image.shape) == 2:
            image = image[..., tf.newaxis]
        if resize:
            image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return image, label

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    images, labels = [], []
    for batch_images, batch_labels in tfds.as_numpy(ds):
        images.append(batch_images)
        labels.append(batch_labels)
    channels = builder.info.features[image_key].shape[-1] or 1
    if not images:
        return Split(np.zeros((0, size, size, channels), np.uint8), np.zeros((0,), np.int64))
    return Split(
        images=np.concatenate(images).astype(np.uint8, copy=False),
        labels=np.concatenate(labels).reshape(-1).astype(np.int64),
    )


def load_tfds(
    name: str,
    size: int | None = None,
    data_dir: str | None = None,
    allow_download: bool = True,
) -> ImageDataset:
    """Loads a TFDS image classification set, `tfds:NAME`, as an `ImageDataset`.

    `NAME` is anything `tfds.builder` takes (`cifar10`, `mnist`, `NAME/CONFIG:VERSION`). The
    TFDS data directory is `<data dir>/tfds`, the data dir resolved as for MedMNIST
    (`data_dir`, else `$TFF_VISION_DATA_DIR`, else `data/`). An unprepared set is downloaded
    and prepared there when `allow_download`; to work offline, run
    `tfds build NAME --data_dir=<data dir>/tfds` on a machine with network and copy the folder.

    Images come from the `supervised_keys` when they name an `Image` and a `ClassLabel`
    feature, else from the features `image` and `label`; class names are the `ClassLabel`
    names (recorded when the set is prepared). Grey images keep a channel dimension of 1.

    Splits: TFDS `train` and `test`; `val` is TFDS `validation` when the set has one, else the
    last 10% (at most 5000) of TFDS `train` in its stored order, which is deterministic, and
    `train` is the rest. Metadata without split information (e.g. `tfds.testing.mock_data`
    without metadata files) is read as `train` and `test`.

    All splits are read fully into memory as numpy arrays (as for MedMNIST).

    Args:
      name: `tfds:NAME`.
      size: None for the native size (square images only); else resize to `size x size`
        (8..512) with bilinear, antialiased `tf.image.resize`, rounded and clipped to uint8.
        A size equal to the native one reads the images unchanged.
      data_dir: data directory; TFDS files live in its `tfds/` subfolder.
      allow_download: run `download_and_prepare` when the set is not prepared.

    Returns:
      An `ImageDataset` named `tfds:NAME` with task 'multi-class' ('binary-class' for two
      classes) and `source` the prepared dataset folder.

    Raises:
      DataError: unknown name, not an image classification set, bad size, not prepared and
        download disabled or failed, missing splits or unreadable files.
    """
    tfds, builder, root = _tfds_builder(name, data_dir)
    tfds_name = _tfds_name(name)
    label = f"{TFDS_PREFIX}{tfds_name}"
    keys = _tfds_keys(tfds, builder, label)
    side, resize = _tfds_size(label, size, builder.info.features[keys[0]].shape)
    _tfds_prepare(builder, tfds_name, root, allow_download)
    splits = _read_tfds_splits(tfds, builder, label, keys, side, resize)
    train = splits["train"]
    val = splits.get("validation")
    if val is None:
        train, val = _split_off_val(train)
    class_names = tuple(builder.info.features[keys[1]].names)
    return ImageDataset(
        name=label,
        size=side,
        task="binary-class" if len(class_names) == 2 else "multi-class",
        class_names=class_names,
        train=train,
        val=val,
        test=splits["test"],
        source=str(builder.data_dir),
    )


def _tfds_prepare(builder, tfds_name: str, root: pathlib.Path, allow_download: bool) -> None:
    """Downloads and prepares the set unless it is prepared; a `DataError` says how to fix."""
    if builder.is_prepared():
        return
    offline_fix = (
        f"run `tfds build {tfds_name} --data_dir={root}` on a machine with network and copy "
        f"{root / builder.name} here, or pass --data_dir (or set ${DATA_DIR_ENV}) to the folder "
        f"whose {TFDS_SUBDIR}/ holds it"
    )
    if not allow_download:
        raise DataError(f"TFDS dataset {tfds_name!r} is not prepared in {root}; {offline_fix}")
    try:
        builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(
            f"TFDS dataset {tfds_name!r} is not prepared in {root} and download failed "
            f"({_first_line(e)}); {offline_fix}"
        ) from e


def _read_tfds_splits(tfds, builder, label: str, keys, side, resize) -> dict[str, Split]:
    """TFDS `train`, `test` and (when the set has it) `validation`, read into memory."""
    available = list(builder.info.splits.keys()) or ["train", "test"]
    missing = [s for s in ("train", "test") if s not in available]
    if missing:
        raise DataError(
            f"{label} has splits {', '.join(available)} but no {' and '.join(missing)}; pick a "
            "TFDS dataset with 'train' and 'test' splits"
        )
    try:
        return {
            split: _read_tfds_split(tfds, builder, split, keys, side, resize)
            for split in ("train", "test") + (("validation",) if "validation" in available else ())
        }
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(
            f"cannot read {label} from {builder.data_dir} ({_first_line(e)}); delete that "
            "folder and prepare the dataset again"
        ) from e


def _split_off_val(train: Split) -> tuple[Split, Split]:
    """The last `TFDS_VAL_FRACTION` (at most `TFDS_VAL_MAX`, at least 1 of 2+) as val."""
    n = len(train)
    n_val = min(TFDS_VAL_MAX, int(n * TFDS_VAL_FRACTION))
    if n >= 2:
        n_val = max(1, n_val)
    cut = n - n_val
    return (
        Split(train.images[:cut], train.labels[:cut]),
        Split(train.images[cut:], train.labels[cut:]),
    )
