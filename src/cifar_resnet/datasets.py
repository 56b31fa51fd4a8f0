"""CIFAR-100 / CIFAR-10 data: sources -> :class:`CifarData`.

Sources are the official python archives (downloaded with an md5 check, or a local ``.tar.gz``), their
extracted folders, or an ``.npz`` in the layout of ``keras.datasets.cifar100.load_data``. Every source
ends up as uint8 NHWC RGB images with int64 labels, so nothing downstream cares where the data came
from. The official files are pickles; they are read with a restricted unpickler that can only build
numpy arrays, lists, bytes and numbers, so a tampered archive cannot run code.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import pickle
import posixpath
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

try:  # numpy >= 2 moved the pickle helper; files written by numpy 1.x / python 2 name the old module
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_TO_COARSE",
    "DATASETS",
    "CifarData",
    "DataError",
    "Split",
    "channel_stats",
    "describe",
    "download",
    "load_archive",
    "load_data",
    "load_folder",
    "load_npz",
    "split_validation",
    "subsample",
]


class DataError(ValueError):
    """A problem with the user's data (missing, corrupt, malformed); the message is one line."""


# --------------------------------------------------------------------------------------------------
# Constants (names and the fine -> coarse mapping of the official CIFAR-100 meta file)
# --------------------------------------------------------------------------------------------------

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip

CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

# Derived once from the real training split (every fine class has exactly one coarse label there).
CIFAR100_FINE_TO_COARSE: np.ndarray = np.array(
    [
        4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
        6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
        5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
        10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
        16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
    ],
    dtype=np.int64,
)  # fmt: skip
CIFAR100_FINE_TO_COARSE.flags.writeable = False  # a shared constant: nobody may edit it in place

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

DATASETS: dict[str, dict[str, str]] = {
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
    },
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
    },
}

_NUM_CLASSES = {"cifar100": 100, "cifar10": 10}
_NUM_COARSE = 20
_IMAGE_SHAPE = (32, 32, 3)
_ROW_SIZE = 32 * 32 * 3
# Files each official layout must contain, in the order their images are concatenated.
_CIFAR100_FILES = ("train", "test", "meta")
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
_LAYOUT_FILES = {"cifar100": _CIFAR100_FILES, "cifar10": _CIFAR10_FILES}
DEFAULT_ROOT = Path("~/.cache/cifar-resnet")


