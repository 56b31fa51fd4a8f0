"""What training and inference share: the data and model a run starts from, the training step, an epoch's
running statistics, and the pass of a model over a loader, each with its options as one small frozen object.

:func:`prepare_data`, :func:`init_model` and :func:`training_loader` set a run up from its config
(``fit`` and ``lr-find`` start from the same model and batches); :func:`train_step` is the package's one training step
(:class:`StepOptions`), which ``fit`` and ``lr-find`` call step by step and :func:`train_one_epoch` loops
for the notebook's ``fit``; :class:`EpochStats` sums an epoch's loss and accuracy on the device;
:func:`collect_logits` runs a model over a loader (:class:`EvalOptions`) for every reported number;
:func:`measure` times this machine's training step and evaluation, which a ``--budget`` run plans from.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIP_MODES, TrainConfig
from .data import CifarData, Split, load_data, split_validation, subsample
from .device import autocast_for, resolve_precision
from .distributed import Dist, data_parallel
from .loader import CifarLoader
from .models import create_model
from .optim import build_optimizer, build_scheduler
from .rng import get_rng_state, set_rng_state

__all__ = [
    "EpochStats",
    "EvalOptions",
    "Measurement",
    "StepOptions",
    "collect_logits",
    "epoch_line",
    "grad_scaler",
    "init_model",
    "measure",
    "prepare_data",
    "resize_batch",
    "train_one_epoch",
    "train_step",
    "training_loader",
    "tta_logits",
]


@dataclass(frozen=True)
class StepOptions:
    """How a training step computes: the loss (label smoothing), gradient clipping and the precision it
    autocasts to (resolved for the device: ``fp32``, ``bf16`` or ``fp16``)."""

    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    grad_clip_mode: str = "value"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.grad_clip_mode not in CLIP_MODES:
            raise ValueError(f"unknown clip mode {self.grad_clip_mode!r}; use value or norm")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"a step runs in fp32, bf16 or fp16, not {self.precision!r} (resolve it first)")

    @classmethod
    def from_config(cls, config: TrainConfig, device: torch.device) -> StepOptions:
        return cls(
            label_smoothing=config.label_smoothing,
            grad_clip=config.grad_clip,
            grad_clip_mode=config.grad_clip_mode,
            precision=resolve_precision(config.precision, device),
        )


@dataclass(frozen=True)
class EvalOptions:
    """How a model is evaluated: flip and translate test-time augmentation (:func:`tta_logits`), the
    batch size and the precision (resolved for the device)."""

    tta: bool = False
    tta_translate: int = 0
    batch_size: int = 500
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.tta_translate < 0:
            raise ValueError(f"tta translate must be >= 0, got {self.tta_translate}")
        if self.batch_size < 1:
            raise ValueError(f"eval batch size must be >= 1, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"evaluation runs in fp32, bf16 or fp16, not {self.precision!r} (resolve it first)")

    @classmethod
    def from_config(cls, config: TrainConfig, device: torch.device) -> EvalOptions:
        return cls(
            tta=config.tta,
            tta_translate=config.tta_translate,
            batch_size=config.eval_batch_size,
            precision=resolve_precision(config.precision, device),
        )

    def plain(self) -> EvalOptions:
        """The same without test-time augmentation (one pass per image)."""
        return dataclasses.replace(self, tta=False, tta_translate=0)

    def calibration(self, split: str, n: int) -> dict:
        """What a checkpoint records of a temperature fitted with these options on ``n`` images of ``split``."""
        return {
            "split": split,
            "n": n,
            "tta": self.tta,
            "tta_translate": self.tta_translate,
            "precision": self.precision,
        }

    @property
    def tta_name(self) -> str:
        """How it evaluates, for records: none, flip, translate1, flip+translate1, ..."""
        parts = (["flip"] if self.tta else []) + ([f"translate{self.tta_translate}"] if self.tta_translate else [])
        return "+".join(parts) or "none"


def grad_scaler(options: StepOptions, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler an fp16 run needs (fp16 gradients underflow without it); None otherwise."""
    return torch.amp.GradScaler(device.type) if options.precision == "fp16" else None


