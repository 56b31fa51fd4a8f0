"""Metrics over a loader, and the reports of ``cifar-resnet evaluate``.

``collect_logits`` runs a model over a loader once (optionally with flip test-time augmentation) and
returns the logits and labels on the CPU; every metric is then computed from those two tensors, so the
numbers printed during training, by ``cifar-resnet evaluate`` and in reports agree by construction.

``evaluate_checkpoint(path, data, split)`` needs nothing but the checkpoint: it rebuilds the model,
normalises with the checkpoint's mean/std (never recomputed), and finds the run's own validation or
training images again (:func:`resolve_split`). ``compute_report`` gives top-1/top-5, loss, superclass
accuracy, expected calibration error and per-class/per-superclass accuracy; ``format_report`` a table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; on CPU and MPS full precision (bf16 convolutions on CPUs without
    AMX are slower than fp32, and the result is what a user of this machine expects)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tta_logits(model: nn.Module, x: torch.Tensor, *, tta: bool = False, translate: int = 0) -> torch.Tensor:
    """The model's logits for a batch, with test-time augmentation.

    ``tta``: the mean of the image's and its mirror image's logits (flip TTA). ``translate`` (pixels,
    > 0): airbench's TTA level 2, half the weight on the image itself and a quarter each on the image
    shifted ``translate`` pixels up-left and down-right (reflect-padded), each view flip-averaged when
    ``tta``.
    """
    def view(v: torch.Tensor) -> torch.Tensor:
        out = model(v)
        return 0.5 * (out + model(v.flip(-1))) if tta else out

    logits = view(x)
    if translate > 0:
        t, (h, w) = translate, x.shape[-2:]
        if not t < min(h, w):
            raise ValueError(f"tta translate must be smaller than the image, got {t} for {h}x{w}")
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        shifts = [padded[..., :h, :w], padded[..., 2 * t:, 2 * t:]]
        shifted = sum(view(s.contiguous(memory_format=torch.channels_last)) for s in shifts)
        logits = 0.5 * logits + 0.25 * shifted
    return logits


@torch.no_grad()
def collect_logits(model: nn.Module, loader, *, tta: bool = False, translate: int = 0, amp: bool = True,
                   progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (N, C) and int64 labels (N,) on the CPU, in loader order.

    ``tta`` and ``translate``: test-time augmentation, see :func:`tta_logits` (flip TTA as in airbench and
    the CIFAR speedruns; translate as airbench's level 2).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs, labels = [], []
    try:
        for x, y in loader:
            with autocast_for(device, amp):
                logits = tta_logits(model, x, tta=tta, translate=translate)
            outs.append(logits.float())
            labels.append(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    # one device->host transfer at the end, not one per batch
    return torch.cat(outs).cpu(), torch.cat(labels).cpu()


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


def evaluate_model(model: nn.Module, loader, *, tta: bool = False, amp: bool = True) -> dict:
    """``basic_metrics`` of a model over a loader."""
    logits, labels = collect_logits(model, loader, tta=tta, amp=amp)
    return basic_metrics(logits, labels)


# --------------------------------------------------------------------------------------------------
# Full reports: ``cifar-resnet evaluate``
# --------------------------------------------------------------------------------------------------

REPORT_KEYS = ("top1", "top5", "coarse_top1", "loss", "ece", "n", "per_class")


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


def fine_to_coarse(classes, coarse_classes=None, split=None):
    """The superclass index of each fine class, and the superclass names, or ``(None, None)``.

    The official CIFAR-100 classes use the official mapping (``datasets.CIFAR100_FINE_TO_COARSE``);
    other class lists take it from the coarse labels of ``split`` when it has them (each fine class
    must then always carry the same coarse label; a class absent from the split maps to -1).
    """
    from .datasets import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_TO_COARSE

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


def compute_report(logits: torch.Tensor, labels: torch.Tensor, classes, *, coarse_map=None,
                   coarse_classes=None, n_bins: int = 15) -> dict:
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


def _source_splits_like_run(ckpt: dict, data):
    """``data`` with the run's validation split held out and its training subset taken, exactly as
    ``train.prepare_data`` did, or ``None`` when ``data`` is not the source the run was trained on.

    Whether it is the same source is checked, not assumed: the checkpoint's normalisation statistics
    were computed from the run's training images, so the re-split training images must reproduce them
    exactly (``channel_stats`` counts pixels in integer histograms, so the numbers are bit-for-bit).
    """
    from .datasets import DataError, channel_stats
    from .train import TrainConfig, prepare_data

    try:
        config = ckpt.get("config")
        # no saved config: nothing was held out or subsampled
        config = TrainConfig.from_dict(config) if config else TrainConfig(val_split=0)
        run = prepare_data(config, data)
        mean, std = channel_stats(run.train.images)
    except DataError:
        return None
    same = all(abs(a - b) <= 1e-9 for a, b in zip((*mean, *std), (*ckpt["mean"], *ckpt["std"])))
    return run if same else None


def resolve_split(ckpt: dict, data, split: str | None = None):
    """The images a checkpoint is evaluated on: ``(split_name, Split, description)``.

    ``split`` is "train", "val" or "test" (default: the split the run evaluated on, ``ckpt["eval_split"]``).
    "val" and "train" mean the run's own held-out validation images and the images it trained on: the
    run's ``val_split``, ``train_subset`` and ``seed`` (from the checkpoint's config) are applied to
    ``data`` again, and that ``data`` is the run's source is verified against the checkpoint's
    normalisation statistics. For another source, "val" is refused (it would be other images) and
    "train" is all of that source's training images. "test" is the source's official test split.
    """
    split = split or ckpt.get("eval_split") or "test"
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    if split == "test":
        return "test", data.get_split("test"), f"{data.source}: official test split"
    run = _source_splits_like_run(ckpt, data)
    if run is not None:
        if split == "val":
            if run.val is None:
                raise ValueError(f"the run held out no validation split (val_split 0); use --split test"
                                 f"{'' if data.test is not None else ' with a source that has one'}")
            return "val", run.val, f"{data.source}: the run's held-out validation split"
        return "train", run.train, f"{data.source}: the run's training images"
    if split == "val":
        if data.val is not None:
            return "val", data.val, f"{data.source}: validation split"
        raise ValueError(f"{data.source} is not the data this checkpoint was trained on (its training images do "
                         "not reproduce the checkpoint's normalisation statistics), so the run's validation "
                         "images cannot be recovered from it; pass the run's --data, or use --split test")
    return "train", data.train, f"{data.source}: all training images (not the run's: another source)"


def check_classes(ckpt: dict, data, source: str = "checkpoint") -> None:
    """ValueError unless ``data`` has the checkpoint's classes, in the same order."""
    if list(ckpt["classes"]) != list(data.classes):
        n, m = len(ckpt["classes"]), data.num_classes
        detail = f"{n} classes vs {m}" if n != m else "the class names differ"
        raise ValueError(f"{source} was trained on other classes than {data.source} has ({detail})")


