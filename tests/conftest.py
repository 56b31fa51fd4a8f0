"""Shared fixtures: the real CIFAR-100 file (skipped with a reason where absent) and one small model
trained on it once per test session, which the learning test and the inspection commands share."""

from pathlib import Path

import pytest

REAL_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar100-train.npz"

# A small configuration that trains in about a minute on 2 CPU cores: the CPU-sized airbench-style net on
# a stratified 10,000-image subset, 3 epochs, evaluated on 2,000 held-out validation images.
REAL_RUN_ARGS = [
    "train", "--data", str(REAL_NPZ), "--val-split", "2000", "--train-subset", "10000",
    "--model", "fast_small", "--optimizer", "nesterov", "--lr", "0.2", "--weight-decay", "5e-4",
    "--grad-clip", "0", "--label-smoothing", "0.2", "--schedule", "linear", "--warmup", "0.2",
    "--flip", "alternating", "--epochs", "3", "--batch-size", "250", "--device", "cpu", "--no-progress",
]


def require_real_data() -> Path:
    if not REAL_NPZ.is_file():
        pytest.skip(f"real CIFAR-100 data not found at {REAL_NPZ}")
    return REAL_NPZ


@pytest.fixture(scope="session")
def real_npz() -> Path:
    return require_real_data()


@pytest.fixture(scope="session")
def real_run(real_npz, tmp_path_factory) -> Path:
    """Run directory of a small model trained through the CLI on real images (last.pt, best.pt, ...)."""
    from cifar_resnet.cli import main

    out = tmp_path_factory.mktemp("real_run")
    assert main(REAL_RUN_ARGS + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small models on small batches: they gain nothing from a second,
    and on a small CPU shared with other work, two OpenMP threads spinning against other processes made
    such tests several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