def _one_line(text: object) -> str:
    """Error messages are printed by the CLI as one line; collapse whatever an exception said."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: array fields make a generated __eq__ meaningless
class Split:
    """One split: uint8 NHWC RGB images with int64 fine (and optionally coarse) labels."""

    images: np.ndarray
    labels: np.ndarray
    coarse: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != _IMAGE_SHAPE:
            raise DataError(
                f"Split: images must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}"
            )
        n = images.shape[0]
        # Normalise here so that every consumer can rely on the documented dtypes and layout.
        object.__setattr__(self, "images", np.ascontiguousarray(images))
        object.__setattr__(self, "labels", _as_label_array(self.labels, n, "Split: labels"))
        if self.coarse is not None:
            object.__setattr__(self, "coarse", _as_label_array(self.coarse, n, "Split: coarse labels"))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> Split:
        """The images at ``idx`` (integer indices or a boolean mask), as a new independent Split."""
        idx = np.asarray(idx)
        coarse = None if self.coarse is None else self.coarse[idx]
        return Split(self.images[idx], self.labels[idx], coarse)


def _as_label_array(values: Any, n: int, what: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.shape[0] != n or not (labels.dtype.kind in "iu" or labels.size == 0):
        raise DataError(f"{what} must be 1-D integers of length {n}, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class CifarData:
    """A dataset: train split, optional official test split, optional held-out validation split."""

    name: str
    train: Split
    test: Split | None
    val: Split | None
    classes: tuple[str, ...]
    coarse_classes: tuple[str, ...] | None
    source: str

    def __post_init__(self) -> None:
        if self.name not in _NUM_CLASSES:
            raise DataError(
                f"{self.source}: unknown dataset name {self.name!r} (expected cifar100 or cifar10)"
            )
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.classes) != _NUM_CLASSES[self.name]:
            raise DataError(
                f"{self.source}: {self.name} needs {_NUM_CLASSES[self.name]} class names, got {len(self.classes)}"
            )
        if self.coarse_classes is not None:
            object.__setattr__(self, "coarse_classes", tuple(self.coarse_classes))
        for split_name, split in (("train", self.train), ("test", self.test), ("val", self.val)):
            if split is None:
                continue
            _check_range(split.labels, self.num_classes, f"{self.source}: {split_name} labels")
            if split.coarse is not None:
                if self.coarse_classes is None:
                    raise DataError(
                        f"{self.source}: {split_name} has coarse labels but no coarse class names"
                    )
                _check_range(
                    split.coarse, len(self.coarse_classes), f"{self.source}: {split_name} coarse labels"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def eval_split(self) -> tuple[str, Split]:
        """The split to evaluate on: the held-out validation split if there is one, else the official test."""
        if self.val is not None:
            return "val", self.val
        if self.test is not None:
            return "test", self.test
        raise DataError(
            f"{self.source}: has neither a validation nor a test split; hold one out with split_validation"
        )

    def get_split(self, name: str) -> Split:
        """The split called ``name`` ("train", "val" or "test")."""
        available = [n for n in ("train", "val", "test") if getattr(self, n) is not None]
        if name in ("train", "val", "test") and getattr(self, name) is not None:
            return getattr(self, name)
        kind = "no" if name in ("train", "val", "test") else "unknown"
        raise DataError(f"{self.source}: {kind} split {name!r} (available: {', '.join(available)})")


def _check_range(labels: np.ndarray, num: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num):
        raise DataError(f"{what} must lie in 0..{num - 1}, found {labels.min()}..{labels.max()}")


# --------------------------------------------------------------------------------------------------
# Safe unpickling of the official files
# --------------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes bytes this way under pickle protocol 2."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin1")


def _safe_dtype(*args: Any) -> np.dtype:
    # Object arrays could hold arbitrary unpickled objects; CIFAR only ever stores plain numbers.
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


# Everything the official files (python 2 cPickle of numpy arrays) and their protocol-2 re-pickles by
# Python 3 need; nothing else can be named by the pickle stream, so nothing else can be called.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: IO[bytes], where: str) -> None:
        # encoding="bytes": the files are python 2 pickles whose str keys/names must stay bytes.
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: refusing to unpickle {module}.{name} (not part of the official CIFAR files)"
            ) from None


def _unpickle(file: IO[bytes], where: str) -> dict[str, Any]:
    """Read one official pickle (a dict) from ``file``; keys come back as str."""
    try:
        obj = _RestrictedUnpickler(file, where).load()
    except DataError:
        raise
    except (EOFError, OSError, zlib.error) as e:  # a truncated/damaged gzip stream surfaces here too
        raise DataError(f"{where}: truncated or corrupt ({_one_line(e) or type(e).__name__})") from e
    except Exception as e:  # any failure to parse is the file's fault, reported as such
        raise DataError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {_one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _get(batch: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in batch:
        raise DataError(f"{where}: missing key {key!r} (has {', '.join(sorted(batch))})")
    return batch[key]


def _rows_to_images(batch: Mapping[str, Any], where: str) -> np.ndarray:
    data = _get(batch, "data", where)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _ROW_SIZE
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    # Each row is the red plane, then green, then blue (CHW); we keep images NHWC.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _batch_labels(batch: Mapping[str, Any], key: str, n: int, num: int, where: str) -> np.ndarray:
    values = _get(batch, key, where)
    try:
        labels = np.asarray(values)
    except Exception as e:  # ragged or odd contents
        raise DataError(f"{where}: {key!r} is not a list of integers ({_one_line(e)})") from e
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: {key!r} must be {n} integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    _check_range(labels, num, f"{where}: {key!r}")
    return labels


def _batch_names(batch: Mapping[str, Any], key: str, count: int, where: str) -> tuple[str, ...]:
    values = _get(batch, key, where)
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (bytes, str)) for v in values):
        raise DataError(f"{where}: {key!r} must be a list of names")
    names = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)
    if len(names) != count:
        raise DataError(f"{where}: {key!r} must hold {count} names, got {len(names)}")
    return names


def _assemble_official(
    name: str, batches: Mapping[str, Mapping[str, Any]], where: Callable[[str], str], source: str
) -> CifarData:
    """Build CifarData from the unpickled official files of one layout (keys: file names)."""
    if name == "cifar100":
        meta_where = where("meta")
        classes = _batch_names(batches["meta"], "fine_label_names", 100, meta_where)
        coarse_classes = _batch_names(batches["meta"], "coarse_label_names", _NUM_COARSE, meta_where)
        splits = []
        for file in ("train", "test"):
            images = _rows_to_images(batches[file], where(file))
            n = len(images)
            fine = _batch_labels(batches[file], "fine_labels", n, 100, where(file))
            coarse = _batch_labels(batches[file], "coarse_labels", n, _NUM_COARSE, where(file))
            splits.append(Split(images, fine, coarse))
        return CifarData(name, splits[0], splits[1], None, classes, coarse_classes, source)

    classes = _batch_names(batches["batches.meta"], "label_names", 10, where("batches.meta"))
    parts = []
    for file in (*_CIFAR10_TRAIN_FILES, "test_batch"):
        images = _rows_to_images(batches[file], where(file))
        parts.append((images, _batch_labels(batches[file], "labels", len(images), 10, where(file))))
    train = Split(np.concatenate([p[0] for p in parts[:-1]]), np.concatenate([p[1] for p in parts[:-1]]))
    test = Split(*parts[-1])
    return CifarData(name, train, test, None, classes, None, source)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_archive(path: str | Path) -> CifarData:
    """Load an official ``cifar-100-python.tar.gz`` or ``cifar-10-python.tar.gz`` without extracting it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    # Member names we might need, for either layout: "<top folder>/<file>" -> (dataset, file).
    wanted = {
        f"{spec['folder']}/{file}": (ds, file) for ds, spec in DATASETS.items() for file in _LAYOUT_FILES[ds]
    }
    found: dict[str, dict[str, dict[str, Any]]] = {ds: {} for ds in DATASETS}
    try:
        # Stream through the archive once, unpickling the members we know straight from the
        # decompressor; nothing is written to disk, so member paths (absolute, "..") cannot escape.
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                key = wanted.get(posixpath.normpath(member.name.removeprefix("./")))
                if key is None or not member.isfile():
                    continue
                file = tar.extractfile(member)
                assert file is not None  # regular files always have contents
                found[key[0]][key[1]] = _unpickle(file, f"{path}[{member.name}]")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # OSError covers gzip.BadGzipFile
        raise DataError(f"{path}: not a readable CIFAR archive ({type(e).__name__}: {_one_line(e)})") from e

    present = [ds for ds in DATASETS if found[ds]]
    if len(present) != 1:
        folders = " or ".join(f"{spec['folder']}/" for spec in DATASETS.values())
        what = "both CIFAR-10 and CIFAR-100 files" if present else f"no CIFAR files under {folders}"
        raise DataError(f"{path}: not an official CIFAR archive ({what})")
    name = present[0]
    folder = DATASETS[name]["folder"]
    missing = [f"{folder}/{f}" for f in _LAYOUT_FILES[name] if f not in found[name]]
    if missing:
        raise DataError(f"{path}: archive is missing {', '.join(missing)}")
    return _assemble_official(name, found[name], lambda f: f"{path}[{folder}/{f}]", str(path))


