"""Tests for cifar_resnet.data: official archives/folders, npz, download, splits, statistics.

Small archives are built here in the official format (python 2 style pickles, protocol 2, dicts with
bytes keys, the official member names); the real CIFAR-100 training file is used when it is present.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from cifar_resnet import data as ds
from cifar_resnet.cli import get_args_parser, main
from cifar_resnet.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
    CifarData,
    DataError,
    Split,
)

# --------------------------------------------------------------------------------------------------
# Builders for files in the official format
# --------------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as python 2 `str` (SHORT_BINSTRING/BINSTRING), as cPickle did for CIFAR."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_dumps(obj: Any) -> bytes:
    """A pickle as the official (python 2, numpy 1.x) files are: no _codecs, numpy.core spelling."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def py3_dumps(obj: Any) -> bytes:
    """A protocol-2 pickle written by Python 3 / numpy 2 (bytes via _codecs.encode, numpy._core)."""
    return pickle.dumps(obj, protocol=2)


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def cifar100_files(seed: int = 0, n_train: int = 12, n_test: int = 6, dumps=py2_dumps) -> tuple[dict, dict]:
    """The three official CIFAR-100 files (name -> bytes) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    truth: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = _rows(rng, n)
        fine = rng.integers(0, 100, size=n)
        coarse = CIFAR100_FINE_TO_COARSE[fine]
        truth[split] = (rows, fine, coarse)
        files[split] = dumps(
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": rows,
            }
        )
    files["meta"] = dumps(
        {
            b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_CLASSES],
        }
    )
    return files, truth


def cifar10_files(seed: int = 0, per_batch: int = 3, dumps=py3_dumps) -> tuple[dict, dict]:
    """The seven official CIFAR-10 files and the arrays they hold (train concatenated in batch order)."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    train_rows, train_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows, labels = _rows(rng, per_batch), rng.integers(0, 10, size=per_batch)
        files[name] = dumps(
            {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in labels],
                b"data": rows,
                b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
            }
        )
        if name == "test_batch":
            test = (rows, labels)
        else:
            train_rows.append(rows)
            train_labels.append(labels)
    files["batches.meta"] = dumps(
        {
            b"num_cases_per_batch": 10000,
            b"label_names": [n.encode() for n in CIFAR10_CLASSES],
            b"num_vis": 3072,
        }
    )
    truth = {"train": (np.concatenate(train_rows), np.concatenate(train_labels)), "test": test}
    return files, truth