def init_model(
    config: TrainConfig,
    data: CifarData,
    stats: tuple,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    data_init: bool = True,
) -> nn.Module:
    """The model a run starts from: seeded initialisation of ``config.model`` (or ``model`` as given),
    the optional patch-whitening of its stem from the training images (``stats``: their ``(mean, std)``),
    moved to ``device``."""
    torch.manual_seed(config.seed)  # the model's initialisation
    if model is None:
        model = create_model(config.model, num_classes=data.num_classes, **config.model_kwargs)
    if config.whiten and data_init:
        if not hasattr(model, "init_whiten"):
            raise ValueError(f"--whiten: model {config.model} has no patch-whitening stem (use fast or fast_small)")
        mean, std = stats
        model.init_whiten(data.train.images[:5000], mean=mean, std=std)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def training_loader(
    config: TrainConfig, split: Split, stats: tuple, device: torch.device, dist: Dist | None = None
) -> CifarLoader:
    """The shuffled, augmented batches of a run, normalised with ``stats`` (``(mean, std)``); under torchrun
    (``dist``) this rank's slice of each global batch. ValueError when there is not one whole batch."""
    dist = dist or Dist()
    mean, std = stats
    loader = CifarLoader(
        split,
        config.batch_size,
        mean=mean,
        std=std,
        device=device,
        train=True,
        aug=config.augment,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(split)} training images is fewer than one batch of {config.batch_size}")
    return loader


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer,
    scheduler,
    options: StepOptions,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimisation step on a batch; returns the loss and the logits (detached, on the device, no
    host synchronisation) and the learning rate the step used. The scheduler steps after it. ``scaler``:
    the fp16 loss scaler (:func:`grad_scaler`)."""
    with autocast_for(x.device, options.precision):
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=options.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if options.grad_clip:
        if options.grad_clip_mode == "value":
            nn.utils.clip_grad_value_(model.parameters(), options.grad_clip)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip, foreach=True)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when a gradient is not finite; the scale then shrinks
        scaler.update()
    else:
        optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return loss.detach(), out.detach(), lr


class EpochStats:
    """An epoch's running training statistics, summed on the device (no host synchronisation per step):
    the loss, the correct predictions, the images seen (``world_size`` processes' batches: the global
    count) and the learning rate of each step."""

    def __init__(self, device: torch.device, world_size: int = 1):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen, self.lrs, self.world_size = 0, [], world_size

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        self.lrs.append(lr)
        self.loss_sum += loss * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y) * self.world_size

    def means(self) -> tuple[float, float]:
        """The mean loss and top-1 over the images seen (a host synchronisation)."""
        return self.loss_sum.item() / self.seen, self.correct.item() / self.seen


def train_one_epoch(model: nn.Module, batches, optimizer, scheduler, options: StepOptions) -> dict:
    """:func:`train_step` over every batch of ``batches`` (``(images, labels)`` on the model's device);
    returns the mean training loss and accuracy and the learning rate each step used (the notebook's
    ``fit``; ``fit`` and ``lr-find`` loop over :func:`train_step` themselves)."""
    model.train()
    device = next(model.parameters()).device
    scaler = grad_scaler(options, device)
    stats = EpochStats(device)
    for x, y in batches:
        loss, out, lr = train_step(model, x, y, optimizer, scheduler, options, scaler)
        stats.add(loss, out, y, lr)
    if stats.seen == 0:
        raise ValueError("the training loader yielded no batch")
    train_loss, train_top1 = stats.means()
    return {"train_loss": train_loss, "train_top1": train_top1, "lrs": stats.lrs, "images": stats.seen}


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The batch downscaled to ``size`` x ``size`` (bilinear, antialiased: the whole image at a lower
    resolution, not a crop), for progressive resizing; ``x`` itself when ``size`` is None or its size."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (
        out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(memory_format=torch.channels_last) else out
    )


def epoch_line(epoch: int, lr: float, train_loss: float, val_loss: float, val_acc: float) -> str:
    """The notebook's per-epoch line (printed by ``fit`` and by the notebook's ``BaseModel.epoch_end``)."""
    return (
        f"Epoch {epoch}, last_lr: {lr:.5f}, train_loss: {train_loss:.4f}, val_loss: {val_loss:.4f}, "
        f"val_acc: {val_acc:.4f}"
    )


def tta_logits(model: nn.Module, x: torch.Tensor, *, tta: bool = False, tta_translate: int = 0) -> torch.Tensor:
    """The model's logits for a batch, with test-time augmentation.

    ``tta``: the mean of the image's and its mirror image's logits (flip TTA). ``tta_translate`` (pixels,
    > 0): airbench's TTA level 2, half the weight on the image itself and a quarter each on the image
    shifted ``tta_translate`` pixels up-left and down-right (reflect-padded), each view flip-averaged when
    ``tta``.
    """

    def view(v: torch.Tensor) -> torch.Tensor:
        out = model(v)
        return 0.5 * (out + model(v.flip(-1))) if tta else out

    logits = view(x)
    if tta_translate > 0:
        t, (h, w) = tta_translate, x.shape[-2:]
        if not t < min(h, w):
            raise ValueError(f"tta translate must be smaller than the image, got {t} for {h}x{w}")
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        shifts = [padded[..., :h, :w], padded[..., 2 * t :, 2 * t :]]
        shifted = sum(view(s.contiguous(memory_format=torch.channels_last)) for s in shifts)
        logits = 0.5 * logits + 0.25 * shifted
    return logits


@torch.no_grad()
def collect_logits(
    model: nn.Module, loader, options: EvalOptions = EvalOptions(), progress=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (N, C) and int64 labels (N,) on the CPU, in loader order.

    ``options``: test-time augmentation (see :func:`tta_logits`: flip TTA as in airbench and the CIFAR
    speedruns; translate as airbench's level 2) and the precision of the forward passes (the loader's
    batch size is the loader's). ``progress``: a bar updated per image.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs, labels = [], []
    try:
        for x, y in loader:
            with autocast_for(device, options.precision):
                logits = tta_logits(model, x, tta=options.tta, tta_translate=options.tta_translate)
            outs.append(logits.float())
            labels.append(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    # one device->host transfer at the end, not one per batch
    return torch.cat(outs).cpu(), torch.cat(labels).cpu()


def prepare_data(config: TrainConfig, data: CifarData | None = None, *, download: bool = True) -> CifarData:
    """The run's data: ``config.data`` loaded (or ``data`` as given), with the validation split held out
    (unless the source brings one) and the training subset taken, both seeded by ``config.seed``.

    A dataset named by ``cifar100``/``cifar10`` that is not in the download cache yet is downloaded
    (progress bar, md5 check) when ``download`` is true.
    """
    if data is None:
        data = load_data(config.data, download_missing=download, image_size=config.image_size, strict=config.strict)
    if config.val_split and data.val is None:
        data = split_validation(data, config.val_split, seed=config.seed)
    if config.train_subset:
        data = subsample(data, config.train_subset, seed=config.seed)
    return data


# ------------------------------------------------------------------------------------------------
# timing this machine (a --budget run plans from these figures)
# ------------------------------------------------------------------------------------------------

WARMUP_STEPS = 2  # untimed: the first steps allocate, pick kernels, fill caches
TIMED_STEPS = 5  # their mean is the step's time: an epoch's time is a sum, slow steps included
EVAL_BATCHES = 2  # timed evaluation batches (after one untimed)


@dataclass(frozen=True)
class Measurement:
    """What the planner measured: seconds per training step at each image size (``0``: full size), seconds
    of one plain evaluation pass over the evaluation images, and how long measuring took."""

    step_seconds: dict[int, float]
    eval_seconds: float
    seconds: float


def measure(
    config: TrainConfig,
    model: nn.Module,
    loader: CifarLoader,
    eval_loader: CifarLoader,
    dist: Dist,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Time this machine's training step at each image size of ``config`` and one plain evaluation pass
    over ``eval_loader`` (a few batches, scaled to the whole pass), on ``loader``'s device; on a copy of
    ``model``, its own optimizer and a fork of ``loader`` (:meth:`~cifar_resnet.loader.CifarLoader.fork`),
    so the run itself is untouched (the global random generators are restored). Under torchrun the ranks
    step together (DDP) and agree on the slowest figures."""
    t0 = clock()
    rng = get_rng_state()
    try:
        probe = copy.deepcopy(model)
        step_seconds = _step_seconds(config, probe, loader, dist, clock)
        eval_seconds = _eval_seconds(probe, eval_loader, EvalOptions.from_config(config, loader.device).plain(), clock)
    finally:
        set_rng_state(rng)
    figures = torch.tensor([*step_seconds.values(), eval_seconds], dtype=torch.float64)
    figures = dist.max(figures)  # every rank plans from the same, slowest, figures
    return Measurement(
        step_seconds=dict(zip(step_seconds, (float(v) for v in figures[:-1]))),
        eval_seconds=float(figures[-1]),
        seconds=float(dist.max(torch.tensor([clock() - t0], dtype=torch.float64))[0]),
    )