def _find_layout(path: Path) -> tuple[str, Path]:
    """Which official layout ``path`` holds (the extracted folder itself or its parent)."""
    for name, spec in DATASETS.items():
        if path.name == spec["folder"]:
            return name, path
    for name in DATASETS:
        if (path / _LAYOUT_FILES[name][-1]).is_file():  # the meta file marks the layout
            return name, path
    inside = [
        (name, path / spec["folder"]) for name, spec in DATASETS.items() if (path / spec["folder"]).is_dir()
    ]
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise DataError(f"{path}: holds both CIFAR-100 and CIFAR-10 folders; pass one of them")
    folders = " or ".join(spec["folder"] for spec in DATASETS.values())
    raise DataError(f"{path}: not an extracted CIFAR folder (expected {folders}, or their parent)")


def load_folder(path: str | Path) -> CifarData:
    """Load an extracted official folder (``cifar-100-python/`` or ``cifar-10-batches-py/``) or its parent."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"no such folder: {path}")
    name, folder = _find_layout(path)
    missing = [f for f in _LAYOUT_FILES[name] if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    batches = {}
    for file in _LAYOUT_FILES[name]:
        try:
            with open(folder / file, "rb") as f:
                batches[file] = _unpickle(f, str(folder / file))
        except OSError as e:
            raise DataError(f"{folder / file}: cannot read ({_one_line(e)})") from e
    return _assemble_official(name, batches, lambda f: str(folder / f), str(folder))


def _npz_images(value: np.ndarray, where: str) -> np.ndarray:
    if value.dtype != np.uint8:
        raise DataError(
            f"{where} must be uint8 pixels 0..255, got {value.dtype}; store the raw pixels, not scaled ones"
        )
    if value.ndim == 4 and value.shape[1:] == _IMAGE_SHAPE:
        return np.ascontiguousarray(value)
    if value.ndim == 4 and value.shape[1:] == (3, 32, 32):  # NCHW (torch layout): make it NHWC
        return np.ascontiguousarray(value.transpose(0, 2, 3, 1))
    raise DataError(f"{where} must have shape (N, 32, 32, 3) or (N, 3, 32, 32), got {value.shape}")


def _npz_labels(value: np.ndarray, n: int, where: str) -> np.ndarray:
    if value.ndim == 2 and value.shape[1] == 1:  # keras' load_data returns labels as (N, 1)
        value = value[:, 0]
    if value.dtype.kind not in "iu":
        raise DataError(f"{where} must be integers, got {value.dtype}")
    if value.ndim != 1 or value.shape[0] != n:
        raise DataError(f"{where} must have shape ({n},) to match the images, got {value.shape}")
    return value.astype(np.int64)


def _npz_names(value: np.ndarray, where: str) -> tuple[str, ...]:
    if value.ndim != 1 or value.dtype.kind not in "US":
        raise DataError(f"{where} must be a 1-D array of strings, got {value.dtype} {value.shape}")
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.tolist())


def load_npz(path: str | Path) -> CifarData:
    """Load an ``.npz`` with ``x_train, y_train`` (and optionally test split, coarse labels, class names)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds a single array, not an .npz archive of named arrays")
        with npz:
            arrays = {key: npz[key] for key in npz.files}
    except DataError:
        raise
    except Exception as e:  # zip errors, bad headers, object arrays refused, truncation
        raise DataError(f"{path}: cannot read as .npz ({type(e).__name__}: {_one_line(e)})") from e

    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing {', '.join(missing)} (found keys: {', '.join(sorted(arrays)) or 'none'})"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test must be given together")

    images: dict[str, np.ndarray] = {}
    fine: dict[str, np.ndarray] = {}
    coarse: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            if f"y_{split}_coarse" in arrays:
                raise DataError(f"{path}: y_{split}_coarse given without x_{split}")
            continue
        images[split] = _npz_images(arrays[f"x_{split}"], f"{path}: x_{split}")
        n = len(images[split])
        fine[split] = _npz_labels(arrays[f"y_{split}"], n, f"{path}: y_{split}")
        if f"y_{split}_coarse" in arrays:
            coarse[split] = _npz_labels(arrays[f"y_{split}_coarse"], n, f"{path}: y_{split}_coarse")

    names = (
        _npz_names(arrays["fine_label_names"], f"{path}: fine_label_names")
        if "fine_label_names" in arrays
        else None
    )
    coarse_names = (
        _npz_names(arrays["coarse_label_names"], f"{path}: coarse_label_names")
        if "coarse_label_names" in arrays
        else None
    )
    # How many classes: the names say so; else coarse labels or any label >= 10 mean CIFAR-100.
    if names is not None:
        num_classes = len(names)
        if num_classes not in (10, 100):
            raise DataError(f"{path}: fine_label_names has {num_classes} names; expected 10 or 100")
    else:
        top = max(int(y.max()) if y.size else 0 for y in fine.values())
        num_classes = 100 if coarse or coarse_names is not None or top >= 10 else 10
    name = "cifar100" if num_classes == 100 else "cifar10"
    for split, y in fine.items():
        _check_range(y, num_classes, f"{path}: y_{split} ({name})")

    classes = names or (CIFAR100_CLASSES if num_classes == 100 else CIFAR10_CLASSES)
    coarse_classes: tuple[str, ...] | None = None
    if num_classes == 10:
        if coarse or coarse_names is not None:
            raise DataError(f"{path}: coarse labels/names given but the data has only 10 classes")
    else:
        if coarse_names is not None and len(coarse_names) != _NUM_COARSE:
            raise DataError(
                f"{path}: coarse_label_names has {len(coarse_names)} names; expected {_NUM_COARSE}"
            )
        for split, y in coarse.items():
            _check_range(y, _NUM_COARSE, f"{path}: y_{split}_coarse")
        if classes == CIFAR100_CLASSES and coarse_names in (None, CIFAR100_COARSE_CLASSES):
            # Official classes: the superclass of each is known, so fill in what the file lacks
            # (keras' label_mode="fine" files have no coarse labels) for superclass accuracy.
            for split, y in fine.items():
                coarse.setdefault(split, CIFAR100_FINE_TO_COARSE[y])
        if coarse:
            coarse_classes = coarse_names or CIFAR100_COARSE_CLASSES

    splits = {s: Split(images[s], fine[s], coarse.get(s)) for s in images}
    return CifarData(name, splits["train"], splits.get("test"), None, classes, coarse_classes, str(path))