def write_tar_gz(path: Path, folder: str, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> Path:
    """A .tar.gz with the official layout: a top folder entry, then its files."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name, data in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, folder: str, files: dict[str, bytes]) -> Path:
    target = root / folder
    target.mkdir(parents=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    return target


def nhwc(rows: np.ndarray) -> np.ndarray:
    """Reference conversion, written independently of the module: pixel (c, y, x) is at c*1024 + y*32 + x."""
    out = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
    for c in range(3):
        out[..., c] = rows[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32)
    return out


@pytest.fixture
def c100_archive(tmp_path: Path) -> tuple[Path, dict]:
    files, truth = cifar100_files()
    path = write_tar_gz(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files, {"file.txt~": b""})
    return path, truth


@pytest.fixture
def c10_archive(tmp_path: Path) -> tuple[Path, dict]:
    files, truth = cifar10_files()
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files, {"readme.html": b"<p>"})
    return path, truth


def ids(split: Split) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(np.int64) + 256 * split.images[:, 0, 0, 1].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert len(CIFAR100_COARSE_CLASSES) == len(set(CIFAR100_COARSE_CLASSES)) == 20
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[-1] == "truck" and len(CIFAR10_CLASSES) == 10
    assert CIFAR100_FINE_TO_COARSE.dtype == np.int64 and CIFAR100_FINE_TO_COARSE.shape == (100,)
    assert np.bincount(CIFAR100_FINE_TO_COARSE).tolist() == [5] * 20  # 5 fine classes per superclass
    # Spot checks of the official hierarchy.
    fine = {name: i for i, name in enumerate(CIFAR100_CLASSES)}
    coarse_of = {name: CIFAR100_COARSE_CLASSES[CIFAR100_FINE_TO_COARSE[i]] for name, i in fine.items()}
    assert coarse_of["beaver"] == coarse_of["whale"] == "aquatic_mammals"
    assert coarse_of["maple_tree"] == "trees" and coarse_of["bicycle"] == "vehicles_1"
    for spec in ds.DATASETS.values():
        assert spec["url"].startswith("https://www.cs.toronto.edu/~kriz/")
        assert spec["url"].endswith(spec["filename"]) and len(spec["md5"]) == 32 and spec["folder"]


# --------------------------------------------------------------------------------------------------
# Official archives and folders
# --------------------------------------------------------------------------------------------------


def test_archive_cifar100_round_trip(c100_archive: tuple[Path, dict]) -> None:
    path, truth = c100_archive
    data = ds.load_archive(path)
    assert data.name == "cifar100" and data.num_classes == 100 and data.val is None
    assert data.classes == CIFAR100_CLASSES and data.coarse_classes == CIFAR100_COARSE_CLASSES
    assert data.source == str(path)
    for split, (rows, fine, coarse) in (("train", truth["train"]), ("test", truth["test"])):
        s = data.get_split(split)
        assert s.images.dtype == np.uint8 and s.images.shape == (len(rows), 32, 32, 3)
        assert s.images.flags.c_contiguous
        np.testing.assert_array_equal(s.images, nhwc(rows))
        assert s.labels.dtype == np.int64 and s.coarse is not None and s.coarse.dtype == np.int64
        np.testing.assert_array_equal(s.labels, fine)
        np.testing.assert_array_equal(s.coarse, coarse)


def test_archive_pixel_position(tmp_path: Path) -> None:
    """One bright pixel at channel 2 (blue), row 3, column 4 of a CHW row must land at [3, 4, 2] in NHWC."""
    files, _ = cifar100_files(n_train=2, n_test=1)
    rows = np.zeros((2, 3072), dtype=np.uint8)
    rows[1, 2 * 1024 + 3 * 32 + 4] = 255
    files["train"] = py2_dumps(
        {b"data": rows, b"fine_labels": [0, 1], b"coarse_labels": [4, 1], b"filenames": [b"a", b"b"]}
    )
    data = ds.load_archive(write_tar_gz(tmp_path / "c.tar.gz", "cifar-100-python", files))
    img = data.train.images[1]
    assert img[3, 4, 2] == 255 and int(img.sum()) == 255 and int(data.train.images[0].sum()) == 0


def test_archive_cifar10_round_trip(c10_archive: tuple[Path, dict]) -> None:
    path, truth = c10_archive
    data = ds.load_archive(path)
    assert data.name == "cifar10" and data.classes == CIFAR10_CLASSES and data.coarse_classes is None
    np.testing.assert_array_equal(data.train.images, nhwc(truth["train"][0]))  # batches 1..5 in order
    np.testing.assert_array_equal(data.train.labels, truth["train"][1])
    assert data.test is not None and data.test.coarse is None and data.train.coarse is None
    np.testing.assert_array_equal(data.test.images, nhwc(truth["test"][0]))
    np.testing.assert_array_equal(data.test.labels, truth["test"][1])


@pytest.mark.parametrize("which", ["cifar100", "cifar10"])
def test_load_folder_matches_archive(tmp_path: Path, which: str) -> None:
    files, _ = cifar100_files() if which == "cifar100" else cifar10_files()
    folder = ds.DATASETS[which]["folder"]
    archive = ds.load_archive(write_tar_gz(tmp_path / "a.tar.gz", folder, files))
    extracted = tmp_path / "extracted"
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    for where in (extracted / folder, extracted):  # the folder itself or its parent
        data = ds.load_folder(where)
        assert data.name == which and data.source == str(extracted / folder)
        np.testing.assert_array_equal(data.train.images, archive.train.images)
        np.testing.assert_array_equal(data.train.labels, archive.train.labels)
        assert data.test is not None and archive.test is not None
        np.testing.assert_array_equal(data.test.labels, archive.test.labels)
        assert data.classes == archive.classes


def test_load_folder_problems(tmp_path: Path) -> None:
    files, _ = cifar100_files()
    with pytest.raises(DataError, match="no such folder"):
        ds.load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an extracted CIFAR folder"):
        ds.load_folder(tmp_path / "empty")
    del files["test"]
    folder = write_folder(tmp_path / "partial", "cifar-100-python", files)
    with pytest.raises(DataError, match="missing test"):
        ds.load_folder(folder)
    write_folder(tmp_path / "partial", "cifar-10-batches-py", cifar10_files()[0])
    with pytest.raises(DataError, match="both"):
        ds.load_folder(tmp_path / "partial")


# --------------------------------------------------------------------------------------------------
# Safety and corrupt input
# --------------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _malicious_payloads(marker: Path) -> dict[str, bytes]:
    return {
        "os.system": pickle.dumps({b"fine_label_names": _RunsCommand(marker)}, protocol=2),
        "eval": b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.",
        "rot13": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        "object array": pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "rot13", "object array"])
def test_malicious_pickle_rejected_in_folder(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    files, _ = cifar100_files(n_train=2, n_test=2)
    files["meta"] = _malicious_payloads(marker)[kind]
    folder = write_folder(tmp_path, "cifar-100-python", files)
    with pytest.raises(DataError) as err:
        ds.load_folder(folder)
    assert "meta" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_malicious_pickle_rejected_in_archive(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    files, _ = cifar100_files(n_train=2, n_test=2)
    files["meta"] = _malicious_payloads(marker)["os.system"]
    path = write_tar_gz(tmp_path / "evil.tar.gz", "cifar-100-python", files)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        ds.load_archive(path)
    assert not marker.exists()


def test_truncated_and_corrupt_archives(tmp_path: Path, c100_archive: tuple[Path, dict]) -> None:
    raw = c100_archive[0].read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "corrupt": raw[:200] + bytes(b ^ 0x5A for b in raw[200:400]) + raw[400:],
        "garbage": b"this is not a tar file at all" * 10,
        "empty": b"",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.tar.gz"
        path.write_bytes(content)
        with pytest.raises(DataError) as err:
            ds.load_archive(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name


def test_archive_structure_problems(tmp_path: Path) -> None:
    files, _ = cifar100_files(n_train=3, n_test=2)
    partial = {k: v for k, v in files.items() if k != "test"}
    with pytest.raises(DataError, match="missing cifar-100-python/test"):
        ds.load_archive(write_tar_gz(tmp_path / "a.tar.gz", "cifar-100-python", partial))
    with pytest.raises(DataError, match="no CIFAR files"):
        ds.load_archive(write_tar_gz(tmp_path / "b.tar.gz", "something-else", files))
    bad_shape = dict(files, train=py2_dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        ds.load_archive(write_tar_gz(tmp_path / "c.tar.gz", "cifar-100-python", bad_shape))
    rows = np.zeros((2, 3072), np.uint8)
    out_of_range = dict(files, train=py2_dumps({b"data": rows, b"fine_labels": [0, 100], b"coarse_labels": [0, 0]}))
    with pytest.raises(DataError, match=r"fine_labels.*0\.\.99"):
        ds.load_archive(write_tar_gz(tmp_path / "d.tar.gz", "cifar-100-python", out_of_range))
    wrong_len = dict(files, train=py2_dumps({b"data": rows, b"fine_labels": [0], b"coarse_labels": [0, 0]}))
    with pytest.raises(DataError, match="fine_labels"):
        ds.load_archive(write_tar_gz(tmp_path / "e.tar.gz", "cifar-100-python", wrong_len))
    no_names = dict(files, meta=py2_dumps({b"fine_label_names": [b"a"] * 100}))
    with pytest.raises(DataError, match="coarse_label_names"):
        ds.load_archive(write_tar_gz(tmp_path / "f.tar.gz", "cifar-100-python", no_names))


# --------------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------------


def test_npz_cifar100_with_everything(tmp_path: Path, write_npz) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, 8).astype(np.uint8)
    names = np.array([f"class_{i}" for i in range(100)])
    path = write_npz(
        tmp_path / "d.npz",
        x_train=x,
        y_train=y,
        y_train_coarse=CIFAR100_FINE_TO_COARSE[y].astype(np.uint8),
        x_test=x[:3],
        y_test=y[:3],
        fine_label_names=names,
        coarse_label_names=np.array(CIFAR100_COARSE_CLASSES),
    )
    data = ds.load_npz(path)
    assert data.name == "cifar100" and data.classes == tuple(names) and data.source == str(path)
    np.testing.assert_array_equal(data.train.images, x)
    assert data.train.labels.dtype == np.int64 and data.train.coarse is not None
    assert data.test is not None and len(data.test) == 3 and data.test.coarse is None  # custom names: no mapping
    assert data.coarse_classes == CIFAR100_COARSE_CLASSES


def test_npz_inference_and_layouts(tmp_path: Path, write_npz) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    # Labels below 10, no names: CIFAR-10 with the built-in names.
    d10 = ds.load_npz(write_npz(tmp_path / "a.npz", x_train=x, y_train=np.arange(6)))
    assert d10.name == "cifar10" and d10.classes == CIFAR10_CLASSES and d10.test is None
    assert d10.train.coarse is None and d10.coarse_classes is None
    # A label >= 10: CIFAR-100; official classes, so coarse labels come from the official mapping.
    y = np.array([[0], [99], [5], [42], [7], [13]], dtype=np.int32)  # keras' (N, 1) label shape
    d100 = ds.load_npz(write_npz(tmp_path / "b.npz", x_train=x.transpose(0, 3, 1, 2), y_train=y))  # NCHW
    assert d100.name == "cifar100" and d100.classes == CIFAR100_CLASSES
    np.testing.assert_array_equal(d100.train.images, x)  # NCHW turned back into the same NHWC images
    np.testing.assert_array_equal(d100.train.labels, y[:, 0])
    assert d100.train.coarse is not None and d100.coarse_classes == CIFAR100_COARSE_CLASSES
    np.testing.assert_array_equal(d100.train.coarse, CIFAR100_FINE_TO_COARSE[y[:, 0]])
    # Byte-string names are decoded.
    d = ds.load_npz(
        write_npz(
            tmp_path / "c.npz",
            x_train=x,
            y_train=np.arange(6),
            fine_label_names=np.array([n.encode() for n in CIFAR10_CLASSES]),
        )
    )
    assert d.classes == CIFAR10_CLASSES


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": "x", "labels": "y"}, r"missing x_train, y_train \(found keys: images, labels\)"),
        ({"x_train": "x"}, "missing y_train"),
        ({"x_train": "x", "y_train": "y", "x_test": "x"}, "x_test and y_test must be given together"),
        (
            {"x_train": np.zeros((6, 28, 28, 3), np.uint8), "y_train": "y"},
            r"x_train must have shape \(N, 32, 32, 3\)",
        ),
        ({"x_train": np.zeros((6, 32, 32, 3), np.float32), "y_train": "y"}, "x_train must be uint8"),
        ({"x_train": "x", "y_train": np.arange(5)}, r"y_train must have shape \(6,\)"),
        ({"x_train": "x", "y_train": np.linspace(0, 1, 6)}, "y_train must be integers"),
        (
            {"x_train": "x", "y_train": np.array([0, 1, 2, 3, 4, 100])},
            r"y_train \(cifar100\) must lie in 0\.\.99",
        ),
        ({"x_train": "x", "y_train": np.array([0, 1, 2, 3, 4, -1])}, r"must lie in 0\.\.9"),
        ({"x_train": "x", "y_train": "y", "fine_label_names": np.array(["a"])}, "at least 2 classes"),
        (
            {"x_train": "x", "y_train": np.array([0, 1, 2, 0, 1, 2]), "fine_label_names": np.array(["a", "b"])},
            r"must lie in 0\.\.1",
        ),
        (
            {"x_train": "x", "y_train": "y", "y_train_coarse": np.full(6, 20)},
            r"y_train_coarse must lie in 0\.\.19",
        ),
        (
            {
                "x_train": "x",
                "y_train": "y",
                "fine_label_names": np.array(CIFAR10_CLASSES),
                "y_train_coarse": "y",
            },
            "only 10 classes",
        ),
    ],
)
def test_npz_problems(tmp_path: Path, arrays: dict, message: str, write_npz) -> None:
    defaults = {"x": np.zeros((6, 32, 32, 3), np.uint8), "y": np.arange(6)}
    arrays = {k: defaults[v] if isinstance(v, str) else v for k, v in arrays.items()}
    path = write_npz(tmp_path / "bad.npz", defaults=False, **arrays)
    with pytest.raises(DataError, match=message) as err:
        ds.load_npz(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_npz_unreadable(tmp_path: Path) -> None:
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x_train=np.array([{"a": 1}], dtype=object), y_train=np.arange(1))
    with pytest.raises(DataError, match="cannot read as .npz"):
        ds.load_npz(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="cannot read as .npz"):
        ds.load_npz(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        ds.load_npz(single)


# --------------------------------------------------------------------------------------------------
# load_data dispatch and download
# --------------------------------------------------------------------------------------------------


def test_load_data_dispatch(tmp_path: Path, c100_archive: tuple[Path, dict], write_npz) -> None:
    archive, truth = c100_archive
    assert ds.load_data(archive).name == "cifar100"
    assert ds.load_data(str(archive)).source == str(archive)
    npz = write_npz(tmp_path / "d.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=np.array([0, 1]))
    assert ds.load_data(npz).name == "cifar10"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert ds.load_data(tmp_path / "x").source == str(tmp_path / "x" / "cifar-100-python")
    # By name: the archive in root, then (preferred) the extracted folder in root.
    by_name = ds.load_data("cifar100", root=tmp_path)
    assert by_name.source == str(archive)
    np.testing.assert_array_equal(by_name.train.labels, truth["train"][1])
    assert ds.load_data("cifar100", root=tmp_path / "x").source == str(tmp_path / "x" / "cifar-100-python")

    with pytest.raises(DataError, match="no such file: .*missing.npz"):
        ds.load_data(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="cifar-resnet data download --dataset cifar10"):
        ds.load_data("cifar10", root=tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unrecognised data source"):
        ds.load_data(tmp_path / "notes.txt")


def test_load_data_downloads_when_asked(
    tmp_path: Path, c10_archive: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, truth = c10_archive
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(ds.DATASETS, "cifar10", dict(ds.DATASETS["cifar10"], url=archive.as_uri(), md5=md5))
    root = tmp_path / "cache"
    data = ds.load_data("cifar10", root=root, download_missing=True)
    assert (root / "cifar-10-python.tar.gz").is_file() and data.source == str(root / "cifar-10-python.tar.gz")
    np.testing.assert_array_equal(data.train.labels, truth["train"][1])


def test_first_train_on_a_fresh_machine_downloads_cifar100(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`cifar-resnet train --data cifar100` with an empty download cache fetches the archive (progress bar,
    md5 check) into ~/.cache/cifar-resnet and trains, instead of stopping with a hint."""
    files, _ = cifar100_files(n_train=200, n_test=100)
    archive = write_tar_gz(tmp_path / "served.tar.gz", "cifar-100-python", files)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(ds.DATASETS, "cifar100", dict(ds.DATASETS["cifar100"], url=archive.as_uri(), md5=md5))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code = main(
        [
            "train",
            "--data",
            "cifar100",
            "--val-split",
            "0",
            "--model",
            "fast",
            "--model-kwargs",
            '{"widths": [8, 16, 16], "stem_width": 8}',
            "--optimizer",
            "sgd",
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out, err = capsys.readouterr()
    cached = tmp_path / "home" / ".cache" / "cifar-resnet" / "cifar-100-python.tar.gz"
    assert code == 0 and cached.read_bytes() == archive.read_bytes()
    assert "cifar-100-python.tar.gz" in err  # the download's progress bar
    assert "200 training images, 100 test images" in out and "Epoch 1, last_lr: " in out


def test_the_missing_data_hint_is_a_command_that_parses(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        ds.load_data("cifar10", root=tmp_path)
    hint = str(err.value).split("run `")[1].split("`")[0]
    assert hint == "cifar-resnet data download --dataset cifar10"
    args = get_args_parser().parse_args(hint.split()[1:])
    assert (args.data_command, args.dataset) == ("download", "cifar10")


def test_download_good_md5(tmp_path: Path, c100_archive: tuple[Path, dict]) -> None:
    archive, _ = c100_archive
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "cache"
    got = ds.download("cifar100", root, url=archive.as_uri(), md5=md5.upper(), progress=False)
    assert got == root / "cifar-100-python.tar.gz" and got.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python.tar.gz"]  # no temp file left
    # Already there with the right md5: returned without touching the (now unreachable) URL.
    again = ds.download("cifar100", root, url=(tmp_path / "gone.tar.gz").as_uri(), md5=md5, progress=False)
    assert again == got


def test_download_bad_md5_and_failures(tmp_path: Path, c100_archive: tuple[Path, dict]) -> None:
    archive, _ = c100_archive
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="md5 mismatch") as err:
        ds.download("cifar100", root, url=archive.as_uri(), md5="0" * 32, progress=False)
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []  # neither the archive nor a temp file
    with pytest.raises(DataError, match="download failed"):
        ds.download("cifar100", root, url=(tmp_path / "nope.tar.gz").as_uri(), progress=False)
    assert list(root.iterdir()) == []
    with pytest.raises(DataError, match="unknown dataset"):
        ds.download("mnist", root)


# --------------------------------------------------------------------------------------------------
# Containers, splits, statistics
# --------------------------------------------------------------------------------------------------


def test_split_container() -> None:
    images = np.zeros((4, 32, 32, 3), np.uint8)
    split = Split(images, np.array([0, 1, 2, 3], dtype=np.int32))
    assert split.labels.dtype == np.int64 and len(split) == 4 and split.coarse is None
    sub = split.subset(np.array([3, 1]))
    assert sub.labels.tolist() == [3, 1] and sub.images.shape == (2, 32, 32, 3)
    with pytest.raises(DataError, match="uint8"):
        Split(images.astype(np.float32), np.arange(4))
    with pytest.raises(DataError, match="length 4"):
        Split(images, np.arange(3))
    with pytest.raises(DataError, match="10 class names"):
        CifarData("cifar10", split, None, None, ("a",), None, "x")


def test_eval_and_get_split(synthetic) -> None:
    data = synthetic(500, 0, shuffle=True)
    with pytest.raises(DataError, match="neither a validation nor a test split"):
        data.eval_split()
    with pytest.raises(DataError, match=r"no split 'test' \(available: train\)"):
        data.get_split("test")
    with pytest.raises(DataError, match="unknown split 'bogus'"):
        data.get_split("bogus")
    with_test = synthetic(500, 0, n_test=20, shuffle=True)
    assert with_test.eval_split()[0] == "test"
    split = ds.split_validation(with_test, 50)
    name, val = split.eval_split()
    assert name == "val" and val is split.val and split.get_split("val") is split.val


def test_split_validation_stratified(synthetic) -> None:
    data = synthetic(500, 0, shuffle=True)
    split = ds.split_validation(data, 100, seed=3)
    assert split.val is not None and len(split.val) == 100 and len(split.train) == 400
    assert np.bincount(split.val.labels, minlength=10).tolist() == [10] * 10
    assert np.bincount(split.train.labels, minlength=10).tolist() == [40] * 10
    train_ids, val_ids = ids(split.train), ids(split.val)
    assert not set(train_ids) & set(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(500))
    # Image/label pairs survive the split, and both parts keep the original order.
    np.testing.assert_array_equal(split.val.labels, data.train.labels[val_ids])
    assert (np.diff(train_ids) > 0).all() and (np.diff(val_ids) > 0).all()
    assert split.classes == data.classes and split.test is data.test

    same = ds.split_validation(data, 100, seed=3)
    np.testing.assert_array_equal(ids(same.val), val_ids)
    assert not np.array_equal(ids(ds.split_validation(data, 100, seed=4).val), val_ids)
    # Only labels, n_val and seed matter: other pixels do not change the choice.
    repainted = data.train.images.copy()
    repainted[:, 5:, :, :] = 99
    other = CifarData(data.name, Split(repainted, data.train.labels), None, None, data.classes, None, "other")
    np.testing.assert_array_equal(ids(ds.split_validation(other, 100, seed=3).val), val_ids)


def test_split_validation_remainder_and_limits(synthetic) -> None:
    data = synthetic(500, 0, shuffle=True)
    counts = np.bincount(ds.split_validation(data, 105, seed=1).val.labels, minlength=10)
    assert sorted(counts.tolist()) == [10] * 5 + [11] * 5
    few = np.bincount(ds.split_validation(data, 7, seed=1).val.labels, minlength=10)
    assert sorted(few.tolist()) == [0] * 3 + [1] * 7  # fewer than one per class: still as even as possible
    assert ds.split_validation(data, 0) is data
    for bad in (-1, 500, 501, 2.5, True):
        with pytest.raises(DataError, match="validation split"):
            ds.split_validation(data, bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="already has a validation split"):
        ds.split_validation(ds.split_validation(data, 10), 10)


def test_split_validation_unbalanced() -> None:
    """Each class gives in proportion to its size and keeps one image to train on: a class of 2 gives
    nothing to a small split and its one spare image to the largest split there can be."""
    labels = np.concatenate([np.zeros(2, np.int64), np.repeat(np.arange(1, 10), 30)])
    data = CifarData(
        "cifar10",
        Split(np.zeros((len(labels), 32, 32, 3), np.uint8), labels),
        None,
        None,
        CIFAR10_CLASSES,
        None,
        "unbalanced",
    )
    counts = np.bincount(ds.split_validation(data, 50, seed=0).val.labels, minlength=10)
    assert counts[0] == 0 and counts.sum() == 50 and set(counts[1:].tolist()) <= {5, 6}
    largest = ds.split_validation(data, 1 + 9 * 29, seed=0)  # every class down to one training image
    assert np.bincount(largest.train.labels, minlength=10).tolist() == [1] * 10
    with pytest.raises(DataError, match="between 0 and 262"):
        ds.split_validation(data, 263)


def test_subsample(synthetic) -> None:
    data = synthetic(500, 0, n_test=20, shuffle=True)
    small = ds.subsample(data, 30, seed=0)
    assert len(small.train) == 30 and np.bincount(small.train.labels).tolist() == [3] * 10
    assert small.test is data.test
    np.testing.assert_array_equal(ids(ds.subsample(data, 30, seed=0).train), ids(small.train))
    assert ds.subsample(data, 0) is data and ds.subsample(data, 500) is data
    with pytest.raises(DataError, match="training subset"):
        ds.subsample(data, 501)


def test_channel_stats_matches_numpy() -> None:
    images = np.random.default_rng(5).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
    mean, std = ds.channel_stats(images, chunk=8)  # several chunks and a ragged last one
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=0, atol=1e-12)
    flat = np.full((2, 32, 32, 3), 51, np.uint8)
    flat_mean, flat_std = ds.channel_stats(flat)
    np.testing.assert_allclose(flat_mean, 0.2, rtol=1e-15)
    assert flat_std == (0.0, 0.0, 0.0)
    with pytest.raises(DataError, match="uint8"):
        ds.channel_stats(images.astype(np.float32))
    with pytest.raises(DataError, match="no images"):
        ds.channel_stats(images[:0])


def test_describe(synthetic) -> None:
    info = ds.describe(ds.split_validation(synthetic(500, 0, n_test=20, shuffle=True), 100))
    assert info["name"] == "cifar10" and info["source"] == "synthetic" and info["num_classes"] == 10
    assert (info["train"], info["val"], info["test"]) == (400, 100, 20)
    assert info["train_per_class_min"] == info["train_per_class_max"] == 40
    assert len(info["mean"]) == len(info["std"]) == 3 and info["num_coarse_classes"] is None


def test_a_file_without_images_says_so(tmp_path, write_npz, cli, assert_one_line_error) -> None:
    """An .npz whose x_train is empty is refused as such, naming the file (not as a bad --val-split)."""
    empty = write_npz(tmp_path / "empty.npz", x_train=np.zeros((0, 32, 32, 3), np.uint8), y_train=np.zeros(0, int))
    with pytest.raises(DataError, match=f"{empty}: x_train holds no images"):
        ds.load_data(str(empty))
    code, _, err = cli("data", "info", "--data", empty)
    assert_one_line_error(code, err, str(empty), "x_train holds no images")
    code, _, err = cli("train", "--data", empty, "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "x_train holds no images")
    assert "between 0 and -1" not in err
    no_train = CifarData(
        "cifar10", Split(np.zeros((0, 32, 32, 3), np.uint8), []), None, None, CIFAR10_CLASSES, None, "mine"
    )
    for take in (ds.split_validation, ds.subsample):
        with pytest.raises(DataError, match="mine: the training split holds no images"):
            take(no_train, 5)


# --------------------------------------------------------------------------------------------------
# The real CIFAR-100 training split
# --------------------------------------------------------------------------------------------------


def test_real_data_shape_and_classes(real_data: CifarData) -> None:
    assert real_data.name == "cifar100" and real_data.test is None and real_data.val is None
    assert real_data.train.images.shape == (50000, 32, 32, 3) and real_data.train.images.flags.c_contiguous
    assert np.bincount(real_data.train.labels, minlength=100).tolist() == [500] * 100
    assert real_data.classes == CIFAR100_CLASSES and real_data.coarse_classes == CIFAR100_COARSE_CLASSES
    assert real_data.train.coarse is not None
    # The hard-coded mapping agrees with every image's coarse label in the file.
    np.testing.assert_array_equal(real_data.train.coarse, CIFAR100_FINE_TO_COARSE[real_data.train.labels])


def test_real_data_statistics(real_data: CifarData) -> None:
    mean, std = ds.channel_stats(real_data.train.images)
    np.testing.assert_allclose(mean, (0.5071, 0.4865, 0.4409), atol=1e-3)
    np.testing.assert_allclose(std, (0.2673, 0.2564, 0.2762), atol=1e-3)


def test_real_data_validation_split(real_data: CifarData) -> None:
    split = ds.split_validation(real_data, 5000, seed=0)
    assert split.val is not None and len(split.train) == 45000
    assert np.bincount(split.val.labels, minlength=100).tolist() == [50] * 100
    assert split.eval_split()[0] == "val"
