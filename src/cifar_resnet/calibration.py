"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", section 4.2): one
scalar T, fitted on held-out images by minimising the negative log-likelihood of ``softmax(logits / T)``,
makes the probabilities match how often the model is right, without changing any prediction.

``calibrate(checkpoint)`` fits T on the run's own validation split, in the precision the run evaluated in
unless told otherwise, stores it in the checkpoint (:meth:`~cifar_resnet.checkpoint.Checkpoint.replace`,
written atomically) and reports ECE and NLL before and after; from then on ``evaluate``, ``predict``,
``interpret``, ``serve`` and exported models divide the logits by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, load_checkpoint
from .engine import EvalOptions
from .inference import EvalData, run_checkpoint
from .metrics import expected_calibration_error, fit_temperature

__all__ = ["CalibrationReport", "calibrate", "fit_temperature"]


@dataclass
class CalibrationReport:
    checkpoint: str
    split: str
    split_description: str
    n: int
    temperature: float
    previous_temperature: float
    ece_before: float  # with temperature 1 (the raw model)
    ece_after: float
    nll_before: float
    nll_after: float
    tta: bool
    tta_translate: int
    precision: str  # what the logits were computed in: fp32, bf16 or fp16

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _ece_nll(logits: torch.Tensor, labels: torch.Tensor, t: float) -> tuple[float, float]:
    scaled = logits / t
    return (expected_calibration_error(scaled.softmax(dim=1), labels), float(F.cross_entropy(scaled.double(), labels)))


def calibrate(
    checkpoint: str | Path | Checkpoint,
    source: EvalData | None = None,
    options: EvalOptions | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    write: bool = True,
) -> tuple[CalibrationReport, torch.Tensor, torch.Tensor]:
    """Fit the temperature of ``checkpoint`` (a path, or a :class:`Checkpoint` loaded from one) on the split
    ``source`` names (default the run's validation images) and store it in the checkpoint file (unless
    ``write`` is false). ``options``: test-time augmentation, batch size and precision (default: as the run
    evaluated, see :func:`~cifar_resnet.inference.eval_options`). Returns the report and the raw logits and
    labels (for a reliability diagram)."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    path = Path(ckpt.source)
    if write and not path.is_file():
        raise ValueError(f"{ckpt.source} is not a checkpoint file to store the temperature in")
    run = run_checkpoint(ckpt, source or EvalData(split="val"), options, device=device, progress=progress)
    t = fit_temperature(run.raw_logits, run.labels)
    ece_before, nll_before = _ece_nll(run.raw_logits, run.labels, 1.0)
    ece_after, nll_after = _ece_nll(run.raw_logits, run.labels, t)
    opts = run.options
    if write:
        calibration = opts.calibration(run.split_name, len(run.labels))
        ckpt.replace(temperature=t, calibration=calibration).save(path)
    report = CalibrationReport(
        str(path),
        run.split_name,
        run.description,
        len(run.labels),
        t,
        ckpt.temperature,
        ece_before,
        ece_after,
        nll_before,
        nll_after,
        opts.tta,
        opts.tta_translate,
        opts.precision,
    )
    return report, run.raw_logits, run.labels
