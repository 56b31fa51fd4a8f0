"""What a classifier gets wrong, after fastai's ``ClassificationInterpretation``: the confusion matrix
(sorted by superclass for CIFAR-100), the most confused pairs, the images with the highest loss, and
accuracy per superclass, all from one pass of a checkpoint over a split.

    interp = Interpretation.from_checkpoint("runs/demo/best.pt", EvalData("data.npz", "val"))
    interp.most_confused(10)          # [("maple_tree", "oak_tree", 17), ...]
    write_report(interp, "report/")   # confusion_matrix.png, top_losses.png, CSV tables, report.json
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import plots
from .checkpoint import Checkpoint, atomic_write_text
from .engine import EvalOptions
from .inference import EvalData, run_checkpoint
from .metrics import compute_report

__all__ = ["Interpretation", "check_out_dir", "format_interpretation", "write_report"]


@dataclass
class Interpretation:
    """Logits of a model over a split, with the split's images, and the analyses built on them."""

    classes: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, the split's images in order
    labels: torch.Tensor  # (N,) int64
    logits: torch.Tensor  # (N, C) float32
    coarse_map: np.ndarray | None = None
    coarse_classes: tuple[str, ...] | None = None
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.probs = self.logits.float().softmax(dim=1)
        self.preds = self.logits.argmax(dim=1)
        self.losses = F.cross_entropy(self.logits.float(), self.labels, reduction="none")

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        source: EvalData | None = None,
        options: EvalOptions | None = None,
        *,
        device: str | torch.device = "auto",
        progress: bool | None = None,
    ) -> Interpretation:
        """Run a checkpoint (path or :class:`Checkpoint`) over the split ``source`` names (default: the
        run's own data and evaluation split; see ``inference.resolve_split``); ``options`` default to how
        the run evaluated (its test-time augmentation and precision, see ``inference.eval_options``)."""
        run = run_checkpoint(checkpoint, source, options, device=device, progress=progress)
        return cls(
            run.ckpt.classes,
            run.split.images,
            run.labels,
            run.logits,
            run.coarse_map,
            run.coarse_classes,
            run.description,
            run.meta,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 counts: row = true class, column = predicted class."""
        c = self.num_classes
        flat = self.labels * c + self.preds
        return torch.bincount(flat, minlength=c * c).reshape(c, c).numpy()

    def most_confused(self, k: int = 20, min_count: int = 1) -> list[tuple[str, str, int]]:
        """The ``k`` most frequent (true, predicted, count) mistakes with at least ``min_count`` images,
        most frequent first (ties: class order)."""
        cm = self.confusion_matrix().copy()
        np.fill_diagonal(cm, 0)
        order = np.argsort(-cm, axis=None, kind="stable")[:k]
        out = []
        for flat in order:
            t, p = divmod(int(flat), self.num_classes)
            if cm[t, p] < min_count or cm[t, p] == 0:
                break
            out.append((self.classes[t], self.classes[p], int(cm[t, p])))
        return out

    def top_losses(self, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Indices (into the split) and losses of the ``k`` images with the highest loss, highest first."""
        k = min(k, len(self.losses))
        values, idx = self.losses.topk(k)
        return idx.numpy(), values.numpy()

    def class_order(self) -> np.ndarray:
        """Class indices sorted by superclass (then by name), or in label order without superclasses."""
        if self.coarse_map is None:
            return np.arange(self.num_classes)
        return np.array(sorted(range(self.num_classes), key=lambda i: (int(self.coarse_map[i]), self.classes[i])))

    def report(self) -> dict:
        """``evaluate.compute_report`` of these logits (top-1/top-5/superclass/ECE/per class)."""
        return compute_report(
            self.logits, self.labels, self.classes, coarse_map=self.coarse_map, coarse_classes=self.coarse_classes
        )

    def plot_confusion(self, path=None):
        title = (
            f"Confusion matrix: {self.meta.get('model', '')} on {len(self.labels):,} "
            f"{self.meta.get('split', '')} images"
        )
        if self.coarse_map is not None:
            title += ", sorted by superclass"
        return plots.plot_confusion(
            self.confusion_matrix(),
            self.classes,
            path,
            layout=plots.ClassLayout(self.class_order(), self.coarse_map, self.coarse_classes),
            title=title,
        )

    def plot_top_losses(self, k: int = 16, path=None, ncols: int = 8):
        idx, losses = self.top_losses(k)
        titles = []
        for i, loss in zip(idx, losses):
            t, p = self.classes[int(self.labels[i])], self.classes[int(self.preds[i])]
            titles.append(
                f"{plots.short_label(p)} / {plots.short_label(t)}\n"
                f"loss {loss:.2f}, p(true) {100 * float(self.probs[i, self.labels[i]]):.1f}%"
            )
        return plots.plot_image_grid(
            self.images[idx],
            titles,
            path,
            wrong=[int(self.preds[i]) != int(self.labels[i]) for i in idx],
            ncols=min(ncols, len(idx)),
            title="Top losses: predicted / true, loss, probability of the true class",
        )


def _csv(rows: list[list], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path; ValueError if it exists and is not a directory (checked before any work)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    return out


def write_report(interp: Interpretation, out_dir, *, top_losses: int = 16, most_confused: int = 20) -> dict:
    """Write the interpretation to ``out_dir`` and return ``{"files": {name: path}, "report": ...,
    "most_confused": ..., "top_losses": ...}``.

    Files: ``confusion_matrix.png``, ``top_losses.png``, ``confusion_matrix.csv`` (counts; rows true,
    columns predicted, in class order), ``most_confused.csv``, ``per_superclass.csv`` (CIFAR-100),
    ``report.json`` (everything in one document). All are written atomically.
    """
    out = check_out_dir(out_dir)
    files = {
        "confusion_matrix.png": plots.save_figure(interp.plot_confusion(), out / "confusion_matrix.png", dpi=110),
        "top_losses.png": plots.save_figure(interp.plot_top_losses(top_losses), out / "top_losses.png"),
    }
    cm = interp.confusion_matrix()
    atomic_write_text(
        out / "confusion_matrix.csv",
        _csv([[name, *row.tolist()] for name, row in zip(interp.classes, cm)], ["true \\ predicted", *interp.classes]),
    )
    files["confusion_matrix.csv"] = out / "confusion_matrix.csv"
    confused = interp.most_confused(most_confused)
    atomic_write_text(out / "most_confused.csv", _csv([list(r) for r in confused], ["true", "predicted", "count"]))
    files["most_confused.csv"] = out / "most_confused.csv"
    report = interp.report()
    if report.get("per_superclass"):
        rows = [[k, v["n"], v["top1"], v["coarse_top1"]] for k, v in report["per_superclass"].items()]
        atomic_write_text(out / "per_superclass.csv", _csv(rows, ["superclass", "n", "top1", "coarse_top1"]))
        files["per_superclass.csv"] = out / "per_superclass.csv"
    idx, losses = interp.top_losses(top_losses)
    top = [
        {
            "index": int(i),
            "true": interp.classes[int(interp.labels[i])],
            "predicted": interp.classes[int(interp.preds[i])],
            "loss": float(v),
            "prob_true": float(interp.probs[i, interp.labels[i]]),
        }
        for i, v in zip(idx, losses)
    ]
    doc = {
        **interp.meta,
        **report,
        "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in confused],
        "top_losses": top,
    }
    atomic_write_text(out / "report.json", json.dumps(doc, indent=1) + "\n")
    files["report.json"] = out / "report.json"
    return {"files": files, "report": report, "most_confused": confused, "top_losses": top}


def format_interpretation(result: dict, meta: dict) -> str:
    """Readable text of :func:`write_report`'s result: headline numbers, most confused pairs, per
    superclass accuracy, and the files written."""
    r = result["report"]
    head = (
        f"{meta.get('checkpoint', '')} ({meta.get('model', '')}) on {r['n']:,} images: "
        f"{meta.get('split_description', meta.get('split', ''))}"
        + (f", {meta['precision']}" if meta.get("precision") else "")
    )
    lines = [
        head,
        f"top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%"
        + (f"  superclass {100 * r['coarse_top1']:.2f}%" if r.get("coarse_top1") is not None else "")
        + f"  loss {r['loss']:.4f}  ECE {r['ece']:.4f}",
    ]
    confused = result["most_confused"]
    if confused:
        w = max(len(t) for t, _, _ in confused)
        lines += ["", "most confused (true -> predicted: images):"]
        lines += [f"  {t:<{w}} -> {p}: {c}" for t, p, c in confused]
    if r.get("per_superclass"):
        w = max(len(k) for k in r["per_superclass"])
        lines += ["", f"  {'superclass':<{w}}  {'n':>5}  {'top-1':>7}  {'superclass':>10}"]
        for k, v in sorted(r["per_superclass"].items(), key=lambda kv: -(kv[1]["top1"] or 0)):
            if v["n"]:
                lines.append(f"  {k:<{w}}  {v['n']:>5}  {100 * v['top1']:6.2f}%  {100 * v['coarse_top1']:9.2f}%")
    lines += ["", "wrote " + ", ".join(str(p) for p in result["files"].values())]
    return "\n".join(lines)
