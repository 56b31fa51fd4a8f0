"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks",
section 3.3; popularised by fastai's ``lr_find``).

The learning rate grows exponentially over the steps of a sweep (:class:`RangeTest`) while each step's
loss is recorded; the test stops once the loss diverges. The suggested peak learning rate (``max_lr`` of
the one-cycle schedule) is a tenth of the rate at the minimum of the smoothed loss (:func:`smooth`). Each
step is :func:`cifar_resnet.engine.train_step`, the training step of ``fit`` (optimizer, weight decay,
clipping, label smoothing, autocast, one fp16 loss scaler for the whole test): there is no second
training loop. The model's weights (and BN statistics) and the optimizer are restored afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .console import progress_bar
from .data import CifarData, channel_stats
from .device import resolve_device
from .engine import StepOptions, grad_scaler, init_model, prepare_data, train_step, training_loader
from .memory import keep_freed_memory
from .models import model_kwargs_names
from .optim import build_optimizer

__all__ = ["LR_FIND_FIELDS", "LRFindResult", "RangeTest", "lr_find", "lr_find_config"]

# The TrainConfig fields that matter to the range test; the others schedule or evaluate a whole run.
LR_FIND_FIELDS = (
    "data",
    "val_split",
    "train_subset",
    "model",
    "model_kwargs",
    "whiten",
    "batch_size",
    "optimizer",
    "momentum",
    "muon_lr",
    "muon_momentum",
    "weight_decay",
    "grad_clip",
    "grad_clip_mode",
    "label_smoothing",
    "crop_pad",
    "flip",
    "cutout",
    "seed",
    "device",
    "precision",
    "channels_last",
)


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # centred running median of the losses (see the module docstring)
    suggestion: float  # suggested max_lr: min_loss_lr / 10
    min_loss_lr: float  # learning rate at the minimum of the smoothed loss
    steepest_lr: float  # learning rate where the smoothed loss falls fastest (per log lr)
    stopped: str  # why the sweep ended: "end_lr reached" or "diverged at lr ..."

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RangeTest:
    """A sweep: the learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps``
    steps. While sweeping, the loss is smoothed with an exponential moving average of factor ``beta``
    (bias-corrected, as in Adam), and the test stops early once that exceeds ``diverge`` times its minimum
    (or the loss is not finite): there is nothing to learn from a diverged network. That average lags by
    about ``1 / (1 - beta)`` steps, so the curve that is reported and used for the suggestion is a centred
    running median instead (:func:`smooth`)."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_steps: int = 200
    beta: float = 0.98
    diverge: float = 4.0

    def __post_init__(self) -> None:
        if not (0 < self.start_lr < self.end_lr):
            raise ValueError(f"need 0 < start_lr < end_lr, got {self.start_lr:g} and {self.end_lr:g}")
        if self.num_steps < 2:
            raise ValueError(f"the sweep needs at least 2 steps, got {self.num_steps}")
        if not 0 <= self.beta < 1:
            raise ValueError(f"smoothing beta must be in [0, 1), got {self.beta}")
        if self.diverge <= 1:
            raise ValueError(f"the divergence factor must be > 1, got {self.diverge}")

    def schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """The sweep's schedule on ``optimizer``, whose swept groups start at ``start_lr``. Muon's group
        (optimizer ``muon``) keeps its own step size: the sweep is of the other groups' ``--lr``."""
        ratio, last = self.end_lr / self.start_lr, self.num_steps - 1
        swept = [not group.get("muon", False) for group in optimizer.param_groups]
        for group, sweep in zip(optimizer.param_groups, swept):
            if sweep:
                group["lr"] = self.start_lr
            group.pop("initial_lr", None)

        def factor(i: int) -> float:
            # lr of step i: start * ratio ** (i / last), exponential from start_lr to end_lr exactly
            return ratio ** (min(i, last) / last)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor if s else (lambda i: 1.0) for s in swept])


def _forever(batches: Iterable, set_epoch) -> Iterator:
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the training loader yielded no batch")
        epoch += 1


