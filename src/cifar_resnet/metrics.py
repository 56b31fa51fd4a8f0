"""Metrics from logits and labels: every number the package reports is computed here.

Training's per-epoch line, ``cifar-resnet evaluate``, ``interpret`` and the notebook adapters all start
from the same two tensors (float logits ``(N, C)`` and int64 labels ``(N,)`` on the CPU, see
:func:`cifar_resnet.engine.collect_logits`), so their numbers agree by construction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_TO_COARSE, Split

__all__ = [
    "REPORT_KEYS",
    "basic_metrics",
    "compute_report",
    "expected_calibration_error",
    "fine_to_coarse",
    "fit_temperature",
    "topk_correct",
]

REPORT_KEYS = ("top1", "top5", "coarse_top1", "loss", "ece", "n", "per_class")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): is the label among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def basic_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy loss, top-1 and top-5 accuracy (fractions in [0, 1]) and the count."""
    if len(labels) == 0:
        raise ValueError("cannot evaluate on an empty split")
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "top1": topk_correct(logits, labels, 1).float().mean().item(),
        "top5": topk_correct(logits, labels, 5).float().mean().item(),
        "n": len(labels),
    }


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
    predictions are put in ``n_bins`` equal-width bins of confidence (the top probability), and the
    gaps between each bin's accuracy and its mean confidence are averaged, weighted by the bin's size.
    0 is perfectly calibrated."""
    if len(labels) == 0:
        raise ValueError("cannot evaluate on an empty split")
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    conf = conf.double()
    # bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 cannot occur for a softmax
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    return float((acc_sum - conf_sum).abs().sum() / len(labels))


def fine_to_coarse(classes, coarse_classes=None, split: Split | None = None):
    """The superclass index of each fine class, and the superclass names, or ``(None, None)``.

    The official CIFAR-100 classes use the official mapping (``data.CIFAR100_FINE_TO_COARSE``);
    other class lists take it from the coarse labels of ``split`` when it has them (each fine class
    must then always carry the same coarse label; a class absent from the split maps to -1).
    """
    classes = tuple(classes)
    coarse_names = tuple(coarse_classes) if coarse_classes else None
    if classes == CIFAR100_CLASSES and coarse_names in (None, CIFAR100_COARSE_CLASSES):
        return CIFAR100_FINE_TO_COARSE, CIFAR100_COARSE_CLASSES
    if split is None or split.coarse is None or coarse_names is None:
        return None, None
    mapping = np.full(len(classes), -1, dtype=np.int64)
    for fine, coarse in set(zip(split.labels.tolist(), split.coarse.tolist())):
        if mapping[fine] not in (-1, coarse):
            return None, None  # not a hierarchy: a fine class under two superclasses
        mapping[fine] = coarse
    return mapping, coarse_names


def compute_report(
    logits: torch.Tensor, labels: torch.Tensor, classes, *, coarse_map=None, coarse_classes=None, n_bins: int = 15
) -> dict:
    """Every metric of ``cifar-resnet evaluate`` from logits and labels.

    Keys (stable): ``top1``, ``top5``, ``loss``, ``n`` (as :func:`basic_metrics`), ``ece`` (expected
    calibration error), ``coarse_top1`` (a fine prediction counts as right when its superclass is the
    true one's; ``None`` without a fine -> coarse mapping), ``per_class`` ({name: {"n", "top1"}}, top1
    ``None`` for a class with no image) and, with a mapping, ``per_superclass`` ({name: {"n", "top1",
    "coarse_top1"}}). Fractions are in [0, 1].
    """
    report = basic_metrics(logits, labels)
    # exact fractions from the counts (basic_metrics averages in float32, training's way): 0.1045, not
    # 0.10450000315904617, and comparisons such as superclass >= fine accuracy hold exactly
    for k in (1, 5):
        report[f"top{k}"] = int(topk_correct(logits, labels, k).sum()) / len(labels)
    probs = logits.float().softmax(dim=1)
    report["ece"] = expected_calibration_error(probs, labels, n_bins)
    pred = logits.argmax(dim=1)
    correct = (pred == labels).double()
    num = len(classes)
    counts = torch.bincount(labels, minlength=num)
    hits = torch.bincount(labels, weights=correct, minlength=num)
    report["per_class"] = {
        name: {"n": int(counts[i]), "top1": float(hits[i] / counts[i]) if counts[i] else None}
        for i, name in enumerate(classes)
    }
    report["coarse_top1"] = None
    if coarse_map is not None:
        cmap = torch.tensor(np.asarray(coarse_map), dtype=torch.long)  # a copy: the constant is read-only
        true_c, pred_c = cmap[labels], cmap[pred]
        coarse_hit = ((true_c == pred_c) & (true_c >= 0)).double()
        report["coarse_top1"] = float(coarse_hit.mean())
        report["per_superclass"] = {}
        for j, name in enumerate(coarse_classes):
            mask = true_c == j
            n = int(mask.sum())
            report["per_superclass"][name] = {
                "n": n,
                "top1": float(correct[mask].mean()) if n else None,
                "coarse_top1": float(coarse_hit[mask].mean()) if n else None,
            }
    return report


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, low: float = 0.05, high: float = 20.0) -> float:
    """The T in [low, high] minimising the mean NLL of ``softmax(logits / T)``: a golden-section search over
    log T (the NLL is convex in 1/T, so it is unimodal in log T), to a relative precision of 1e-6."""
    if len(labels) == 0:
        raise ValueError("cannot calibrate on an empty split")
    logits = logits.double()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)