def _step_seconds(config: TrainConfig, probe: nn.Module, loader: CifarLoader, dist: Dist, clock) -> dict[int, float]:
    """Seconds of a training step of ``probe`` at each image size of ``config`` (``0``: full size): the mean
    of :data:`TIMED_STEPS` after :data:`WARMUP_STEPS` untimed, on real, augmented batches, in the
    precision that will run, the loader's work included."""
    dev = loader.device
    optimizer = build_optimizer(config, probe, dev)
    scheduler = build_scheduler(config, optimizer, len(loader))
    step_model = data_parallel(probe, dist, dev)
    options = StepOptions.from_config(config, dev)
    scaler = grad_scaler(options, dev)
    batches = loader.fork()
    batches.set_epoch(0)
    stream = iter(batches)
    step_model.train()
    step_seconds = {}
    for size in sorted({size or 0 for size in config.train_sizes}, key=lambda s: s or 10**6):  # full size last
        times = []
        for i in range(WARMUP_STEPS + TIMED_STEPS):
            _sync(dev)
            start = clock()  # the loader's work (augmentation) is part of a step's time
            try:
                x, y = next(stream)
            except StopIteration:
                stream = iter(batches)
                x, y = next(stream)
            x = resize_batch(x, size or None)
            loss, _, _ = train_step(step_model, x, y, optimizer, scheduler, options, scaler)
            loss.item()  # wait for the step
            _sync(dev)
            if i >= WARMUP_STEPS:
                times.append(clock() - start)
        step_seconds[size] = sum(times) / len(times)
    return step_seconds


def _eval_seconds(model: nn.Module, loader: CifarLoader, options: EvalOptions, clock) -> float:
    """One plain pass over ``loader``, from the time of a few of its batches."""
    batches = []
    for i, batch in enumerate(loader):
        if i > EVAL_BATCHES:
            break
        batches.append(batch)
    collect_logits(model, batches[:1], options)  # untimed warm-up
    timed = batches[1:] or batches
    _sync(loader.device)
    start = clock()
    collect_logits(model, timed, options)
    _sync(loader.device)
    per_image = (clock() - start) / sum(len(y) for _, y in timed)
    return per_image * loader.num_images


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