def lr_find(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    sweep: RangeTest = RangeTest(),
    *,
    options: StepOptions = StepOptions(),
    progress: bool | None = None,
) -> LRFindResult:
    """Run the range test ``sweep`` on ``model`` with ``optimizer`` over ``batches`` (re-iterated as needed;
    a :class:`~cifar_resnet.loader.CifarLoader` gets a new epoch each pass). The model's state and the
    optimizer's are restored afterwards, so the model can be trained from where it was. ``options``: the
    training step's loss, clipping and precision, as ``fit`` would run it."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    scheduler = sweep.schedule(optimizer)
    scaler = grad_scaler(options, next(model.parameters()).device)  # one loss scale, carried step to step
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    stopped = "end_lr reached"
    stream = _forever(batches, getattr(batches, "set_epoch", None))
    try:
        model.train()
        with progress_bar(sweep.num_steps, "lr-find", progress, unit="step") as bar:
            for step in range(sweep.num_steps):
                x, y = next(stream)
                loss, _, lr = train_step(model, x, y, optimizer, scheduler, options, scaler)
                loss = loss.item()
                bar.update(1)
                lrs.append(lr)
                losses.append(loss)
                if not math.isfinite(loss):
                    stopped = f"diverged at lr {lr:.3g} (loss not finite)"
                    break
                avg = sweep.beta * avg + (1 - sweep.beta) * loss
                s = avg / (1 - sweep.beta ** (step + 1))
                best = min(best, s)
                if step > 0 and s > sweep.diverge * best:
                    stopped = (
                        f"diverged at lr {lr:.3g} (smoothed loss {s:.3g} > {sweep.diverge:g} x minimum {best:.3g})"
                    )
                    break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        model.train(was_training)
    return _summarise(lrs, losses, stopped)


def smooth(values, window: int) -> np.ndarray:
    """Centred running median over ``window`` points (odd), the window shrinking symmetrically at the ends
    so that it stays centred: no lag anywhere, robust to spikes."""
    x = np.asarray(values, dtype=np.float64)
    n, half = len(x), max(window, 1) // 2
    return np.array([np.median(x[i - h : i + h + 1]) for i in range(n) for h in (min(half, i, n - 1 - i),)])


def _summarise(lrs: list[float], losses: list[float], stopped: str) -> LRFindResult:
    """The result of a sweep. The curve is a centred running median over about 5% of the sweep; the
    suggestion is a tenth of the rate at its minimum (there the loss is about to blow up; an order of
    magnitude below it still falls steadily: the rule of thumb of Smith's and fastai's ``lr_min``), and
    only a lower bound when the loss never turned up. The steepest descent point is reported as well."""
    # the sweep stops at the first loss that is not finite, so only the last one can be
    n = len(losses) if losses and math.isfinite(losses[-1]) else len(losses) - 1
    if n < 1:
        raise ValueError("the loss was not finite from the first step; lower --start-lr")
    lrs, losses = lrs[:n], losses[:n]
    s = smooth(losses, 2 * max(2, len(losses) // 40) + 1)
    i_min = int(np.argmin(s))
    if stopped == "end_lr reached" and i_min >= len(s) - max(2, len(s) // 20):
        stopped = (
            "end_lr reached and the loss was still falling: the suggestion is a lower bound; "
            "sweep further with a larger --end-lr"
        )
    log_lr = np.log10(np.asarray(lrs))
    if i_min >= 2:
        grad = np.gradient(s[: i_min + 1], log_lr[: i_min + 1])
        i_steep = int(np.argmin(grad))
    else:
        i_steep = i_min
    return LRFindResult(
        lrs=list(lrs),
        losses=list(losses),
        smoothed=s.tolist(),
        suggestion=lrs[i_min] / 10,
        min_loss_lr=lrs[i_min],
        steepest_lr=lrs[i_steep],
        stopped=stopped,
    )


def lr_find_config(
    config: TrainConfig,
    data: CifarData | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 200,
    beta: float = 0.98,
    diverge: float = 4.0,
    progress: bool | None = None,
    log=print,
) -> LRFindResult:
    """The range test for a training configuration (any model, preset and optimizer): builds the model
    and the training loader exactly as ``fit(config, data)`` would (same data set-up, normalisation,
    augmentation, initialisation, optimizer) and sweeps the learning rate (:class:`RangeTest`: the other
    arguments) instead of training."""
    sweep = RangeTest(start_lr, end_lr, num_steps, beta, diverge)
    model_kwargs_names(config.model)  # an unknown model name fails now, not after loading the data
    device = resolve_device(config.device)
    keep_freed_memory()  # as fit does: the steps reuse their memory
    if data is None:
        data = prepare_data(config)
    stats = channel_stats(data.train.images)
    loader = training_loader(config, data.train, stats, device)
    model = init_model(config, data, stats, device)  # the initialisation fit would start from
    optimizer = build_optimizer(dataclasses.replace(config, lr=start_lr), model, device)
    if log:
        log(
            f"lr-find: {config.model} on {len(data.train):,} {data.name} training images, {config.optimizer}, "
            f"batch {config.batch_size}, lr {start_lr:g} -> {end_lr:g} over up to {num_steps} steps"
        )
    options = StepOptions.from_config(config, device)
    return lr_find(model, loader, optimizer, sweep, options=options, progress=progress)