def load_data(
    source: str | Path, *, root: str | Path | None = None, download_missing: bool = False
) -> CifarData:
    """Load data from a file/folder path, or by dataset name ("cifar100"/"cifar10") from ``root``.

    By name, the extracted folder or the official archive in ``root`` (default ``~/.cache/cifar-resnet``)
    is used; if neither is there it is downloaded when ``download_missing`` is true.
    """
    if isinstance(source, str) and source in DATASETS:
        spec = DATASETS[source]
        base = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        if (base / spec["folder"]).is_dir():
            return load_folder(base / spec["folder"])
        if (base / spec["filename"]).is_file():
            return load_archive(base / spec["filename"])
        if not download_missing:
            raise DataError(
                f"{source} not found in {base}; run `cifar-resnet data download --dataset {source}` "
                "(or pass download_missing=True)"
            )
        return load_archive(download(source, base))

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        return load_folder(path)
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return load_npz(path)
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return load_archive(path)
    raise DataError(
        f"{path}: unrecognised data source (expected .npz, .tar.gz, an extracted folder, or a name "
        f"among {', '.join(DATASETS)})"
    )


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    dataset: str, root: str | Path, *, url: str | None = None, md5: str | None = None, progress: bool = True
) -> Path:
    """Download the official archive of ``dataset`` into ``root``, verify its md5, and return its path.

    An archive already there with the right md5 is returned as is. The download goes to a temporary
    file in ``root`` that only replaces the target once complete and verified, so an interrupted or
    corrupt download never leaves a file that looks valid.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (expected one of: {', '.join(DATASETS)})")
    spec = DATASETS[dataset]
    url = url or spec["url"]
    expected = (md5 or spec["md5"]).lower()
    root = Path(root).expanduser()
    dest = root / spec["filename"]
    if dest.is_file() and _md5(dest) == expected:
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create folder ({_one_line(e)})") from e

    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{spec['filename']}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received, total = 0, None
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=spec["filename"],
                    disable=not progress,
                ) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors; bad URLs ValueError
            raise DataError(f"{url}: download failed ({type(e).__name__}: {_one_line(e)})") from e
        if total is not None and received != total:
            raise DataError(f"{url}: download incomplete ({received} of {total} bytes)")
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"{url}: md5 mismatch (expected {expected}, got {actual}); the download was discarded"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful os.replace
    return dest


# --------------------------------------------------------------------------------------------------
# Splitting and statistics
# --------------------------------------------------------------------------------------------------


def _check_count(n: Any, what: str, limit: int, source: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"{source}: {what} must be an integer, got {n!r}")
    if n < 0 or n > limit:
        raise DataError(f"{source}: {what} must be between 0 and {limit}, got {n}")
    return int(n)


def _stratified_indices(labels: np.ndarray, num_classes: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn so that every class contributes as equally as possible.

    Each class gets n // num_classes; the remainder goes one each to classes in a seeded random order
    (so low labels are not always favoured). A class with too few items gives all it has and the
    shortfall is spread over the others the same way.
    """
    counts = np.bincount(labels, minlength=num_classes)
    quota = np.zeros(num_classes, dtype=np.int64)
    order = rng.permutation(num_classes)
    remaining = n
    while remaining > 0:
        open_classes = order[quota[order] < counts[order]]
        share, extra = divmod(remaining, len(open_classes))
        want = np.full(len(open_classes), share, dtype=np.int64)
        want[:extra] += 1
        give = np.minimum(want, counts[open_classes] - quota[open_classes])
        quota[open_classes] += give
        remaining -= int(give.sum())

    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = [
        rng.permutation(by_class[starts[c] : starts[c + 1]])[: quota[c]]
        for c in range(num_classes)
        if quota[c]
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def split_validation(data: CifarData, n_val: int, seed: int = 0) -> CifarData:
    """Hold ``n_val`` training images out as a stratified validation split (seeded, deterministic).

    The split depends only on the training labels, ``n_val`` and ``seed``; image order is preserved in
    both parts. ``n_val == 0`` returns ``data`` unchanged.
    """
    n_val = _check_count(n_val, "the validation split (--val-split)", len(data.train) - 1, data.source)
    if n_val == 0:
        return data
    if data.val is not None:
        raise DataError(f"{data.source}: already has a validation split of {len(data.val)} images")
    held = _stratified_indices(data.train.labels, data.num_classes, n_val, np.random.default_rng(seed))
    keep = np.ones(len(data.train), dtype=bool)
    keep[held] = False
    return dataclasses.replace(data, train=data.train.subset(keep), val=data.train.subset(held))


def subsample(data: CifarData, n_train: int, seed: int = 0) -> CifarData:
    """Keep a stratified, seeded subset of ``n_train`` training images (for quick runs and tests).

    ``n_train == 0`` or ``n_train == len(data.train)`` returns ``data`` unchanged; test and validation
    splits are kept as they are.
    """
    n_train = _check_count(n_train, "the training subset (--train-subset)", len(data.train), data.source)
    if n_train in (0, len(data.train)):
        return data
    keep = _stratified_indices(data.train.labels, data.num_classes, n_train, np.random.default_rng(seed))
    return dataclasses.replace(data, train=data.train.subset(keep))


def channel_stats(
    images: np.ndarray, chunk: int = 512
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] units.

    Pixels are counted into a 256-bin histogram per channel, a chunk of images at a time: the counts
    are exact integers, memory stays at one chunk (never a float copy of the whole set), and mean and
    variance then come from 256 values in float64 without rounding drift. (Histograms are also
    faster here than float sums of squares over strided channels.)
    """
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"channel_stats: expected uint8 images of shape (N, H, W, 3), got {desc}")
    if images.size == 0:
        raise DataError("channel_stats: no images")
    hist = np.zeros(3 * 256, dtype=np.int64)
    offsets = np.array([0, 256, 512], dtype=np.uint16)  # channel c counts into bins c*256 .. c*256+255
    for start in range(0, images.shape[0], chunk):
        pixels = images[start : start + chunk].reshape(-1, 3)
        hist += np.bincount((pixels + offsets).ravel(), minlength=3 * 256)
    counts = hist.reshape(3, 256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1)
    mean = counts @ values / n
    # Two passes over the 256 bins (not E[x^2] - E[x]^2), so there is no cancellation at all.
    std = np.sqrt(np.einsum("cv,cv->c", counts, (values[None, :] - mean[:, None]) ** 2) / n)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def describe(data: CifarData) -> dict[str, Any]:
    """A JSON-friendly summary for ``cifar-resnet data info``."""
    per_class = np.bincount(data.train.labels, minlength=data.num_classes)
    mean, std = channel_stats(data.train.images)
    return {
        "name": data.name,
        "source": data.source,
        "num_classes": data.num_classes,
        "num_coarse_classes": len(data.coarse_classes) if data.coarse_classes is not None else None,
        "train": len(data.train),
        "val": len(data.val) if data.val is not None else None,
        "test": len(data.test) if data.test is not None else None,
        "train_per_class_min": int(per_class.min()),
        "train_per_class_max": int(per_class.max()),
        "mean": mean,
        "std": std,
    }
