"""CIFAR-100 / CIFAR-10 data: sources -> :class:`CifarData`.

Sources are the official python archives (downloaded with an md5 check, or a local ``.tar.gz``), their
extracted folders, or an ``.npz`` in the layout of ``keras.datasets.cifar100.load_data``. Every source
ends up as uint8 NHWC RGB images with int64 labels, so nothing downstream cares where the data came
from. The official files are pickles; they are read with the restricted unpickler of
:mod:`cifar_resnet.data.unpickle`, so a tampered archive cannot run code.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..console import one_line
from .download import DATASETS, DEFAULT_ROOT, download
from .errors import DataError
from .unpickle import safe_unpickle

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_TO_COARSE",
    "CifarData",
    "Split",
    "load_archive",
    "load_data",
    "load_folder",
    "load_npz",
]


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

_NUM_CLASSES = {"cifar100": 100, "cifar10": 10}
_NUM_COARSE = 20
_IMAGE_SHAPE = (32, 32, 3)
_ROW_SIZE = 32 * 32 * 3
# Files each official layout must contain, in the order their images are concatenated.
_CIFAR100_FILES = ("train", "test", "meta")
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
_LAYOUT_FILES = {"cifar100": _CIFAR100_FILES, "cifar10": _CIFAR10_FILES}


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: array fields make a generated __eq__ meaningless
class Split:
    """One split: uint8 NHWC RGB images, square (CIFAR's 32x32, or another size a folder was made), with
    int64 fine (and optionally coarse) labels."""

    images: np.ndarray
    labels: np.ndarray
    coarse: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise DataError(f"Split: images must be uint8 of shape (N, S, S, 3), got {images.dtype} {images.shape}")
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
    skipped: tuple[tuple[str, str], ...] = ()  # (file, why) of each file of the source that could not be used

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        expected = _NUM_CLASSES.get(self.name)  # other names: a dataset of its own classes, as many as it names
        if expected is not None and len(self.classes) != expected:
            raise DataError(f"{self.source}: {self.name} needs {expected} class names, got {len(self.classes)}")
        if len(self.classes) < 2:
            raise DataError(f"{self.source}: {len(self.classes)} class name(s); a classifier needs at least 2 classes")
        if self.coarse_classes is not None:
            object.__setattr__(self, "coarse_classes", tuple(self.coarse_classes))
        for split_name, split in (("train", self.train), ("test", self.test), ("val", self.val)):
            if split is None:
                continue
            _check_range(split.labels, self.num_classes, f"{self.source}: {split_name} labels")
            if split.coarse is not None:
                if self.coarse_classes is None:
                    raise DataError(f"{self.source}: {split_name} has coarse labels but no coarse class names")
                _check_range(split.coarse, len(self.coarse_classes), f"{self.source}: {split_name} coarse labels")
        sizes = {s.images.shape[1] for s in (self.train, self.test, self.val) if s is not None}
        if len(sizes) > 1:
            raise DataError(f"{self.source}: its splits' images differ in size ({sorted(sizes)} px)")

    @property
    def image_size(self) -> int:
        """The side of its (square) images in px: 32 for CIFAR."""
        return int(self.train.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def eval_split(self) -> tuple[str, Split]:
        """The split to evaluate on: the held-out validation split if there is one, else the official test."""
        if self.val is not None:
            return "val", self.val
        if self.test is not None:
            return "test", self.test
        raise DataError(f"{self.source}: has neither a validation nor a test split; hold one out with split_validation")

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
# The official files, unpickled -> CifarData
# --------------------------------------------------------------------------------------------------


def _get(batch: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in batch:
        raise DataError(f"{where}: missing key {key!r} (has {', '.join(sorted(batch))})")
    return batch[key]


def _rows_to_images(batch: Mapping[str, Any], where: str) -> np.ndarray:
    data = _get(batch, "data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_SIZE:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    # Each row is the red plane, then green, then blue (CHW); we keep images NHWC.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _batch_labels(batch: Mapping[str, Any], key: str, n: int, num: int, where: str) -> np.ndarray:
    values = _get(batch, key, where)
    try:
        labels = np.asarray(values)
    except Exception as e:  # ragged or odd contents
        raise DataError(f"{where}: {key!r} is not a list of integers ({one_line(e)})") from e
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
    wanted = {f"{spec['folder']}/{file}": (ds, file) for ds, spec in DATASETS.items() for file in _LAYOUT_FILES[ds]}
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
                found[key[0]][key[1]] = safe_unpickle(file, f"{path}[{member.name}]")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # OSError covers gzip.BadGzipFile
        raise DataError(f"{path}: not a readable CIFAR archive ({type(e).__name__}: {one_line(e)})") from e

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
    inside = [(name, path / spec["folder"]) for name, spec in DATASETS.items() if (path / spec["folder"]).is_dir()]
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
                batches[file] = safe_unpickle(f, str(folder / file))
        except OSError as e:
            raise DataError(f"{folder / file}: cannot read ({one_line(e)})") from e
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of the ``.npz`` at ``path``, with ``x_train`` and ``y_train`` among them."""
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
        raise DataError(f"{path}: cannot read as .npz ({type(e).__name__}: {one_line(e)})") from e
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (found keys: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test must be given together")
    return arrays


def _npz_splits(arrays: dict[str, np.ndarray], path: Path) -> tuple[dict, dict, dict]:
    """``(images, fine labels, coarse labels)`` of the splits (train, test) an .npz holds, checked."""
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
    if not len(images["train"]):
        raise DataError(f"{path}: x_train holds no images")
    return images, fine, coarse


def load_npz(path: str | Path) -> CifarData:
    """Load an ``.npz`` with ``x_train, y_train`` (and optionally test split, coarse labels, class names)."""
    path = Path(path)
    arrays = _read_npz(path)
    images, fine, coarse = _npz_splits(arrays, path)
    names, coarse_names = (
        _npz_names(arrays[key], f"{path}: {key}") if key in arrays else None
        for key in ("fine_label_names", "coarse_label_names")
    )
    # How many classes: the names say so; else coarse labels or any label >= 10 mean CIFAR-100.
    if names is not None:
        num_classes = len(names)
        if num_classes < 2:
            raise DataError(f"{path}: fine_label_names has {num_classes} name; a classifier needs at least 2 classes")
    else:
        top = max(int(y.max()) if y.size else 0 for y in fine.values())
        num_classes = 100 if coarse or coarse_names is not None or top >= 10 else 10
    # 10 or 100 classes: CIFAR-10 or CIFAR-100; any other number of named classes: a dataset of its own,
    # named after its file, without superclasses
    name = {100: "cifar100", 10: "cifar10"}.get(num_classes, path.stem)
    if num_classes not in (10, 100) and (coarse or coarse_names is not None):
        raise DataError(f"{path}: coarse labels/names are for CIFAR-100's 100 classes, but the data has {num_classes}")
    for split, y in fine.items():
        _check_range(y, num_classes, f"{path}: y_{split} ({name})")

    classes = names or (CIFAR100_CLASSES if num_classes == 100 else CIFAR10_CLASSES)
    coarse_classes: tuple[str, ...] | None = None
    if num_classes == 10:
        if coarse or coarse_names is not None:
            raise DataError(f"{path}: coarse labels/names given but the data has only 10 classes")
    else:
        if coarse_names is not None and len(coarse_names) != _NUM_COARSE:
            raise DataError(f"{path}: coarse_label_names has {len(coarse_names)} names; expected {_NUM_COARSE}")
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


def load_data(source: str | Path, *, root: str | Path | None = None, download_missing: bool = False) -> CifarData:
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
