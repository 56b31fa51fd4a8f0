"""``cifar-resnet evaluate``: a checkpoint's report on a split, as data and as a text table.

``evaluate_checkpoint(path, EvalData(data, split))`` needs nothing but the checkpoint (see
:mod:`cifar_resnet.inference` for how the model and the run's own split are found again) and returns
:func:`~cifar_resnet.metrics.compute_report`'s dict: top-1/top-5, loss, superclass accuracy, expected
calibration error and per-class/per-superclass accuracy. ``format_report`` makes it a table.

By default a checkpoint is evaluated as its run evaluated it (test-time augmentation, batch size,
precision), so that its own split gives the numbers training recorded; the report says what was used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .engine import EvalOptions
from .inference import EvalData, run_checkpoint
from .metrics import compute_report

__all__ = ["evaluate_checkpoint", "format_report"]


def evaluate_checkpoint(
    checkpoint: str | Path | Checkpoint,
    source: EvalData | None = None,
    options: EvalOptions | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> dict:
    """Evaluate a checkpoint on a split (arguments as :func:`~cifar_resnet.inference.run_checkpoint`;
    ``options`` default to how the run evaluated: its test-time augmentation, evaluation batch size and
    precision, see :func:`~cifar_resnet.inference.eval_options`).

    Returns :func:`compute_report`'s dict plus the run's :attr:`CheckpointRun.meta`: ``split``,
    ``split_description``, ``tta``, ``tta_translate``, ``precision``, ``model``, ``epoch``, ``checkpoint``,
    ``data``, ``temperature``.
    """
    run = run_checkpoint(checkpoint, source, options, device=device, progress=progress)
    report = compute_report(
        run.logits, run.labels, run.ckpt.classes, coarse_map=run.coarse_map, coarse_classes=run.coarse_classes
    )
    report.update(run.meta)
    return report


def _columns(cells: list[str], width: int, total: int = 110) -> list[str]:
    per_row = max(1, total // (width + 2))
    rows = -(-len(cells) // per_row)
    return [
        "  ".join(cells[r + k * rows].ljust(width) for k in range(per_row) if r + k * rows < len(cells)).rstrip()
        for r in range(rows)
    ]


def format_report(report: dict, per_class: bool = True) -> str:
    """A readable text table of :func:`evaluate_checkpoint`'s report."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:6.2f}%"

    epoch = f", epoch {report['epoch']}" if report.get("epoch") is not None else ""
    lines = [
        f"checkpoint   {report.get('checkpoint', '?')} ({report.get('model', '?')}{epoch})",
        f"images       {report['n']:,} ({report.get('split_description', report.get('split', '?'))})"
        + (", flip TTA" if report.get("tta") else "")
        + (f", {report['tta_translate']} px translate TTA" if report.get("tta_translate") else "")
        + (f", {report['precision']}" if report.get("precision") else ""),
        f"temperature  {report.get('temperature', 1.0):.4g}"
        + ("  (calibrated)" if report.get("temperature", 1.0) != 1.0 else "  (not calibrated)"),
        f"top-1        {pct(report['top1'])}",
        f"top-5        {pct(report['top5'])}",
    ]
    if report.get("coarse_top1") is not None:
        lines.append(f"superclass   {pct(report['coarse_top1'])}  (a prediction in the true superclass counts)")
    lines += [
        f"loss         {report['loss']:.4f}  (mean cross-entropy)",
        f"ECE          {report['ece']:.4f}  (expected calibration error, 15 bins)",
    ]
    if report.get("per_superclass"):
        rows = sorted(report["per_superclass"].items(), key=lambda kv: -(kv[1]["top1"] or 0))
        width = max(len(k) for k in report["per_superclass"])
        lines += ["", f"{'superclass':<{width}}  {'n':>5}  {'top-1':>7}  {'superclass':>10}"]
        lines += [f"{k:<{width}}  {v['n']:>5}  {pct(v['top1'])}  {pct(v['coarse_top1']):>10}" for k, v in rows]
    if per_class and report.get("per_class"):
        items = [(k, v) for k, v in report["per_class"].items() if v["n"]]
        items.sort(key=lambda kv: (-kv[1]["top1"], kv[0]))
        width = max(len(k) for k, _ in items) + 8
        lines += ["", "per-class top-1, best first:"]
        lines += _columns([f"{k:<{width - 8}}{100 * v['top1']:6.1f}%" for k, v in items], width)
    return "\n".join(lines)
