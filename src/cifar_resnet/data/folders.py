"""Your own images: a folder of class subfolders, or a CSV of ``path,label`` rows -> :class:`CifarData`.

Layouts: ``DIR/CLASS/.../IMAGE`` (torchvision's ``ImageFolder``), or the same below ``DIR/train/`` with
``DIR/val/`` and ``DIR/test/`` beside it; ``FILE.csv`` with a header row naming the columns ``path`` and
``label`` (and optionally ``split``: ``train``, ``val`` or ``test``), each path relative to the CSV's folder.
The class names are the folder names (or the labels), sorted, so the order is the same on every machine.

Every file is read once and decoded in parallel (a process per core) by
:func:`cifar_resnet.images.load_image_bytes`: EXIF orientation, transparency on white, the centred square
cropped and box-filtered to 32x32, as CIFAR's images were made. The result is kept as one uint8 array in
the cache (:func:`cache_dir`), keyed by the files' paths, sizes and modification times: a second run on
the same folder starts in the time it takes to list it, and a changed folder is read again. A file that
cannot be used (not an image, truncated, corrupt, a decompression bomb, unreadable, a symlink loop) is
skipped and named in :attr:`CifarData.skipped`; ``strict=True`` makes it an error. Whatever makes the data
unusable as a whole (an empty class, a single class, the same image in training and test files, a bad CSV)
is a :class:`DataError` naming the file or folder.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import progress_bar
from ..images import SIZE, ImageFileError, check_size, load_image_bytes
from .download import DATASETS, DEFAULT_ROOT
from .errors import DataError
from .sources import CifarData, Split
from .sources import load_data as load_cifar

__all__ = ["CACHE_ENV", "cache_dir", "is_image_folder", "load_csv", "load_data", "load_image_folder"]

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("path", "label", "split")
CACHE_ENV = "CIFAR_RESNET_IMAGE_CACHE"  # where decoded folders are kept ("off": nowhere)
CACHE_VERSION = 1  # raise when what a cache file holds, or how images are made, changes
CHUNK = 64  # files a worker decodes at a time
PARALLEL_FROM = 256  # fewer files than this are decoded in this process: a pool costs more than it saves
MAX_FILE_BYTES = 256 * 2**20  # larger files are skipped unread


def cache_dir() -> Path | None:
    """The image cache: ``$CIFAR_RESNET_IMAGE_CACHE`` if set (``off``: none), else ``~/.cache/cifar-resnet/images``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "none", ""):
        return None
    return Path(value or DEFAULT_ROOT / "images").expanduser()


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with at least one subfolder that is not hidden (a class or a split)."""
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _files(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Every file below ``folder`` that is not hidden, sorted; a symlink that leads back to a folder already
    seen is skipped (named in ``skipped``) rather than walked forever."""
    seen, out = set(), []
    for top, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((top, "a symlink loop: this folder is already inside the data"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(top) / n for n in names if not n.startswith(".")]
    return sorted(out)


def _folder_listing(root: Path, skipped: list) -> tuple[tuple[str, ...], list[tuple[str, int, Path]]]:
    """The class names and ``(split, label, file)`` of every file of an image folder."""
    splits = {s: p for s, p in _subfolders(root).items() if s in SPLITS}
    if splits and "train" not in splits:
        raise DataError(f"{root}: has {'/ and '.join(splits)}/ but no train/ folder of class folders")
    top = splits.get("train", root)
    classes = tuple(_subfolders(top))
    if len(classes) < 2:
        found = f"only the class folder {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"{top}: {found}; a classifier needs a folder of images for each of at least 2 classes")
    entries = []
    for split, folder in (splits or {"train": root}).items():
        for name, class_folder in _subfolders(folder).items():
            if name not in classes:
                raise DataError(f"{class_folder}: class {name!r} is not among the classes of {top}")
            files = _files(class_folder, skipped)
            if split == "train" and not files:
                raise DataError(f"{class_folder}: an empty class folder (every class needs images to train on)")
            entries += [(split, classes.index(name), f) for f in files]
    return classes, entries


def _csv_listing(path: Path) -> tuple[tuple[str, ...], list[tuple[str, int, Path]]]:
    """The class names and ``(split, label, file)`` of every row of a CSV of ``path,label[,split]``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: empty; expected a header row naming the columns path and label")
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown or "path" not in header or "label" not in header or len(set(header)) != len(header):
        what = f"unknown column {unknown[0]!r}" if unknown else f"the header {rows[0]!r}"
        raise DataError(f"{path}: {what}; the columns are path and label, optionally split (train, val or test)")
    col = {h: i for i, h in enumerate(header)}
    items = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        file, label = row[col["path"]].strip(), row[col["label"]].strip()
        split = row[col["split"]].strip().lower() if "split" in col else "train"
        if not file or not label:
            raise DataError(f"{path}, line {line}: an empty {'path' if not file else 'label'}")
        if split not in SPLITS:
            raise DataError(f"{path}, line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        full = (path.parent / file) if not Path(file).is_absolute() else Path(file)
        if not full.is_file() and not full.is_symlink():
            raise DataError(f"{path}, line {line}: no such file {full}")
        items.append((split, label, full))
    labels = {label for split, label, _ in items if split == "train"}
    if len(labels) < 2:
        raise DataError(f"{path}: {len(labels)} class(es) in its training rows; a classifier needs at least 2")
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    classes = tuple(sorted(labels, key=(lambda s: (int(s), s)) if numeric else None))
    for split, label, _ in items:
        if label not in labels:
            raise DataError(f"{path}: label {label!r} of the {split} rows has no training rows")
    return classes, [(split, classes.index(label), full) for split, label, full in items]


def _stat_key(file: Path) -> tuple[int, int]:
    try:
        st = file.stat()
    except OSError:  # a broken link or a loop: it is skipped when read, and its key is the link's own
        st = file.lstat()
    return st.st_size, st.st_mtime_ns


def _cache_key(source: Path, entries: list[tuple[str, int, Path]], classes: tuple[str, ...], size: int) -> str:
    files = [(split, label, str(f), *_stat_key(f)) for split, label, f in entries]
    text = json.dumps([CACHE_VERSION, size, str(source.resolve()), classes, files])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _decode_chunk(files: list[str], size: int = SIZE) -> list[tuple[bytes | None, str, str]]:
    """Each file as ``(size x size x 3 pixels or None, digest of its bytes, why it was skipped)``."""
    out = []
    for name in files:
        try:
            if os.path.getsize(name) > MAX_FILE_BYTES:
                raise ImageFileError(f"{name}: refused, a file of over {MAX_FILE_BYTES >> 20} MiB")
            with open(name, "rb") as f:
                data = f.read()
            pixels = load_image_bytes(data, name, size=size)
            out.append((pixels.tobytes(), hashlib.blake2b(data, digest_size=16).hexdigest(), ""))
        except ImageFileError as e:
            out.append((None, "", str(e)))
        except OSError as e:  # unreadable: permissions, a symlink loop, a vanished file
            out.append((None, "", f"{name}: cannot read ({e.strerror or e})"))
    return out


def _decode(
    files: list[Path], size: int, workers: int | None, progress: bool | None
) -> list[tuple[bytes | None, str, str]]:
    """:func:`_decode_chunk` of every file, on ``workers`` processes (default: every core this process may
    use), with a progress bar in images/s."""
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    names = [str(f) for f in files]
    chunks = [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]
    out = []
    with progress_bar(len(names), "decoding images", progress, unit="img") as bar:
        if workers <= 1 or len(names) < PARALLEL_FROM:
            results = map(functools.partial(_decode_chunk, size=size), chunks)
            pool = None
        else:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = ProcessPoolExecutor(workers, mp_context=context)
            results = pool.map(functools.partial(_decode_chunk, size=size), chunks)
        try:
            for chunk in results:
                out += chunk
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return out


def _check_duplicates(entries, digests: list[str]) -> None:
    """DataError where the same file's bytes are both in the training split and a split to measure on."""
    train = {d: f for (split, _, f), d in zip(entries, digests) if d and split == "train"}
    for (split, _, f), d in zip(entries, digests):
        if d and split != "train" and d in train:
            raise DataError(f"{f} ({split}) is the same file as {train[d]} (train): remove one of them")


def _assemble(source: Path, name: str, classes, entries, pixels, skipped) -> CifarData:
    first = next((p for p in pixels if p is not None), b"")
    size = math.isqrt(len(first) // 3)  # every image was made size x size x 3
    splits = {}
    for split in SPLITS:
        rows = [i for i, (s, _, _) in enumerate(entries) if s == split and pixels[i] is not None]
        if not rows:
            continue
        images = np.frombuffer(b"".join(pixels[i] for i in rows), dtype=np.uint8).reshape(-1, size, size, 3)
        splits[split] = Split(images.copy(), np.array([entries[i][1] for i in rows], dtype=np.int64))
    return _data(source, name, classes, splits, skipped)


def _data(source: Path, name: str, classes, splits: dict[str, Split], skipped) -> CifarData:
    train = splits.get("train")
    if train is None:
        raise DataError(f"{source}: no readable image to train on")
    missing = [c for i, c in enumerate(classes) if not np.any(train.labels == i)]
    if missing:
        raise DataError(f"{source}: class {missing[0]!r} has no readable training image")
    return CifarData(name, train, splits.get("test"), splits.get("val"), classes, None, str(source), tuple(skipped))


@dataclass(frozen=True)
class _Reading:
    """How the files are read: made ``size`` px square, ``strict`` or not, on ``workers`` processes."""

    size: int
    strict: bool
    workers: int | None
    progress: bool | None
    log: Callable[[str], None] | None


def _load_listed(source: Path, listing: Callable, how: _Reading) -> CifarData:
    size, strict, log = how.size, how.strict, how.log
    try:
        check_size(size)
    except ValueError as e:
        raise DataError(str(e)) from None
    skipped: list[tuple[str, str]] = []
    classes, entries = listing(skipped)
    name = source.stem if source.is_file() else source.name
    cache = cache_dir()
    cached = cache / f"{_cache_key(source, entries, classes, size)}.npz" if cache is not None else None
    data = _read_cache(cached, source, name, classes) if cached is not None and cached.is_file() else None
    if data is None:
        decoded = _decode([f for _, _, f in entries], size, how.workers, how.progress) if entries else []
        pixels, digests, reasons = zip(*decoded) if decoded else ((), (), ())
        skipped += [(str(f), why) for (_, _, f), why in zip(entries, reasons) if why]
        if not strict or not skipped:
            _check_duplicates(entries, list(digests))
            data = _assemble(source, name, classes, entries, list(pixels), skipped)
            if cached is not None:
                _write_cache(cached, data)
    skipped = list(data.skipped) if data is not None else skipped
    if strict and skipped:
        raise DataError(f"{skipped[0][1]} (--strict: {len(skipped)} file(s) cannot be used)")
    if skipped and log is not None:
        log(f"{source}: skipped {len(skipped)} file(s) that cannot be used, e.g. {skipped[0][1]}")
    return data


def _write_cache(path: Path, data: CifarData) -> None:
    """The decoded splits, written to a temporary file and renamed (a cache that cannot be written is none)."""
    arrays = {f"x_{s}": getattr(data, s).images for s in SPLITS if getattr(data, s) is not None}
    arrays |= {f"y_{s}": getattr(data, s).labels for s in SPLITS if getattr(data, s) is not None}
    arrays["classes"] = np.array(data.classes)
    arrays["skipped"] = np.array([f"{f}\t{why}" for f, why in data.skipped], dtype=str)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _read_cache(path: Path, source: Path, name: str, classes) -> CifarData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if tuple(str(c) for c in z["classes"]) != tuple(classes):
                return None
            splits = {s: Split(z[f"x_{s}"], z[f"y_{s}"]) for s in SPLITS if f"x_{s}" in z}
            skipped = [tuple(str(line).split("\t", 1)) for line in z["skipped"]]
    except (OSError, KeyError, ValueError):  # a damaged cache file is read again from the images
        return None
    return _data(source, name, classes, splits, skipped)


def load_image_folder(
    path: str | Path,
    *,
    image_size: int = SIZE,
    strict: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> CifarData:
    """A folder of class subfolders (optionally below ``train/``, ``val/`` and ``test/``) as a dataset named
    after the folder, its images made ``image_size`` px square; ``log`` hears how many files were skipped."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    return _load_listed(
        root, lambda skipped: _folder_listing(root, skipped), _Reading(image_size, strict, workers, progress, log)
    )


def load_csv(
    path: str | Path,
    *,
    image_size: int = SIZE,
    strict: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> CifarData:
    """A CSV of ``path,label[,split]`` rows (paths relative to the CSV) as a dataset named after the file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"no such file: {file}")
    return _load_listed(file, lambda skipped: _csv_listing(file), _Reading(image_size, strict, workers, progress, log))


def load_data(
    source: str | Path,
    *,
    root: str | Path | None = None,
    download_missing: bool = False,
    image_size: int = SIZE,
    strict: bool = False,
    log: Callable[[str], None] | None = print,
) -> CifarData:
    """Any source: a CSV or a folder of class subfolders (your own images, :func:`load_image_folder`, made
    ``image_size`` px square), or a CIFAR source (:func:`cifar_resnet.data.sources.load_data`: ``.npz``,
    archive, extracted folder, name), whose images are 32 px: another ``image_size`` is an error there."""
    path = None if isinstance(source, str) and source in DATASETS else Path(source).expanduser()
    if path is not None and path.suffix.lower() == ".csv":
        return load_csv(path, image_size=image_size, strict=strict, log=log)
    if path is not None and path.is_dir() and not _is_cifar_folder(path):
        if not is_image_folder(path):
            raise DataError(
                f"{path}: no class folders (your own images go in one subfolder per class) and not an extracted "
                "CIFAR folder"
            )
        return load_image_folder(path, image_size=image_size, strict=strict, log=log)
    if image_size != SIZE:
        raise DataError(
            f"{source}: CIFAR's images are {SIZE}x{SIZE}; --image-size {image_size} applies to a folder or CSV of "
            "your own images"
        )
    return load_cifar(source, root=root, download_missing=download_missing)


def _is_cifar_folder(path: Path) -> bool:
    """An official extracted folder, or a folder holding one (:func:`~cifar_resnet.data.sources.load_folder`)."""
    names = [spec["folder"] for spec in DATASETS.values()]
    return path.name in names or any((path / n).is_dir() for n in names) or (path / "meta").is_file()