def model_from_checkpoint(ckpt: dict, device: torch.device, source: str = "checkpoint") -> nn.Module:
    """The checkpoint's model, weights loaded, in eval mode on ``device``."""
    from .checkpoint import CheckpointError, build_model

    if not ckpt.get("classes") or not all(isinstance(c, str) and c for c in ckpt["classes"]):
        raise CheckpointError(f"{source} has no class names")
    model = build_model(ckpt, source=source).to(device)
    model.to(memory_format=torch.channels_last)
    return model.eval()


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "img"):
    """A tqdm bar on stderr (enabled by default when stderr is a terminal)."""
    import sys

    enabled = sys.stderr.isatty() if enabled is None else enabled
    if enabled:
        from tqdm.auto import tqdm  # a widget in Jupyter, text elsewhere
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=not enabled)


def split_logits(model: nn.Module, ckpt: dict, split, *, device: torch.device, batch_size: int = 500,
                 tta: bool = False, translate: int = 0, amp: bool = True, progress: bool | None = None,
                 desc: str = "evaluate") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` over a whole Split, normalised with the checkpoint's mean/std."""
    from .loader import CifarLoader

    loader = CifarLoader(split, batch_size, mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), device=device)
    with progress_bar(len(split), desc, progress) as bar:
        return collect_logits(model, loader, tta=tta, translate=translate, amp=amp, progress=bar)


def tta_for(ckpt: dict, tta: bool | None) -> bool:
    """``tta`` if given, else what the run evaluated with (its config's ``tta``), so that by default a
    checkpoint is measured the way its training history was."""
    return bool((ckpt.get("config") or {}).get("tta", False)) if tta is None else bool(tta)


def translate_for(ckpt: dict, translate: int | None) -> int:
    """``translate`` if given, else the run's ``tta_translate`` (0 for runs from before it existed)."""
    value = int((ckpt.get("config") or {}).get("tta_translate", 0)) if translate is None else int(translate)
    if value < 0:
        raise ValueError(f"--tta-translate must be >= 0, got {value}")
    return value


@dataclass
class CheckpointRun:
    """A checkpoint run over one split: what ``evaluate`` and ``interpret`` both start from."""

    ckpt: dict
    source: str             # the checkpoint's path (or "checkpoint" for a dict)
    data: object            # the CifarData the split came from
    split: str              # "train" | "val" | "test"
    images: object          # the Split itself
    description: str
    tta: bool
    translate: int          # pixels of translate TTA (0: none)
    logits: torch.Tensor    # (N, C) float32, CPU
    labels: torch.Tensor    # (N,) int64, CPU
    coarse_map: object
    coarse_classes: object

    @property
    def meta(self) -> dict:
        return {"checkpoint": self.source, "model": self.ckpt["model_name"], "epoch": self.ckpt.get("epoch"),
                "split": self.split, "split_description": self.description, "tta": self.tta,
                "tta_translate": self.translate, "data": self.data.source}


def run_checkpoint(checkpoint, data=None, split: str | None = None, *, tta: bool | None = None,
                   translate: int | None = None, batch_size: int = 500, device: str | torch.device = "auto", amp: bool = True,
                   progress: bool | None = None, desc: str = "evaluate") -> CheckpointRun:
    """Load a checkpoint (a path or a loaded dict), find the split of ``data`` (a source for
    ``datasets.load_data`` or a ``CifarData``; default: the run's own source, from the checkpoint's
    config; see :func:`resolve_split` for what the split names mean) and run the model over it.
    ``tta``, ``translate``: flip and translate test-time augmentation (default: as the run evaluated, see
    :func:`tta_for` and :func:`translate_for`)."""
    from .checkpoint import load_checkpoint
    from .train import resolve_device

    source = str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint"
    ckpt = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    data = data_for_checkpoint(ckpt, data, source)
    dev = resolve_device(device) if isinstance(device, str) else device
    model = model_from_checkpoint(ckpt, dev, source)
    check_classes(ckpt, data, source)
    name, images, description = resolve_split(ckpt, data, split)
    tta, translate = tta_for(ckpt, tta), translate_for(ckpt, translate)
    logits, labels = split_logits(model, ckpt, images, device=dev, batch_size=batch_size, tta=tta,
                                  translate=translate, amp=amp, progress=progress, desc=f"{desc} {name}")
    coarse_map, coarse_names = fine_to_coarse(ckpt["classes"], ckpt.get("coarse_classes") or data.coarse_classes,
                                              images)
    return CheckpointRun(ckpt, source, data, name, images, description, tta, translate, logits, labels,
                         coarse_map, coarse_names)


def evaluate_checkpoint(checkpoint, data=None, split: str | None = None, *, tta: bool | None = None,
                        translate: int | None = None, batch_size: int = 500, device: str | torch.device = "auto", amp: bool = True,
                        progress: bool | None = None) -> dict:
    """Evaluate a checkpoint on a split (arguments as :func:`run_checkpoint`).

    Returns :func:`compute_report`'s dict plus the run's :attr:`CheckpointRun.meta`: ``split``,
    ``split_description``, ``tta``, ``tta_translate``, ``model``, ``epoch``, ``checkpoint``, ``data``.
    """
    run = run_checkpoint(checkpoint, data, split, tta=tta, translate=translate, batch_size=batch_size,
                         device=device, amp=amp, progress=progress)
    report = compute_report(run.logits, run.labels, run.ckpt["classes"], coarse_map=run.coarse_map,
                            coarse_classes=run.coarse_classes)
    report.update(run.meta)
    return report


def _columns(cells: list[str], width: int, total: int = 110) -> list[str]:
    per_row = max(1, total // (width + 2))
    rows = -(-len(cells) // per_row)
    return ["  ".join(cells[r + k * rows].ljust(width) for k in range(per_row) if r + k * rows < len(cells)).rstrip()
            for r in range(rows)]


def format_report(report: dict, per_class: bool = True) -> str:
    """A readable text table of :func:`evaluate_checkpoint`'s report."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:6.2f}%"

    epoch = f", epoch {report['epoch']}" if report.get("epoch") is not None else ""
    lines = [
        f"checkpoint   {report.get('checkpoint', '?')} ({report.get('model', '?')}{epoch})",
        f"images       {report['n']:,} ({report.get('split_description', report.get('split', '?'))})"
        + (", flip TTA" if report.get("tta") else "")
        + (f", {report['tta_translate']} px translate TTA" if report.get("tta_translate") else ""),
        f"top-1        {pct(report['top1'])}",
        f"top-5        {pct(report['top5'])}",
    ]
    if report.get("coarse_top1") is not None:
        lines.append(f"superclass   {pct(report['coarse_top1'])}  (a prediction in the true superclass counts)")
    lines += [f"loss         {report['loss']:.4f}  (mean cross-entropy)",
              f"ECE          {report['ece']:.4f}  (expected calibration error, 15 bins)"]
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


def data_for_checkpoint(ckpt: dict, data=None, source: str = "checkpoint"):
    """``data`` loaded (a source for ``datasets.load_data``, or a ``CifarData`` as is); when ``None``,
    the source the run was trained on, from the checkpoint's config."""
    from .datasets import CifarData, load_data

    if isinstance(data, CifarData):
        return data
    if data is None:
        data = (ckpt.get("config") or {}).get("data")
        if not data:
            raise ValueError(f"{source} does not name its training data; pass --data")
    return load_data(data)
