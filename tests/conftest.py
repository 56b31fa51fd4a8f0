"""Shared fixtures and helpers.

Real data: the real CIFAR-100 file (``real_npz``, its path; ``real_data``, loaded once per session), and one small
model trained on it once per session (``real_run``); each skips with a reason where the file is absent, and every
test that uses one of them is marked ``slow`` automatically (see ``pytest_collection_modifyitems``).

Helpers, as fixtures that return a function: ``synthetic`` (a small CifarData whose classes a tiny model can
learn), ``write_npz`` (an .npz data file), ``cli`` (the command line run in-process), ``assert_one_line_error``,
``open_png`` and ``count_colour`` (figures checked by their pixels).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_resnet.cli import main
from cifar_resnet.data import CIFAR10_CLASSES, CIFAR100_CLASSES, CifarData, Split, load_npz
from cifar_resnet.data.folders import CACHE_ENV

REAL_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar100-train.npz"

# A small configuration that trains in about a minute on 2 CPU cores: the CPU-sized airbench-style net on
# a stratified 10,000-image subset, 3 epochs, evaluated on 2,000 held-out validation images.
REAL_RUN_ARGS = [
    "train",
    "--data",
    str(REAL_NPZ),
    "--val-split",
    "2000",
    "--train-subset",
    "10000",
    "--model",
    "fast_small",
    "--optimizer",
    "nesterov",
    "--lr",
    "0.2",
    "--weight-decay",
    "5e-4",
    "--grad-clip",
    "0",
    "--label-smoothing",
    "0.2",
    "--schedule",
    "linear",
    "--warmup",
    "0.2",
    "--flip",
    "alternating",
    "--epochs",
    "3",
    "--batch-size",
    "250",
    "--device",
    "cpu",
    "--no-progress",
]

# Tests that use any of these (directly or through another fixture) are marked slow.
REAL_DATA_FIXTURES = frozenset({"real_npz", "real_data", "real_run"})


def pytest_addoption(parser):
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the tests marked long (kill -9, torchrun restarts and sweep takeovers, benchmark smokes); "
        "`--long -m long` runs only them",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not config.getoption("--long"):
        long = [item for item in items if item.get_closest_marker("long")]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if not item.get_closest_marker("long")]


def pytest_report_header(config):
    if not config.getoption("--long"):
        return "tests marked long are left out: `--long` runs them too, `--long -m long` only them"


# ------------------------------------------------------------------------------------------------
# the real CIFAR-100 file
# ------------------------------------------------------------------------------------------------


def require_real_data() -> Path:
    if not REAL_NPZ.is_file():
        pytest.skip(f"real CIFAR-100 data not found at {REAL_NPZ}")
    return REAL_NPZ


@pytest.fixture(scope="session")
def real_npz() -> Path:
    """The path of the real CIFAR-100 training file (for tests that hand it to the CLI)."""
    return require_real_data()


@pytest.fixture(scope="session")
def real_data(real_npz) -> CifarData:
    """The real CIFAR-100 training file, 50,000 images, loaded once per test session. Shared: do not modify."""
    return load_npz(real_npz)


@pytest.fixture(scope="session")
def real_run(real_npz, tmp_path_factory) -> Path:
    """Run directory of a small model trained through the CLI on real images (last.pt, best.pt, ...)."""
    out = tmp_path_factory.mktemp("real_run")
    assert main(REAL_RUN_ARGS + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory):
    """Decoded image folders are cached in a temporary folder, never in the user's cache."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("image-cache"))
    yield Path(os.environ[CACHE_ENV])
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small models on small batches: they gain nothing from a second,
    and on a small CPU shared with other work, two OpenMP threads spinning against other processes made
    such tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------


def _synthetic(
    n_train: int = 120, n_val: int = 40, *, n_test: int = 0, num_classes: int = 10, seed: int = 0, shuffle: bool = False
) -> CifarData:
    """Noisy images whose class is visible (a colour per class), so a tiny model can learn them; image i of
    each split also carries its index in pixel (0, 0) (channel 0: i % 256, channel 1: i // 256), so that tests
    can track images through splits (see ``ids`` in test_datasets.py).

    Labels cycle through the classes (balanced when n is a multiple of ``num_classes``); ``shuffle`` permutes
    them (seeded). A split of 0 images is left out (``val``/``test`` None). 10 classes give "cifar10" with its
    class names, 100 give "cifar100" (without superclasses).
    """
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1).integers(0, 200, size=(num_classes, 3))

    def make(n: int) -> Split | None:
        if not n:
            return None
        labels = np.arange(n, dtype=np.int64) % num_classes
        if shuffle:
            labels = rng.permutation(labels)
        images = (rng.integers(0, 56, size=(n, 32, 32, 3)) + palette[labels][:, None, None, :]).astype(np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        return Split(images=images, labels=labels, coarse=None)

    name, classes = {10: ("cifar10", CIFAR10_CLASSES), 100: ("cifar100", CIFAR100_CLASSES)}[num_classes]
    train, val, test = make(n_train), make(n_val), make(n_test)
    return CifarData(
        name=name, train=train, test=test, val=val, classes=classes, coarse_classes=None, source="synthetic"
    )


@pytest.fixture(scope="session")
def synthetic():
    """``synthetic(n_train=120, n_val=40, *, n_test=0, num_classes=10, seed=0, shuffle=False)`` -> CifarData."""
    return _synthetic


def _write_npz(path: Path, *, n: int = 60, classes: int = 10, defaults: bool = True, **arrays) -> Path:
    """Write ``arrays`` to the .npz file ``path``. With ``defaults``, whichever of x_train (n random uint8
    images) and y_train (labels cycling through ``classes``) is not given is filled in."""
    if defaults:
        rng = np.random.default_rng(0)
        arrays.setdefault("x_train", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        arrays.setdefault("y_train", (np.arange(n) % classes).astype(np.uint8))
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def write_npz():
    """``write_npz(path, *, n=60, classes=10, defaults=True, **arrays)`` -> path."""
    return _write_npz


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs the CLI in-process (arguments may be paths); returns (exit status, stdout, stderr)."""

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-resnet: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="session")
def assert_one_line_error():
    """``assert_one_line_error(code, err, *fragments)``: exit status 2 and one "cifar-resnet: error: " line
    on stderr that holds every fragment."""
    return _assert_one_line_error


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def _open_png(path, size=None) -> np.ndarray:
    """The RGB pixels of a PNG file, after checking it is one (and of ``size``, if given) and not blank."""
    with Image.open(path) as img:
        assert img.format == "PNG", path
        if size is not None:
            assert img.size == size, (path, img.size)
        img.load()
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10, f"{path} looks blank"
    return pixels


def _count_colour(pixels: np.ndarray, rgb, tol: int = 30) -> int:
    """How many pixels lie within ``tol`` of ``rgb`` in every channel."""
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="session")
def open_png():
    """``open_png(path, size=None)`` -> the (H, W, 3) uint8 pixels of a non-blank PNG file of that size."""
    return _open_png


@pytest.fixture(scope="session")
def count_colour():
    """``count_colour(pixels, rgb, tol=30)`` -> the number of pixels of about that colour."""
    return _count_colour
