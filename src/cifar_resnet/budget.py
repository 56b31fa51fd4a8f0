"""A training-time budget the run fills: measured first, re-planned at every epoch boundary, traced.

``--budget 15m`` makes ``fit`` time its own training step at each image size and one evaluation pass
(:func:`measure`) and choose a first plan (:func:`decide`); after every epoch the :class:`Planner` compares
the epoch's wall time with what the start-up figures predicted and chooses again the epochs that remain,
their sizes and the length of the last one, so that training and evaluation end at the budget. Every
decision goes into a :class:`Trace` (config.json and the checkpoints): given the trace, a run makes the
same decisions without timing anything, and is bit-identical.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .config import TrainConfig
from .console import format_duration, parse_duration
from .distributed import Dist
from .engine import Measurement, measure

__all__ = [
    "LAST_EPOCH_REFITS",
    "BudgetTooSmall",
    "Decision",
    "Measurement",
    "Planner",
    "Trace",
    "decide",
    "follow_plan",
    "format_duration",
    "measure",
    "parse_duration",
    "predict_seconds",
    "replay_config",
]


# the spare kept for the last epoch, as a share of its predicted time: how far one epoch's speed has strayed
# from the one before in this run (the mean of the last three), within these bounds, or the default before
# two epochs have been timed
VARIATION_DEFAULT, VARIATION_MIN, VARIATION_MAX = 0.05, 0.01, 0.15
MIN_LAST_SHARE = 0.1  # the shortest last epoch a plan makes, as a share of a whole one
LAST_EPOCH_REFITS = 10  # times the last epoch fits its length to the clock again as it runs


class BudgetTooSmall(ValueError):
    """Even the recipe's minimum (one epoch) does not fit in the budget."""


@dataclass(frozen=True)
class Decision:
    """One plan, made when ``epoch`` epochs were done: what the clock said and what it chose.

    ``elapsed_s``: budget seconds used by then (measuring included); ``ratio``: the wall time of the epoch
    before over what the start-up figures predicted for it (1 for the first plan, which has none), by
    which every predicted figure is scaled; ``variation``: the spread of those ratios this run, from which
    ``spare_s`` is kept; ``epochs``: the run's epochs; ``sizes``: the image side of each epoch from now on
    (0: full size), the recipe's resizing phases laid over the run's new length, never below the size of
    the epoch before;
    ``last_steps``: the steps of the last epoch (a last epoch may be shorter than the others, so that the
    run ends at its budget); ``steps_left``: the steps the schedule is spread over from now on;
    ``predicted_s``: when the run will end, in budget seconds."""

    epoch: int
    elapsed_s: float
    ratio: float
    variation: float
    spare_s: float
    epochs: int
    sizes: list[int]
    last_steps: int
    steps_left: int
    predicted_s: float
    step: int = 0  # steps into epoch ``epoch`` (0: at its start; later: the last epoch re-fitting its length)
    progress: float = 0.0  # the schedule's progress when it was made, over which ``sizes`` lie


