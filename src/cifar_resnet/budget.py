"""A training-time budget: measure this machine, then fix a plan of epochs that fits.

``--budget 15m`` makes ``fit`` time its own training step at each image size the recipe trains at (on a
throwaway copy of the model and optimizer, the random generators restored afterwards) and one evaluation
pass (:func:`measure`), then fix the most epochs, up to the config's, whose predicted time fits in the
budget less a headroom (:func:`make_plan`), moving a full-size epoch to a lower size where that fills
more of it. The plan is stored in the config: a resumed run continues it without measuring, and two runs
with the same plan and seed are bit-identical. Under torchrun the ranks agree on the slowest figures.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .config import TrainConfig
from .console import format_duration, parse_duration
from .distributed import Dist, data_parallel
from .engine import EvalOptions, StepOptions, collect_logits, grad_scaler, resize_batch, train_step
from .loader import CifarLoader
from .optim import build_optimizer, build_scheduler
from .rng import get_rng_state, set_rng_state

__all__ = [
    "BudgetTooSmall",
    "Measurement",
    "Plan",
    "follow_plan",
    "format_duration",
    "make_plan",
    "measure",
    "parse_duration",
    "planned_config",
    "predict_seconds",
]


# the share of the budget left after measuring that the plan keeps spare (evidence: experiments/planner-zen4)
HEADROOM = 0.10
WARMUP_STEPS = 2  # untimed: the first steps allocate, pick kernels, fill caches
TIMED_STEPS = 5  # their mean is the step's time: an epoch's time is a sum, slow steps included
EVAL_BATCHES = 2  # timed evaluation batches (after one untimed)


class BudgetTooSmall(ValueError):
    """Even the recipe's minimum (one epoch) does not fit in the budget."""


@dataclass(frozen=True)
class Measurement:
    """What the planner measured: seconds per training step at each image size (``0``: full size), seconds
    of one plain evaluation pass over the evaluation images, and how long measuring took."""

    step_seconds: dict[int, float]
    eval_seconds: float
    seconds: float


@dataclass(frozen=True)
class Plan:
    """The plan a budget fixed: how many epochs, and the figures it was chosen from (stored in the run's
    config as a dict, ``Plan.from_dict`` reads it back)."""

    budget_s: float
    epochs: int
    max_epochs: int
    predicted_s: float
    step_seconds: dict[int, float]
    steps_per_epoch: int
    eval_seconds: float
    measure_seconds: float
    # the progressive-resizing phases the plan trains with (None: the config's own, as plans made before
    # the planner could move an epoch to a lower size)
    progressive: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_seconds"] = {str(k): v for k, v in self.step_seconds.items()}  # JSON keys are strings
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        try:
            return cls(**{**d, "step_seconds": {int(k): float(v) for k, v in d["step_seconds"].items()}})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"--plan: not a plan written by --budget ({e})") from None

    def line(self, full_size: int) -> str:
        sizes = ", ".join(
            f"{self.step_seconds[size]:.3g} s at {size or full_size} px"
            for size in sorted(self.step_seconds, key=_size_order)
        )
        capped = " (the recipe's maximum)" if self.epochs == self.max_epochs else ""
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        if self.progressive:
            counts = _size_counts(_sizes(self.epochs, self.progressive))
            epochs += " (" + ", ".join(f"{n} at {size or full_size} px" for size, n in counts.items()) + ")"
        return (
            f"plan for a {format_duration(self.budget_s)} budget: {epochs}{capped} of "
            f"{self.steps_per_epoch} steps; measured {sizes} a step, {self.eval_seconds:.3g} s an evaluation; "
            f"predicted {format_duration(self.predicted_s)} of training and evaluation after "
            f"{format_duration(self.measure_seconds)} measuring"
        )


def _size_order(size: int) -> int:
    return size or 10**6  # full size (0) last


def _with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    return dataclasses.replace(config, epochs=epochs, plan={})


def _sizes(epochs: int, progressive: str) -> list[int | None]:
    return TrainConfig(epochs=epochs, progressive=progressive).train_sizes


def _size_counts(sizes: list[int | None]) -> dict[int | None, int]:
    """Epochs per training size, smallest first (None, full size, last)."""
    counts: dict[int | None, int] = {}
    for size in sorted(sizes, key=lambda s: _size_order(s or 0)):
        counts[size] = counts.get(size, 0) + 1
    return counts


def _progressive_for(counts: dict[int | None, int]) -> str | None:
    """The ``progressive`` text that trains ``counts`` epochs at each size, or None if its fractions,
    rounded as ``TrainConfig.train_sizes`` rounds them, would not give those counts back."""
    epochs = sum(counts.values())
    text = ",".join(f"{size}:{n / epochs:.6g}" for size, n in counts.items() if size is not None and n)
    try:
        return text if _size_counts(_sizes(epochs, text)) == {k: v for k, v in counts.items() if v} else None
    except ValueError:
        return None


