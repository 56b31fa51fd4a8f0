"""`cifar-resnet interpret`: confusion matrix, most confused pairs, top losses, per-superclass accuracy."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from cifar_resnet.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
)
from cifar_resnet.interpret import Interpretation

pytestmark = pytest.mark.usefixtures("one_thread")


def crafted():
    """6 images of CIFAR-10 classes with chosen predictions: 3 right, cat->dog twice, ship->airplane once."""
    labels = torch.tensor([0, 3, 3, 3, 8, 9])
    preds = [0, 3, 5, 5, 0, 9]
    logits = torch.full((6, 10), -2.0)
    for i, p in enumerate(preds):
        logits[i, p] = 3.0
    logits[3, 5] = 5.0  # the second cat->dog more confidently wrong: the highest loss
    images = np.zeros((6, 32, 32, 3), np.uint8)
    return Interpretation(list(CIFAR10_CLASSES), images, labels, logits)


def test_confusion_most_confused_and_top_losses_on_crafted_logits(tmp_path, open_png):
    interp = crafted()
    cm = interp.confusion_matrix()
    assert cm.sum() == 6 and np.trace(cm) == 3 and cm[3, 5] == 2 and cm[8, 0] == 1
    assert interp.most_confused() == [("cat", "dog", 2), ("ship", "airplane", 1)]
    assert interp.most_confused(min_count=2) == [("cat", "dog", 2)]
    idx, losses = interp.top_losses(3)
    assert idx[0] == 3 and list(losses) == sorted(losses, reverse=True)
    expected = -torch.log_softmax(interp.logits, 1)[torch.arange(6), interp.labels]
    assert losses[0] == pytest.approx(float(expected.max()))
    assert list(interp.class_order()) == list(range(10))  # no superclasses for CIFAR-10
    interp.plot_confusion(tmp_path / "cm.png")  # 10 classes: counts written in the cells
    open_png(tmp_path / "cm.png")


def test_interpret_command_on_the_real_run(real_run, tmp_path, cli, open_png):
    out_dir = tmp_path / "report"
    code, out, err = cli(
        "interpret",
        real_run / "best.pt",
        "--out",
        out_dir,
        "--top-losses",
        "24",
        "--most-confused",
        "10",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "most confused" in out and "superclass" in out and "wrote" in out

    # the figures, opened: a 100-class matrix big enough to read, and 8 x 3 top-loss images
    open_png(out_dir / "confusion_matrix.png", (1487, 1430))
    open_png(out_dir / "top_losses.png", (1240, 570))

    report = json.loads((out_dir / "report.json").read_text())
    assert report["precision"] in ("fp32", "bf16") and report["precision"] in out  # the run's, resolved for the CPU
    rows = list(csv.reader((out_dir / "confusion_matrix.csv").open()))
    classes = rows[0][1:]
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert cm.shape == (100, 100) and cm.sum() == report["n"] == 2000
    # top-1 two ways: the matrix's diagonal and the report's accuracy
    assert np.trace(cm) / cm.sum() == pytest.approx(report["top1"], abs=1e-6)
    # superclass accuracy from the matrix: mass in the blocks where true and predicted superclass agree
    same = CIFAR100_FINE_TO_COARSE[:, None] == CIFAR100_FINE_TO_COARSE[None, :]
    assert cm[same].sum() / cm.sum() == pytest.approx(report["coarse_top1"], abs=1e-6)

    confused = list(csv.DictReader((out_dir / "most_confused.csv").open()))
    counts = [int(r["count"]) for r in confused]
    assert len(confused) == 10 and counts == sorted(counts, reverse=True)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    assert counts[0] == off.max()
    first = confused[0]
    assert cm[classes.index(first["true"]), classes.index(first["predicted"])] == counts[0]

    per_sup = list(csv.DictReader((out_dir / "per_superclass.csv").open()))
    assert len(per_sup) == 20 and sum(int(r["n"]) for r in per_sup) == 2000

    top = report["top_losses"]
    assert len(top) == 24 and [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    for t in top:
        assert t["loss"] == pytest.approx(-math.log(t["prob_true"]), rel=1e-4)


def test_classes_are_sorted_by_superclass():
    interp = Interpretation(
        list(CIFAR100_CLASSES),
        np.zeros((1, 32, 32, 3), np.uint8),
        torch.tensor([0]),
        torch.zeros(1, 100),
        CIFAR100_FINE_TO_COARSE,
        CIFAR100_COARSE_CLASSES,
    )
    order = interp.class_order()
    assert sorted(order) == list(range(100))
    assert list(CIFAR100_FINE_TO_COARSE[order]) == sorted(CIFAR100_FINE_TO_COARSE)


def test_out_must_be_a_directory(real_run, tmp_path, cli, assert_one_line_error):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("interpret", real_run / "best.pt", "--out", tmp_path / "file")
    assert_one_line_error(code, err, "is not a directory")