@dataclass(frozen=True)
class Trace:
    """A budget run's plans: what was measured before training and every :class:`Decision` since.
    ``max_epochs``, ``progressive``: the recipe's (the most epochs a plan may choose, the phases it
    starts from); ``replay``: the run follows the trace only and times nothing (``--replay``)."""

    budget_s: float
    max_epochs: int
    progressive: str
    steps_per_epoch: int
    step_seconds: dict[int, float]
    eval_seconds: float
    measure_seconds: float
    decisions: tuple[Decision, ...] = ()
    replay: bool = False

    @property
    def last(self) -> Decision:
        return self.decisions[-1]

    def at(self, epoch: int, step: int = 0) -> Decision | None:
        """The decision made when ``epoch`` epochs (and ``step`` steps of the next) were done, if any."""
        return next((d for d in self.decisions if (d.epoch, d.step) == (epoch, step)), None)

    def with_decision(self, d: Decision) -> Trace:
        kept = (x for x in self.decisions if (x.epoch, x.step) < (d.epoch, d.step))
        return dataclasses.replace(self, decisions=(*kept, d))

    def measurement(self) -> Measurement:
        return Measurement(dict(self.step_seconds), self.eval_seconds, self.measure_seconds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_seconds"] = {str(k): v for k, v in self.step_seconds.items()}  # JSON keys are strings
        d["decisions"] = [asdict(x) for x in self.decisions]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        try:
            return cls(
                **{
                    **d,
                    "step_seconds": {int(k): float(v) for k, v in d["step_seconds"].items()},
                    "decisions": tuple(Decision(**x) for x in d["decisions"]),
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"--plan: not a trace written by --budget ({e})") from None

    def first_line(self, full_size: int) -> str:
        sizes = ", ".join(
            f"{self.step_seconds[size]:.3g} s at {size or full_size} px"
            for size in sorted(self.step_seconds, key=_size_order)
        )
        if self.replay:
            return (
                f"replaying the {len(self.decisions)} plans of a {format_duration(self.budget_s)} budget run, "
                f"timing nothing: {self.describe(self.decisions[0], full_size)}"
            )
        return (
            f"plan for a {format_duration(self.budget_s)} budget: {self.describe(self.decisions[0], full_size)}; "
            f"measured {sizes} a step, {self.eval_seconds:.3g} s an evaluation in "
            f"{format_duration(self.measure_seconds)}; re-planned after each epoch from its own time"
        )

    def describe(self, d: Decision, full_size: int) -> str:
        """``9 epochs, 5 more (2 at 24 px, 3 at 32 px, the last 61 of 97 steps), ending at 14m 57s (100%)``:
        the epochs, those still to train at each size, the last one's length and the predicted end."""
        counts = _size_counts([s or None for s in d.sizes])
        parts = [f"{n} at {size or full_size} px" for size, n in counts.items()]
        if d.last_steps < self.steps_per_epoch:
            parts.append(f"the last {d.last_steps} of {self.steps_per_epoch} steps")
        capped = " (the recipe's maximum)" if d.epochs == self.max_epochs else ""
        epochs = f"{d.epochs} epoch{'s' if d.epochs != 1 else ''}{capped}"
        if d.epoch:
            epochs += f", {d.epochs - d.epoch} more"
        share = 100 * d.predicted_s / self.budget_s
        return f"{epochs} ({', '.join(parts)}), ending at {format_duration(d.predicted_s)} ({share:.0f}%)"

    @staticmethod
    def changed(before: Decision, d: Decision) -> bool:
        """Whether ``d`` trains otherwise than ``before``: other epochs, phases or last epoch."""
        return (before.epochs, before.last_steps) != (d.epochs, d.last_steps) or (
            before.sizes[d.epoch - before.epoch :] != d.sizes
        )

    def refit_line(self, before: Decision, d: Decision, whole: int, full_size: int) -> str:
        """What a re-fit of the last epoch, or a late epoch made the last, changed and why, in one line."""
        what = "last epoch re-fitted" if d.epoch == before.epochs - 1 else f"epoch {d.epoch + 1} made the last"
        head = (
            f"{what} after step {d.step}, {format_duration(d.elapsed_s)} of "
            f"{format_duration(self.budget_s)} used: a step took {d.ratio:.2f}x the start-up figure in it -> "
        )
        if d.epochs > before.epochs:
            return head + f"it trains whole, then more: {self.describe(d, full_size)}"
        if d.epochs < before.epochs:
            return head + (
                f"too late for another epoch: {d.last_steps} of {whole} steps, ending at "
                f"{format_duration(d.predicted_s)} ({100 * d.predicted_s / self.budget_s:.0f}%)"
            )
        return head + (
            f"{d.last_steps} of {whole} steps (was {before.last_steps}), ending at {format_duration(d.predicted_s)} "
            f"({100 * d.predicted_s / self.budget_s:.0f}%)"
        )

    def replan_line(self, before: Decision, d: Decision, full_size: int) -> str:
        """What a re-plan changed and why, in one line."""
        speed = f"epoch {d.epoch} ran at {d.ratio:.2f}x the start-up figures"
        if before.ratio != 1.0 or before.epoch > 0:
            speed += f" ({before.ratio:.2f}x before)"
        return (
            f"re-plan after epoch {d.epoch}, {format_duration(d.elapsed_s)} of {format_duration(self.budget_s)} "
            f"used: {speed}, {100 * d.variation:.0f}% variation, {format_duration(d.spare_s)} spare -> "
            f"{self.describe(d, full_size)}"
        )


def _size_order(size: int) -> int:
    return size or 10**6  # full size (0) last


def _with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    return dataclasses.replace(config, epochs=epochs, plan={})


def _size_counts(sizes: list[int | None]) -> dict[int | None, int]:
    """Epochs per training size, smallest first (None, full size, last)."""
    counts: dict[int | None, int] = {}
    for size in sorted(sizes, key=lambda s: _size_order(s or 0)):
        counts[size] = counts.get(size, 0) + 1
    return counts


def _phase_at(phases: list[tuple[int, float]], progress: float) -> int:
    """The image side of the recipe's resizing phase at ``progress`` of the run (0: full size)."""
    edge = 0.0
    for size, fraction in phases:
        edge += fraction
        if progress < edge:
            return size
    return 0


def _progress_sizes(phases: list[tuple[int, float]], steps: list[int], start: float, pending: int) -> list[int]:
    """The image side of epochs of ``steps`` steps each (0: full size), the recipe's resizing phases laid
    over the progress that remains: the schedule spreads progress ``start`` to 1 evenly over ``pending``
    steps already planned and then these epochs, and each epoch trains at the phase of its middle. So a
    re-plan that shortens or stretches the run shortens or stretches its phases with its learning rate
    (a short last epoch takes its share of the full-size phase, not all of it)."""
    total = pending + sum(steps)
    out, before = [], pending
    for n in steps:
        out.append(_phase_at(phases, start + (1.0 - start) * (before + n / 2) / total))
        before += n
    return out


def follow_plan(config: TrainConfig) -> TrainConfig:
    """``config`` with the epochs of its plan (its trace's last decision, whose sizes the run takes from the
    trace), or the epochs and phases of an older release's fixed plan; unchanged without one."""
    plan = config.plan
    if not plan:
        return config
    if "decisions" in plan:
        return dataclasses.replace(config, epochs=plan["decisions"][-1]["epochs"])
    changes = {"epochs": plan["epochs"]}
    if plan.get("progressive") is not None:
        changes["progressive"] = plan["progressive"]
    return dataclasses.replace(config, **changes)


def replay_config(config: TrainConfig, source: str) -> TrainConfig:
    """The config of a budget run (``config.json``) made to replay its trace: its recipe's epochs and
    phases, the trace marked as a replay, which times nothing."""
    if not is_trace(config.plan):
        raise ValueError(f"--replay: {source} has no trace of a budget run (a run trained with --budget has one)")
    trace = Trace.from_dict(config.plan)
    plan = dataclasses.replace(trace, replay=True).to_dict()
    return dataclasses.replace(config, plan=plan, epochs=trace.max_epochs)


def is_trace(plan: dict) -> bool:
    """Whether a config's ``plan`` is a trace (re-planned as it ran) rather than an older fixed plan."""
    return bool(plan) and "decisions" in plan


def _eval_passes(config: TrainConfig) -> int:
    """Forward passes of an evaluation with the config's test-time augmentation, per plain pass."""
    return (2 if config.tta else 1) * (3 if config.tta_translate else 1)


def _epoch_seconds(config: TrainConfig, m: Measurement, steps: int, size: int | None, last: bool) -> float:
    """Predicted seconds of one epoch of ``steps`` steps at ``size``, its evaluation included (plain before
    the last with ``--no-tta-every-epoch``, test-time-augmented otherwise)."""
    full = config.tta_every_epoch or last
    return steps * m.step_seconds[size or 0] + m.eval_seconds * (_eval_passes(config) if full else 1)


def predict_seconds(config: TrainConfig, epochs: int, steps_per_epoch: list[int] | int, m: Measurement) -> float:
    """Seconds ``epochs`` epochs of ``config`` take: each epoch's steps at its image size and its evaluation."""
    steps = [steps_per_epoch] * epochs if isinstance(steps_per_epoch, int) else steps_per_epoch
    sizes = _with_epochs(config, epochs).train_sizes
    return sum(_epoch_seconds(config, m, n, size, i == epochs - 1) for i, (n, size) in enumerate(zip(steps, sizes)))


@dataclass(frozen=True)
class _Clock:
    """What a decision is made from: budget seconds used, the speed ratio, the variation; the schedule's
    progress by then, and the steps already planned before the epochs the decision lays out (the rest of
    an epoch that trains whole before them)."""

    elapsed_s: float
    ratio: float
    variation: float
    progress: float = 0.0
    pending: int = 0


def decide(
    recipe: TrainConfig,
    trace: Trace,
    done: int,
    clock: _Clock,
    steps_for: Callable[[TrainConfig], list[int]],
    trained_size: int | None = None,
) -> Decision:
    """The plan from ``done`` epochs on: of every total of epochs up to the recipe's, with the last epoch cut
    to what fits (but not below :data:`MIN_LAST_SHARE` of an epoch) and the recipe's resizing phases laid
    over the progress that remains (:func:`_progress_sizes`, never below ``trained_size``, the size of the
    epoch before; None: full size), the one predicted to end latest within the budget less the spare; on a tie (within
    half a percent of the budget), the one with the most steps (more epochs: more re-plans), then the
    longest last epoch. Every
    predicted figure is the start-up one times ``clock.ratio``. None fits: at the start,
    :class:`BudgetTooSmall`; later (the run is late), the shortest end: one more epoch, of the shortest
    length."""
    m = trace.measurement()
    trained = (trained_size or 0) if done else None
    best, shortest = None, None
    for epochs in range(done + 1, trace.max_epochs + 1):
        candidate = _with_epochs(recipe, epochs)
        option = _fit_last(candidate, trace, done, clock, steps_for(candidate), trained)
        if shortest is None:
            shortest = option
        if option.fits:
            key = (round(option.end / (0.005 * trace.budget_s)), option.steps_left, option.last_share)
            if best is None or key > best[0]:
                best = (key, option)
    if best is None and done == 0:
        raise _too_small(recipe, trace, m, steps_for)
    chosen = best[1] if best is not None else shortest
    return Decision(
        epoch=done,
        elapsed_s=clock.elapsed_s,
        ratio=clock.ratio,
        variation=clock.variation,
        spare_s=chosen.spare,
        epochs=chosen.epochs,
        sizes=chosen.sizes,
        last_steps=chosen.last_steps,
        steps_left=chosen.steps_left,
        predicted_s=chosen.end,
        progress=clock.progress,
    )


@dataclass(frozen=True)
class _Option:
    epochs: int
    sizes: list[int]
    last_steps: int
    last_share: float
    steps_left: int
    end: float
    spare: float
    fits: bool


def _fit_last(candidate: TrainConfig, trace: Trace, done: int, clock: _Clock, steps: list[int], trained):
    """``candidate`` from epoch ``done`` on, its last epoch as long as fits in the budget (at least
    :data:`MIN_LAST_SHARE` of it, all of it in a run of one epoch; ``fits`` says whether that fits), its
    sizes the recipe's phases over that length, none below ``trained`` (0: full size; None: no floor)."""
    epochs, whole, phases = candidate.epochs, steps[-1], candidate.phases
    m, budget = trace.measurement(), trace.budget_s
    # a run of one epoch trains it whole: a part of one is no run
    shortest = whole if epochs == 1 else max(1, math.ceil(MIN_LAST_SHARE * whole))

    def option(last: int) -> _Option:
        laid = _progress_sizes(phases, [*steps[done : epochs - 1], last], clock.progress, clock.pending)
        if trained is not None:  # never below the size of the epoch before
            laid = [max(s, trained, key=_size_order) for s in laid]
        sizes = [0] * done + laid
        before = sum(_epoch_seconds(candidate, m, steps[i], sizes[i], False) for i in range(done, epochs - 1))
        step = m.step_seconds[sizes[-1]]
        eval_last = _epoch_seconds(candidate, m, 0, sizes[-1], True)
        spare = clock.variation * clock.ratio * (whole * step + eval_last)
        end = clock.elapsed_s + clock.ratio * (before + eval_last + last * step)
        return _Option(
            epochs=epochs,
            sizes=sizes[done:],
            last_steps=last,
            last_share=last / whole,
            steps_left=sum(steps[done : epochs - 1]) + last,
            end=end,
            spare=spare,
            fits=end <= budget - spare,
        )

    last = whole
    for _ in range(4):  # the sizes depend on the last epoch's length, which depends on its size: settle
        o = option(last)
        room = (budget - o.spare - o.end) / clock.ratio
        fitted = max(shortest, min(whole, last + math.floor(room / m.step_seconds[o.sizes[-1]])))
        if fitted == last:
            break
        last = fitted
    o = option(last)
    while not o.fits and last > shortest:
        last -= 1
        o = option(last)
    return o


def _too_small(recipe: TrainConfig, trace: Trace, m: Measurement, steps_for) -> BudgetTooSmall:
    one_config = _with_epochs(recipe, 1)
    full_steps = steps_for(one_config)[0]
    one = predict_seconds(one_config, 1, [full_steps], m)
    return BudgetTooSmall(
        f"--budget {format_duration(trace.budget_s)}: one epoch of {full_steps} steps needs about "
        f"{format_duration(one)} on this machine ({m.step_seconds[max(m.step_seconds, key=_size_order)]:.2f} s "
        f"a step at the largest size) after {format_duration(m.seconds)} measuring; raise --budget, train on fewer "
        "images (--train-subset) or a smaller model, or turn the budget off (--budget none)"
    )


def _variation(ratios: list[float]) -> float:
    """How far one epoch's speed strayed from the one before's, on average over the last three."""
    if len(ratios) < 2:
        return VARIATION_DEFAULT
    last = ratios[-4:]
    steps = [abs(b / a - 1) for a, b in itertools.pairwise(last)]
    return min(VARIATION_MAX, max(VARIATION_MIN, statistics.fmean(steps)))


def _no_time() -> float:
    return 0.0


class Planner:
    """A budget run's clock and its trace. :meth:`start` measures and makes the first plan (or takes a
    given trace); :meth:`boundary` is called by every rank after each epoch and returns the decision for
    the epochs that remain: the trace's own where it has one (a replay, or a resume inside the traced
    part), otherwise a new one from the epoch's wall time (the slowest rank's), unless the trace is a
    replay, which keeps its last."""

    def __init__(self, trace: Trace, recipe: TrainConfig, dist: Dist, clock: Callable[[], float], elapsed: float):
        if trace.replay:  # a replay reads no clock: nothing it does depends on time
            clock = _no_time
        self.trace, self.recipe, self.dist, self.clock = trace, recipe, dist, clock
        self.t0 = clock() - elapsed  # budget seconds used before this process started (a resume)
        # when the epoch being trained began: the last decision (unknown for one begun before a resume)
        self.epoch_start: float | None = None
        self.steps_t0, self.steps_k0 = 0.0, 10**9  # when and from which step the epoch's steps are timed

    @classmethod
    def start(cls, config: TrainConfig, dist: Dist, clock, do_measure: Callable[[], Measurement], steps_for):
        """Measure this machine and make the first plan."""
        t0 = clock()
        m = do_measure()
        recipe = config
        trace = Trace(
            budget_s=config.budget_seconds,
            max_epochs=config.epochs,
            progressive=config.progressive,
            steps_per_epoch=steps_for(_with_epochs(config, 1))[0],
            step_seconds=dict(m.step_seconds),
            eval_seconds=m.eval_seconds,
            measure_seconds=m.seconds,
        )
        first = decide(recipe, trace, 0, _Clock(m.seconds, 1.0, VARIATION_DEFAULT), steps_for)
        planner = cls(trace.with_decision(first), recipe, dist, clock, 0.0)
        planner.t0, planner.epoch_start = t0, clock()
        return planner

    @classmethod
    def of_trace(cls, config: TrainConfig, dist: Dist, clock, elapsed: float) -> Planner:
        """Follow a given or saved trace; ``elapsed``: the budget seconds it had used (a resume)."""
        trace = Trace.from_dict(config.plan)
        recipe = dataclasses.replace(config, epochs=trace.max_epochs, progressive=trace.progressive, plan={})
        return cls(trace, recipe, dist, clock, elapsed)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def in_force(self, epoch: int, step: int) -> Decision:
        """The decision epoch ``epoch`` trains by after ``step`` of its steps (a replay's trace holds later
        ones too: they take over when their step comes)."""
        made = (d for d in self.trace.decisions if (d.epoch, d.step) <= (epoch, step))
        return max(made, key=lambda d: (d.epoch, d.step))

    def config_for(self, config: TrainConfig, epoch: int, step: int = 0) -> TrainConfig:
        """``config`` with the trace, and the epochs of the decision in force after ``step`` steps of epoch
        ``epoch``."""
        return dataclasses.replace(config, plan=self.trace.to_dict(), epochs=self.in_force(epoch, step).epochs)

    def size(self, epoch: int) -> int | None:
        """The image side epoch ``epoch`` trains at (None: full size), by the decision in force then."""
        d = self.in_force(epoch, 0)
        return d.sizes[epoch - d.epoch] or None

    def steps(self, epoch: int, steps: int, step: int) -> int:
        """The steps of epoch ``epoch`` of ``steps`` batches, as planned after ``step`` of them: the last
        epoch's may be fewer."""
        d = self.in_force(epoch, step)
        return min(steps, d.last_steps) if epoch == d.epochs - 1 else steps

    def steps_started(self, step: int) -> None:
        """The epoch's steps start (from ``step``): the last epoch's re-fits time them from here."""
        self.steps_t0, self.steps_k0 = self.clock(), step

    def refit(
        self, epoch: int, step: int, size: int | None, whole: int, steps_for, progress: float = 0.0
    ) -> Decision | None:
        """After ``step`` of the steps (of ``whole``, at schedule progress ``progress``) of epoch ``epoch``,
        from the time a step has taken since the last re-fit (the slowest rank's). In the last epoch: its
        length again, so that it ends at the budget, or, where the rest of the budget holds more than the
        whole epoch, a plan of more epochs after it (as at an epoch boundary). In an earlier epoch: where
        the run could no longer end within the budget after it (not even with the shortest last epoch
        after it), this epoch becomes the last, its length fitted to the budget. The trace's own decision
        where it has one; None when the plan stays."""
        recorded = self.trace.at(epoch, step)
        if recorded is not None or self.trace.replay or step <= self.steps_k0:
            return recorded
        now = self.clock()
        figures = torch.tensor([self.elapsed(), now - self.steps_t0], dtype=torch.float64)
        elapsed, seconds = (float(v) for v in self.dist.max(figures))
        rate = seconds / (step - self.steps_k0)  # since the last re-fit: the speed now, not the epoch's mean
        self.steps_t0, self.steps_k0 = now, step
        before, m = self.in_force(epoch, step), self.trace.measurement()
        ratio = max(1e-6, rate / m.step_seconds[size or 0])
        eval_last = ratio * _epoch_seconds(self.recipe, m, 0, size, True)
        if epoch < before.epochs - 1 and not self._too_late(before, (epoch, step, size, whole), (elapsed, rate, ratio)):
            return None
        steps_now = before.last_steps if epoch == before.epochs - 1 else whole
        spare = before.variation * (eval_last + rate * (steps_now - step))
        fitted = step + math.floor((self.trace.budget_s - elapsed - eval_last - spare) / rate)
        if fitted > whole and before.epochs < self.trace.max_epochs:
            at = (epoch, step, size, whole, progress)
            decision = self._more_epochs(before, at, (elapsed, rate, ratio), steps_for)
            if decision is not None:
                self.trace = self.trace.with_decision(decision)
                return decision
        last = max(step + 1, min(whole, fitted))
        if last == before.last_steps and epoch == before.epochs - 1:
            return None
        end = elapsed + rate * (last - step) + eval_last
        decision = dataclasses.replace(
            before,
            epochs=epoch + 1,
            step=step,
            elapsed_s=elapsed,
            ratio=ratio,
            spare_s=spare,
            sizes=[size or 0],
            last_steps=last,
            steps_left=last - step,
            predicted_s=end,
            epoch=epoch,
            progress=progress,
        )
        self.trace = self.trace.with_decision(decision)
        return decision

    def _too_late(self, before: Decision, at: tuple, now: tuple) -> bool:
        """Whether the run, ``at`` (epoch, step, size, whole steps) an epoch before its last, could no longer
        end within the budget after this epoch, its evaluation and the shortest last epoch after it with
        its evaluation, at this speed (``now``: budget seconds used, seconds a step, speed ratio)."""
        (epoch, step, size, whole), (elapsed, rate, ratio) = at, now
        m = self.trace.measurement()
        after = before.sizes[epoch + 1 - before.epoch]
        shortest = max(1, math.ceil(MIN_LAST_SHARE * whole))
        rest = (whole - step) * rate + ratio * _epoch_seconds(self.recipe, m, 0, size, False)
        rest += ratio * _epoch_seconds(self.recipe, m, shortest, after or None, True)
        return elapsed + rest > self.trace.budget_s

    def boundary(self, done: int, steps: int, size: int | None, steps_for, progress: float = 0.0) -> Decision | None:
        """The decision after ``done`` epochs, the last of which trained ``steps`` steps at ``size``, at
        schedule progress ``progress``; None: the plan stands (a replay past its trace's end)."""
        recorded = self.trace.at(done)
        if recorded is not None:
            return recorded
        if self.trace.replay:
            return None
        now = self.clock()
        seconds = now - self.epoch_start if self.epoch_start is not None else -1.0
        self.epoch_start = now
        figures = self.dist.max(torch.tensor([self.elapsed(), seconds], dtype=torch.float64))
        elapsed, seconds = float(figures[0]), float(figures[1])
        ratios = [d.ratio for d in self.trace.decisions if d.epoch > 0]
        if seconds > 0:
            predicted = _epoch_seconds(self.recipe, self.trace.measurement(), steps, size, False)
            ratio = max(1e-6, seconds / predicted)
        else:  # the epoch began before a resume: its time is not known
            ratio = self.trace.last.ratio
        clock = _Clock(elapsed, ratio, _variation([*ratios, ratio]), progress)
        decision = decide(self.recipe, self.trace, done, clock, steps_for, trained_size=size)
        self.trace = self.trace.with_decision(decision)
        return decision

    def _more_epochs(self, before: Decision, at: tuple, now: tuple, steps_for) -> Decision | None:
        """The plan, made ``step`` steps into the last epoch (``at``: epoch, step, size, whole steps, schedule
        progress), that trains it whole and more epochs after it, as decided at the boundary it would reach
        at this speed (``now``: budget seconds used, seconds a step, speed ratio), the phases of the epochs
        after it laid over the progress that remains after the rest of it; None where none would fit."""
        (epoch, step, size, whole, progress), (elapsed, rate, ratio) = at, now
        m = self.trace.measurement()
        rest = (whole - step) * rate + ratio * _epoch_seconds(self.recipe, m, 0, size, False)
        clock = _Clock(elapsed + rest, ratio, before.variation, progress, whole - step)
        later = decide(self.recipe, self.trace, epoch + 1, clock, steps_for, trained_size=size)
        if later.predicted_s + later.spare_s > self.trace.budget_s:
            return None
        return dataclasses.replace(
            later,
            epoch=epoch,
            step=step,
            elapsed_s=elapsed,
            sizes=[size or 0, *later.sizes],
            steps_left=whole - step + later.steps_left,
        )