def _splits(config: TrainConfig, epochs: int) -> list[str]:
    """The ``progressive`` texts the plan may train ``epochs`` epochs with: the config's own first, then
    (with progressive resizing and at least two full-size epochs) its split with one full-size epoch
    trained at each lower size instead."""
    default = _size_counts(_with_epochs(config, epochs).train_sizes)
    out = [config.progressive]
    if default.get(None, 0) < 2:
        return out
    for size in (s for s in default if s is not None):
        moved = _progressive_for({**default, size: default[size] + 1, None: default[None] - 1})
        if moved is not None and moved not in out:
            out.append(moved)
    return out


def follow_plan(config: TrainConfig) -> TrainConfig:
    """``config`` with its plan's epochs and progressive-resizing phases (unchanged without a plan)."""
    if not config.plan:
        return config
    changes = {"epochs": config.plan["epochs"]}
    if config.plan.get("progressive") is not None:
        changes["progressive"] = config.plan["progressive"]
    return dataclasses.replace(config, **changes)


def _eval_passes(config: TrainConfig) -> int:
    """Forward passes of an evaluation with the config's test-time augmentation, per plain pass."""
    return (2 if config.tta else 1) * (3 if config.tta_translate else 1)


def predict_seconds(config: TrainConfig, epochs: int, steps_per_epoch: list[int] | int, m: Measurement) -> float:
    """Seconds ``epochs`` epochs of ``config`` take: each epoch's steps at its image size, the evaluation after
    each (plain before the last with ``--no-tta-every-epoch``, test-time-augmented otherwise)."""
    steps = [steps_per_epoch] * epochs if isinstance(steps_per_epoch, int) else steps_per_epoch
    train = sum(n * m.step_seconds[size or 0] for n, size in zip(steps, _with_epochs(config, epochs).train_sizes))
    full = m.eval_seconds * _eval_passes(config)
    evals = full * epochs if config.tta_every_epoch else m.eval_seconds * (epochs - 1) + full
    return train + evals


def make_plan(
    config: TrainConfig,
    budget_s: float,
    m: Measurement,
    steps_for: Callable[[TrainConfig], list[int]],
) -> Plan:
    """The plan that fills ``budget_s`` less the time spent measuring, less :data:`HEADROOM`, best: of
    every number of epochs up to ``config.epochs``, at the config's progressive-resizing split or with one
    full-size epoch moved to a lower size (:func:`_splits`), the one with the longest predicted time that
    fits (on a tie, the most epochs, then the recipe's own split). Without a moved epoch that is the most
    epochs that fit; a moved one is chosen only where it uses more of the budget. ``steps_for(config)``:
    the steps of each epoch of a config (``--drop-easy`` shortens the late ones). BudgetTooSmall when one
    epoch does not fit."""
    left = (budget_s - m.seconds) * (1 - HEADROOM)
    best = None
    for epochs in range(1, config.epochs + 1):
        for rank, progressive in enumerate(_splits(config, epochs)):
            candidate = dataclasses.replace(_with_epochs(config, epochs), progressive=progressive)
            predicted = predict_seconds(candidate, epochs, steps_for(candidate), m)
            key = (predicted, epochs, -rank)
            if predicted <= left and (best is None or key > best[0]):
                best = (key, progressive)
    full_steps = steps_for(_with_epochs(config, 1))[0]
    if best is None:
        one = predict_seconds(config, 1, [full_steps], m)
        raise BudgetTooSmall(
            f"--budget {format_duration(budget_s)}: one epoch of {full_steps} steps needs about "
            f"{format_duration(one)} on this machine ({m.step_seconds[max(m.step_seconds, key=_size_order)]:.2f} s "
            f"a step at the largest size) after {format_duration(m.seconds)} measuring; raise --budget, train on fewer "
            "images (--train-subset) or a smaller model, or turn the budget off (--budget none)"
        )
    (predicted, epochs, _), progressive = best
    return Plan(
        budget_s=budget_s,
        epochs=epochs,
        max_epochs=config.epochs,
        predicted_s=predicted,
        step_seconds=dict(m.step_seconds),
        steps_per_epoch=full_steps,
        eval_seconds=m.eval_seconds,
        measure_seconds=m.seconds,
        progressive=progressive if config.progressive else None,
    )


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
    for size in sorted({size or 0 for size in config.train_sizes}, key=_size_order):
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


def planned_config(config: TrainConfig, plan: Plan) -> TrainConfig:
    """``config`` with the plan recorded, and its epochs and progressive-resizing phases."""
    return follow_plan(dataclasses.replace(config, plan=plan.to_dict()))
