"""Validation split, subsets and statistics of a :class:`~cifar_resnet.data.sources.CifarData`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import DataError
from .sources import CifarData

__all__ = ["channel_stats", "describe", "split_validation", "subsample"]


def _check_count(n: Any, what: str, limit: int, data: CifarData) -> int:
    """``n`` images to take from ``data``'s training split, checked to be an integer in 0..``limit``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"{data.source}: {what} must be an integer, got {n!r}")
    if n > 0 and not len(data.train):
        raise DataError(f"{data.source}: the training split holds no images")
    if n < 0 or n > max(limit, 0):
        raise DataError(f"{data.source}: {what} must be between 0 and {limit}, got {n}")
    return int(n)


def _stratified_indices(
    labels: np.ndarray, num_classes: int, n: int, rng: np.random.Generator, keep: int = 0
) -> np.ndarray:
    """Sorted indices of ``n`` items drawn from each class in proportion to its size (less ``keep``, the
    items each class keeps back): every class gets the whole part of its share, and the items left over go
    one each to the classes with the largest fractions, ties in a seeded random order (so low labels are
    not always favoured). Classes of equal size get equal shares, the remainder going to a seeded few.
    """
    counts = np.bincount(labels, minlength=num_classes)
    room = np.maximum(counts - keep, 0)
    order = rng.permutation(num_classes)
    ideal = n * room / max(int(room.sum()), 1)
    quota = np.floor(ideal).astype(np.int64)
    rank = np.empty(num_classes, dtype=np.int64)
    rank[order] = np.arange(num_classes)
    fraction = ideal - quota
    for c in sorted(range(num_classes), key=lambda c: (-fraction[c], rank[c]))[: n - int(quota.sum())]:
        quota[c] += 1
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = [rng.permutation(by_class[starts[c] : starts[c + 1]])[: quota[c]] for c in range(num_classes) if quota[c]]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def split_validation(data: CifarData, n_val: int, seed: int = 0) -> CifarData:
    """Hold ``n_val`` training images out as a validation split stratified by class (in proportion to each
    class's size, each class keeping one image to train on), seeded and deterministic. A dataset of its own
    classes (not CIFAR's) needs at least 2 images of each class.

    The split depends only on the training labels, ``n_val`` and ``seed``; image order is preserved in
    both parts. ``n_val == 0`` returns ``data`` unchanged.
    """
    counts = np.bincount(data.train.labels, minlength=data.num_classes)
    n_val = _check_count(n_val, "the validation split (--val-split)", int(np.maximum(counts - 1, 0).sum()), data)
    if n_val == 0:
        return data
    if data.val is not None:
        raise DataError(f"{data.source}: already has a validation split of {len(data.val)} images")
    if data.name not in ("cifar10", "cifar100") and counts.min() < 2:  # CIFAR's subsets may lack a class
        name, count = data.classes[int(counts.argmin())], int(counts.min())
        raise DataError(
            f"{data.source}: class {name!r} has {count} training image(s); --val-split needs at least 2 of each "
            "class (one to train on, one to validate)"
        )
    held = _stratified_indices(data.train.labels, data.num_classes, n_val, np.random.default_rng(seed), keep=1)
    keep = np.ones(len(data.train), dtype=bool)
    keep[held] = False
    return dataclasses.replace(data, train=data.train.subset(keep), val=data.train.subset(held))


def subsample(data: CifarData, n_train: int, seed: int = 0) -> CifarData:
    """Keep a stratified, seeded subset of ``n_train`` training images (for quick runs and tests).

    ``n_train == 0`` or ``n_train == len(data.train)`` returns ``data`` unchanged; test and validation
    splits are kept as they are.
    """
    n_train = _check_count(n_train, "the training subset (--train-subset)", len(data.train), data)
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
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
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
