"""Training: ``fit(config, data, out_dir)``, the one loop for every model, read top to bottom.

``fit`` sets the run up (:class:`_Run`), then runs :func:`~cifar_resnet.engine.train_step` for every step
of every epoch; at each step boundary the ranks agree once (:class:`_StepChecks`) on whether to stop
(SIGTERM, Ctrl-C), write a mid-epoch ``last.pt`` or give up because the run diverged (:class:`Divergence`).
After each epoch it evaluates (sharded over the processes), prints the notebook's epoch line and keeps
the run directory (:class:`~cifar_resnet.checkpoint.RunDir`) up to date. ``fit(..., resume=path)``
continues a run exactly where it stopped, mid-epoch included, under any number of processes.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .budget import LAST_EPOCH_REFITS, Decision, Planner, follow_plan, is_trace, measure
from .checkpoint import Checkpoint, CheckpointError, EpochRecord, RunDir, init_weights, load_checkpoint
from .config import TrainConfig
from .console import format_duration, progress_bar
from .data import CifarData, channel_stats
from .device import bf16_is_emulated, machine_info, resolve_device
from .distributed import Dist, convert_sync_batchnorm, data_parallel, setup, teardown
from .divergence import Divergence, TrainingDiverged
from .drop_easy import HardExamples
from .engine import (
    EpochStats,
    EvalOptions,
    StepOptions,
    collect_logits,
    epoch_line,
    grad_scaler,
    init_model,
    prepare_data,
    resize_batch,
    train_step,
    training_loader,
)
from .loader import CifarLoader
from .memory import keep_freed_memory
from .metrics import basic_metrics, expected_calibration_error, fit_temperature
from .optim import ProgressSchedule, build_optimizer, build_scheduler
from .rng import get_rng_state, set_rng_state
from .signals import StopSignals

__all__ = ["History", "TrainingDiverged", "TrainingInterrupted", "fit"]


@dataclass
class History:
    """What ``fit`` returns: the per-epoch records (as in history.json), the trained model, timings."""

    records: list[dict]
    model: nn.Module
    seconds: float
    out_dir: Path | None = None

    @property
    def best(self) -> dict:
        return max(self.records, key=lambda r: r["val_top1"]) if self.records else {}


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a whole step; ``checkpoint`` (when there is a run
    directory) resumes it exactly. ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signal_name: str, signum: int, epoch: int, step: int, steps: int, checkpoint: Path | None):
        self.signal_name, self.signum, self.checkpoint = signal_name, signum, checkpoint
        self.exit_code = 128 + signum
        where = f"epoch {epoch}" if step == steps else f"epoch {epoch}, step {step} of {steps}"
        saved = f"; {checkpoint} resumes it" if checkpoint else " (no run directory: nothing was saved)"
        super().__init__(f"stopped by {signal_name} after {where}{saved}")


@dataclass(frozen=True)
class _Options:
    """``fit``'s keyword arguments about what the run writes, says and checks, as one object."""

    out_dir: str | Path | None
    save_every: float | None
    save_every_steps: int | None
    check_every: int
    progress: bool | None
    log: Callable[[str], None]
    on_epoch_end: Callable[[dict], None] | None
    tensorboard: bool
    clock: Callable[[], float]


def fit(
    config: TrainConfig | None = None,
    data: CifarData | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    save_every: float | None = None,
    save_every_steps: int | None = None,
    check_every: int = 10,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    on_epoch_end: Callable[[dict], None] | None = None,
    tensorboard: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> History:
    """Train ``config.model`` on ``data`` (``prepare_data(config)`` when omitted: a dataset named by
    ``cifar100``/``cifar10`` is downloaded on first use).

    ``out_dir``: the run directory (nothing is written when None). ``resume``: a ``last.pt`` to continue
    from exactly (from the step after the one it was written at), or ``"auto"``: ``out_dir/last.pt``
    when it exists, a fresh run when it does not. ``config`` may then be omitted (the checkpoint's is
    used) and must otherwise equal it; ``device`` overrides the config's device. ``save_every``
    (seconds) and ``save_every_steps``: also write ``last.pt`` inside an epoch. ``check_every``: steps
    between checks for a non-finite loss (a check is a host synchronisation on a GPU).
    ``on_epoch_end(record)`` is called after each epoch's files are written. ``tensorboard``: also write
    the per-epoch scalars under ``out_dir/tensorboard`` (needs the ``tensorboard`` extra). ``clock``: what
    a budget run times itself with (tests pass a made-up one).

    Under ``torchrun`` every process calls ``fit`` with the same arguments; ``config.batch_size`` is the
    global batch. Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT and :class:`TrainingDiverged`
    when the loss becomes non-finite.
    """
    t_start = time.perf_counter()
    state, config, out_dir = _starting_point(config, out_dir, resume, device)
    for value, name in ((save_every, "--save-every"), (save_every_steps, "--save-every-steps")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    say = log or (lambda s: None)
    if state is not None and state.epoch >= config.epochs:
        return _finished(state, config, resume == "auto", say)
    options = _Options(
        out_dir, save_every, save_every_steps, check_every, progress, say, on_epoch_end, tensorboard, clock
    )
    keep_freed_memory()  # each step reuses the memory the last step freed, not fresh pages
    dist, device_name = setup(config.device)
    try:
        return _train(_Run(config, data, state, dist, resolve_device(device_name), options), t_start)
    finally:
        teardown(dist)


def _starting_point(config: TrainConfig | None, out_dir, resume, device: str | None) -> tuple:
    """``(state, config, out_dir)``: the checkpoint the run continues (None: a fresh run), the config it
    runs with (its plan followed) and its run directory."""
    if resume == "auto":
        if out_dir is None:
            raise ValueError("--resume auto needs the run directory (--out) to continue")
        resume = RunDir(out_dir).last if RunDir(out_dir).last.is_file() else None
    state = None
    if resume is not None:
        state, config = _resume_state(resume, config, device)
        out_dir = Path(resume).parent if out_dir is None else out_dir
    elif config is None:
        raise ValueError("fit needs a config, or a checkpoint to resume")
    elif device is not None:
        config = dataclasses.replace(config, device=device)
    config = follow_plan(config)  # a plan decides the number of epochs and the resizing phases
    return state, config, out_dir


def _finished(state: Checkpoint, config: TrainConfig, auto: bool, say: Callable[[str], None]) -> History:
    """A resume of a run that trained all its epochs: an error, but for ``--resume auto`` (a job restarted
    after it finished, a requeue), which has nothing to do."""
    path = state.source
    done = f"{state.epoch} of {config.epochs} epochs"
    if not auto:
        raise ValueError(f"{path} is from a finished run ({done}); nothing to resume")
    say(f"{path}: the run has finished ({done}); nothing to do")
    return History(records=state.history, model=state.build_model(), seconds=0.0, out_dir=Path(path).parent)


def _train(run: _Run, t_start: float) -> History:
    """The loop: epoch -> steps (with their checks and saves) -> evaluation -> the run directory."""
    dist = run.dist
    checks = _StepChecks(run.options)
    with StopSignals() as stop:
        epoch = run.start_epoch
        while epoch < run.config.epochs:  # a budget's re-plan may change the number of epochs
            stats, steps = _train_epoch(run, epoch, checks, stop)
            record = _evaluate_epoch(run, epoch, stats, steps)
            run.records.append(record)
            run.say(
                epoch_line(record["epoch"], record["lr"], record["train_loss"], record["val_loss"], record["val_top1"])
            )
            if epoch + 1 < run.config.epochs:
                run.replan(epoch + 1, steps)  # before the checkpoint, which then holds the decision
            run.write_epoch(epoch, record)
            if run.options.on_epoch_end is not None:
                run.options.on_epoch_end(record)
            (stop_now,) = dist.agree(stop.received is not None)  # a signal during the evaluation
            if stop_now and epoch + 1 < run.config.epochs:
                raise _interrupted(stop, run, epoch + 1, steps, steps)
            epoch += 1
    run.close()
    used = run.planner.elapsed() if run.planner is not None else None  # the budget covers up to here
    run.calibrate_best()
    seconds = time.perf_counter() - t_start
    run.summarise(seconds, used)
    return History(
        records=run.records, model=run.model, seconds=seconds, out_dir=run.run_dir.path if run.run_dir else None
    )


def _train_epoch(run: _Run, epoch: int, checks: _StepChecks, stop: StopSignals) -> tuple[_EpochStats, int]:
    """The steps of one epoch (from where a mid-epoch ``last.pt`` left it), each followed by the checks;
    returns the epoch's statistics and its number of steps."""
    config, dist = run.config, run.dist
    resumed = run.partial if epoch == run.start_epoch else None  # a mid-epoch last.pt's progress
    stats = _EpochStats(run.dev, dist, resumed)
    run.divergence.start(epoch, stats)
    run.loader.set_subset(run.hard.subset(epoch, resumed))  # --drop-easy: the hardest images only
    steps = run.epoch_steps(epoch, stats.first_step)  # a budget run's last epoch may stop before the end
    run.loader.set_epoch(epoch, stats.first_step)
    run.train_model.train()
    if run.planner is not None:
        run.planner.steps_started(stats.first_step)
    with progress_bar(steps, f"epoch {epoch + 1}/{config.epochs}", run.progress, unit="batch") as bar:
        bar.update(stats.first_step)
        batches, step = iter(run.loader), stats.first_step
        while step < steps:
            x, y = next(batches)
            x = resize_batch(x, run.train_size(epoch))  # progressive resizing (None: full size)
            loss, out, lr = train_step(
                run.train_model, x, y, run.optimizer, run.scheduler, run.step_options, run.scaler
            )
            run.hard.record(run.loader.batch_indices, out, y)
            stats.add(loss, out, y, lr)
            run.divergence.add(loss)
            if run.progress:
                bar.update(1)
                if step % 20 == 0:  # the one read-back, at logging points only
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
            done = step + 1
            steps = run.refit(epoch, done, steps)  # a budget run's last epoch fits its length to the clock
            stop_now, save_now = checks.after_step(run, stop, done, steps)
            if (save_now or stop_now) and done < steps:
                # another rank's reason to write: this rank's last losses are unchecked
                run.divergence.agree(weights_at=step)
                run.write_last(epoch, stats.partial(dist, done, run.hard.kept))
                checks.saved()
            if stop_now and done < steps:
                raise _interrupted(stop, run, epoch + 1, done, steps)
            step = done
    return stats, steps


def _interrupted(stop: StopSignals, run: _Run, epoch: int, step: int, steps: int) -> TrainingInterrupted:
    # a rank that stops because another rank got the signal stops as if it had got SIGTERM
    signum = stop.received if stop.received is not None else signal.SIGTERM
    name = stop.name if stop.received is not None else "a signal on another rank"
    return TrainingInterrupted(
        name, int(signum), epoch, step, steps, run.run_dir.last if run.run_dir is not None else None
    )


def _evaluate_epoch(run: _Run, epoch: int, stats: _EpochStats, steps: int) -> dict:
    """The epoch's record: its training statistics summed over the ranks and rank 0's model evaluated on
    the validation images (each rank its shard), plainly or with the full test-time augmentation."""
    config, dist = run.config, run.dist
    train_seconds = stats.seconds()
    run.divergence.agree(losses=False, weights_at=steps - 1)
    train_loss, train_top1 = stats.finish(dist)
    run.train_seconds += train_seconds
    dist.broadcast_buffers(run.model)  # every rank evaluates rank 0's model
    # full TTA every epoch, or (--no-tta-every-epoch) one plain pass until the last epoch
    full = config.tta_every_epoch or epoch + 1 == config.epochs
    options = run.eval_options if full else run.eval_options.plain()
    logits, labels = collect_logits(run.model, run.eval_loader, options)
    logits, labels = dist.gather_rows(logits.to(run.dev)).cpu(), dist.gather_rows(labels.to(run.dev)).cpu()
    m = basic_metrics(logits, labels)
    run.last_logits = (logits, labels) if options == run.eval_options else None  # as a checkpoint evaluates
    return EpochRecord(
        epoch=epoch + 1,
        lr=stats.lrs[-1],
        train_loss=train_loss,
        train_top1=train_top1,
        val_loss=m["loss"],
        val_top1=m["top1"],
        val_top5=m["top5"],
        eval_split=run.eval_name,
        seconds=stats.seconds(),
        train_seconds=run.train_seconds,
        images_per_s=stats.seen / train_seconds,
        eval_tta=options.tta_name,
        train_size=run.train_size(epoch) or run.data.train.images.shape[1],
        train_images=stats.seen,
        progress=getattr(run.scheduler, "progress", (epoch + 1) / config.epochs),  # LambdaLR: epochs fixed
        lrs=stats.lrs,
    ).to_dict()


class _EpochStats(EpochStats):
    """One epoch's running training statistics (:class:`~cifar_resnet.engine.EpochStats`) and what a
    resume needs of them. A resumed epoch starts from the partial-epoch state of its ``last.pt``;
    :meth:`partial` writes that state. The sums a resumed epoch starts from are rank 0's share, so that
    the sum over the ranks is the whole epoch's."""

    def __init__(self, dev: torch.device, dist: Dist, resumed: dict | None):
        super().__init__(dev, dist.world_size)
        self.first_step, self.seconds_before = 0, 0.0
        if resumed is not None:
            keep = dist.is_main
            self.first_step, self.seen, self.lrs = resumed["step"], resumed["seen"], list(resumed["lrs"])
            self.seconds_before = resumed["seconds"]
            self.loss_sum = torch.tensor(resumed["loss_sum"] if keep else 0.0, device=dev)
            self.correct = torch.tensor(resumed["correct"] if keep else 0, device=dev)
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds of the epoch so far (before a resume included)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def partial(self, dist: Dist, step: int, keep: torch.Tensor | None) -> dict:
        """The partial-epoch state of a mid-epoch ``last.pt``: sums over the ranks, ``keep``: the epoch's
        --drop-easy subset."""
        sums = dist.sum(torch.stack([self.loss_sum.double(), self.correct.double()]))
        return {
            "step": step,
            "loss_sum": float(sums[0]),
            "correct": int(sums[1]),
            "seen": self.seen,
            "lrs": self.lrs,
            "seconds": self.seconds(),
            "keep": None if keep is None else keep.cpu(),
        }

    def finish(self, dist: Dist) -> tuple[float, float]:
        """The epoch's mean training loss and top-1, over every rank."""
        dist.sum(self.loss_sum)
        dist.sum(self.correct)
        return self.means()


class _StepChecks:
    """What happens at a step boundary: :meth:`after_step` agrees with the other ranks once on whether to
    stop (a signal), write a mid-epoch ``last.pt`` (``--save-every``/``--save-every-steps``) and, through
    :class:`Divergence`, whether the loss diverged (checked every ``check_every`` steps, at the epoch's
    end and whenever this rank wants to stop or save: a check is a host synchronisation on a GPU)."""

    def __init__(self, options: _Options):
        self.check_every, self.save_every = options.check_every, options.save_every
        self.save_every_steps = options.save_every_steps
        self.last_save = time.monotonic()

    def after_step(self, run: _Run, stop: StopSignals, done: int, steps: int) -> tuple[bool, bool]:
        want_stop = stop.received is not None
        want_save = bool(self.save_every_steps and done % self.save_every_steps == 0) or bool(
            self.save_every and time.monotonic() - self.last_save >= self.save_every
        )
        check = done % self.check_every == 0 or done == steps or want_stop or want_save
        stop_now, save_now = run.divergence.agree(want_stop, want_save, losses=check)
        return stop_now, save_now

    def saved(self) -> None:
        self.last_save = time.monotonic()


def _tensorboard_writer(run_dir: RunDir | None):
    if run_dir is None:
        raise ValueError("--tensorboard needs a run directory (--out)")
    try:  # an optional dependency: imported only when asked for
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install 'cifar-resnet[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(run_dir.tensorboard))


def _resume_state(resume: str | Path, config: TrainConfig | None, device: str | None) -> tuple[Checkpoint, TrainConfig]:
    """The checkpoint to continue and the config it continues with: the saved one, where only the device
    may change."""
    state = load_checkpoint(resume, resumable=True)
    saved = state.config
    if config is None:
        config = saved
    if device is not None:
        config = dataclasses.replace(config, device=device)
    if saved.plan and not config.plan:  # the same command again (--resume auto): the plan it made holds
        config = follow_plan(dataclasses.replace(config, plan=saved.plan))
    if dataclasses.replace(saved, device=config.device) != config:
        changed = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name != "device" and getattr(saved, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"{resume} was written with another configuration ({', '.join(changed)} differ); a "
            "resumed run continues as it was configured, only the device may change"
        )
    return state, config


def _shared_data(config: TrainConfig, data: CifarData | None, dist: Dist) -> CifarData:
    """``data``, or the config's data prepared by rank 0 first: a dataset to download is downloaded once."""
    if data is not None:
        return data
    data = prepare_data(config) if dist.is_main else None
    dist.barrier()
    return data if data is not None else prepare_data(config)


class _Run:
    """Everything the loop works with, set up once: the data and its loaders, the model (and its DDP /
    compiled wrapper for training), the optimizer, schedule and loss scaler, the step's and evaluation's
    options, the --drop-easy state, the divergence check, the run directory and where the run starts."""

    def __init__(self, config: TrainConfig, data, state: Checkpoint | None, dist: Dist, dev, options: _Options):
        self.config, self.dist, self.dev, self.options = config, dist, dev, options
        self.say = options.log if dist.is_main else (lambda s: None)
        self.progress = dist.is_main and (sys.stderr.isatty() if options.progress is None else options.progress)
        # data, and the normalisation statistics of its training images (the checkpoint's when resuming)
        self.data = _shared_data(config, data, dist)
        self.eval_name, eval_split = self.data.eval_split()
        if state is not None and state.classes != list(self.data.classes):
            raise CheckpointError(f"{state.source} was trained on other classes than {self.data.source} has")
        self.mean, self.std = (state.mean, state.std) if state else channel_stats(self.data.train.images)
        init = load_checkpoint(config.init) if config.init and state is None else None  # --init: given weights
        self._make_loaders(eval_split)
        self.model = init_model(config, self.data, (self.mean, self.std), dev, data_init=not (state or init))
        self.init = init_weights(self.model, init, self.data.classes) if init else (state.init if state else None)
        if config.sync_bn and dist.enabled:
            convert_sync_batchnorm(self.model)
        # --budget: measure and plan (or follow a given or saved trace), re-planned after each epoch
        self.planner = self._make_planner(state)
        if self.planner is not None:
            at = (state.epoch, state.partial["step"] if state.partial else 0) if state else (0, 0)
            self.config = self.planner.config_for(config, *at)
        self._make_optimization(state)
        self._start_from(state)
        # wrap the model into DDP (under torchrun) and compile it: what the training steps run
        self.train_model = data_parallel(self.model, dist, dev)
        self.train_model = torch.compile(self.train_model) if self.config.compile else self.train_model
        self._open_run_dir()
        self.divergence = Divergence(dist, self.model, self._resumed_checkpoint(state))
        self._announce(eval_split)

    def _make_loaders(self, eval_split) -> None:
        """The training batches (this rank's slice of each) and this rank's shard of the evaluation images."""
        config, dist = self.config, self.dist
        self.loader = training_loader(config, self.data.train, (self.mean, self.std), self.dev, dist)
        self.full_steps = len(self.loader)  # steps of an epoch over all the training images
        shard = eval_split.subset(range(len(eval_split))[dist.shard(len(eval_split))])
        self.eval_loader = CifarLoader(shard, config.eval_batch_size, mean=self.mean, std=self.std, device=self.dev)

    def _steps_for(self, candidate: TrainConfig) -> list[int]:
        """The steps of each epoch of ``candidate`` (--drop-easy shortens the late ones)."""
        hard = HardExamples(candidate, self.loader.num_images, self.dist, self.dev, None)
        return hard.steps(candidate, self.full_steps)

    def _make_planner(self, state: Checkpoint | None) -> Planner | None:
        """A budget run's planner: a new one that measures and makes the first plan, or one following the
        config's trace (given, or a resumed run's); None without a budget or with an older fixed plan."""
        config, clock = self.config, self.options.clock
        if is_trace(config.plan):
            return Planner.of_trace(config, self.dist, clock, state.budget_elapsed if state else 0.0)
        if config.budget_seconds is None or config.plan:
            return None

        def do_measure():
            return measure(config, self.model, self.loader, self.eval_loader, self.dist, clock=clock)

        return Planner.start(config, self.dist, clock, do_measure, self._steps_for)

    def train_size(self, epoch: int) -> int | None:
        """The image side epoch ``epoch`` trains at (None: full size): its budget plan's, or the config's."""
        return self.planner.size(epoch) if self.planner is not None else self.config.train_sizes[epoch]

    def epoch_steps(self, epoch: int, step: int) -> int:
        """The steps epoch ``epoch`` trains, as planned after ``step`` of them: all its batches, but a budget
        run's last epoch its plan's."""
        steps = self.hard.steps(self.config, self.full_steps)[epoch]
        return self.planner.steps(epoch, steps, step) if self.planner is not None else steps

    def replan(self, done: int, steps: int) -> None:
        """After ``done`` epochs (the last of ``steps`` steps): a budget run plans the epochs that remain
        again, spreads the rest of the schedule over their steps and records the decision."""
        if self.planner is None:
            return
        before = self.planner.in_force(done - 1, 10**9)  # the latest before this boundary
        decision = self.planner.boundary(
            done, steps, self.train_size(done - 1), self._steps_for, self.scheduler.progress
        )
        if decision is None:
            return
        self._follow(decision)
        if self.planner.trace.changed(before, decision):
            self.say(self.planner.trace.replan_line(before, decision, self.data.train.images.shape[1]))

    def refit(self, epoch: int, done: int, steps: int) -> int:
        """The steps of epoch ``epoch`` after ``done`` of them: a budget run's, re-fitted to its clock
        :data:`~cifar_resnet.budget.LAST_EPOCH_REFITS` times an epoch (``Planner.refit``); ``steps`` otherwise."""
        if self.planner is None or done >= steps:
            return steps
        whole = self.hard.steps(self.config, self.full_steps)[epoch]
        if done % max(1, steps // LAST_EPOCH_REFITS):  # a re-fit every tenth of the planned length
            return steps
        before = self.planner.in_force(epoch, done - 1)
        decision = self.planner.refit(
            epoch, done, self.train_size(epoch), whole, self._steps_for, self.scheduler.progress
        )
        if decision is None:
            return steps
        self._follow(decision)
        self.say(self.planner.trace.refit_line(before, decision, whole, self.data.train.images.shape[1]))
        return self.epoch_steps(epoch, done)

    def _follow(self, decision: Decision) -> None:
        """Take ``decision``'s epochs, phases and steps: the config, --drop-easy and the schedule follow."""
        self.config = self.planner.config_for(self.config, decision.epoch, decision.step)
        if not self.hard.on or self.hard.start_epoch > decision.epoch:  # --drop-easy has not started yet
            self.hard.start_epoch = self.config.drop_start
        self.scheduler.replan(decision.steps_left)
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.write_config(self.config.to_dict())

    def _make_optimization(self, state: Checkpoint | None) -> None:
        """The --drop-easy state, the optimizer, its schedule over the run's steps, the step's and the
        evaluation's options and the fp16 loss scaler."""
        config, dev = self.config, self.dev
        self.hard = HardExamples(config, self.loader.num_images, self.dist, dev, state.example_loss if state else None)
        self.optimizer = build_optimizer(config, self.model, dev)
        if self.planner is not None:  # a schedule over the run's progress: re-plans stretch what remains
            # (a resumed run's progress is then loaded from its checkpoint)
            steps = self.planner.trace.at(0).steps_left
            self.scheduler = ProgressSchedule(config, self.optimizer, steps)
        else:
            steps = sum(self.hard.steps(config, self.full_steps))
            self.scheduler = build_scheduler(config, self.optimizer, self.full_steps, total_steps=steps)
        self.step_options = StepOptions.from_config(config, dev)
        self.eval_options = EvalOptions.from_config(config, dev)
        self.scaler = grad_scaler(self.step_options, dev)

    def _start_from(self, state: Checkpoint | None) -> None:
        """Where the run starts: epoch 0, or where the checkpoint ``state`` stopped (its weights, optimizer,
        schedule, scaler, random generators, history and progress into an epoch)."""
        self.records: list[dict] = []
        self.last_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start_epoch, self.partial = 0, None
        if state is not None:
            self._load(state)
        self.best_top1 = max((r["val_top1"] for r in self.records), default=-1.0)
        if self.planner is not None and state is not None and not self.partial:
            self.planner.epoch_start = self.planner.clock()  # a resume at an epoch's start times that epoch
        self.train_seconds = self.records[-1].get("train_seconds", 0.0) if self.records else 0.0

    def _load(self, state: Checkpoint) -> None:
        self.model.load_state_dict(state.state_dict)
        self.optimizer.load_state_dict(state.optimizer_state)
        self.scheduler.load_state_dict(state.scheduler_state)
        if self.scaler is not None and state.scaler_state is not None:
            self.scaler.load_state_dict(state.scaler_state)
        set_rng_state(state.rng_state)
        self.records = state.history
        self.start_epoch, self.partial = state.epoch, state.partial
        step = self.partial["step"] if self.partial else 0
        steps = self.epoch_steps(self.start_epoch, step)
        self.say(
            f"resuming {state.source} at epoch {self.start_epoch + 1} of {self.config.epochs}"
            + (f", step {step + 1} of {steps}" if step else "")
        )

    def _open_run_dir(self) -> None:
        """The run directory (its config.json written by rank 0) and the TensorBoard writer, when asked for."""
        self.run_dir = RunDir(self.options.out_dir) if self.options.out_dir is not None else None
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.create().write_skipped(self.data.skipped).write_config(self.config.to_dict())
        self.writer = _tensorboard_writer(self.run_dir) if self.options.tensorboard and self.dist.is_main else None

    def _resumed_checkpoint(self, state: Checkpoint | None) -> tuple[Path, str] | None:
        """The checkpoint a resumed run started from, as the last good one (None for a fresh run)."""
        if state is None or self.run_dir is None:
            return None
        step = self.partial["step"] if self.partial else 0
        where = f"epoch {self.start_epoch + 1}, step {step}" if step else f"epoch {self.start_epoch}"
        return self.run_dir.last, where

    def _announce(self, eval_split) -> None:
        config = self.config
        n_params = sum(p.numel() for p in self.model.parameters())
        procs = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        self.say(
            f"{config.model} ({n_params:,} parameters) on {self.dev}{self._precision_note()}{procs}; "
            f"{len(self.data.train)} training images{f' of {config.image_size} px' * (config.image_size != 32)}, "
            f"{len(eval_split)} {self.eval_name} images, {config.epochs} epochs of {self.full_steps} steps"
        )
        if self.init and self.start_epoch == 0 and self.partial is None:
            i = self.init
            self.say(
                f"starting from {i['source']} ({i['model']}, {i['classes']} classes; {i['classifier']} classifier)"
            )
        if self.planner is not None and self.start_epoch == 0 and self.partial is None:
            self.say(self.planner.trace.first_line(self.data.train.images.shape[1]))

    def _precision_note(self) -> str:
        """What the announcement says of the precision: nothing for fp32 chosen on purpose, why for fp32
        chosen by ``auto`` on a CPU, a warning for bf16 emulated in software."""
        precision = self.step_options.precision
        if precision == "bf16" and bf16_is_emulated(self.dev):
            return (
                " (bf16, emulated: this CPU has no AMX or AVX512_BF16, so a step takes many times the fp32 one; "
                "--precision auto picks fp32 here)"
            )
        if precision != "fp32":
            return f" ({precision})"
        if self.dev.type == "cpu" and self.config.precision == "auto":
            return " (fp32: no bf16 instructions, AMX or AVX512_BF16, on this CPU)"
        return ""

    def checkpoint(self, epoch: int, partial: dict | None) -> Checkpoint:
        """The run's checkpoint after ``epoch`` epochs (and ``partial``: the progress into the next)."""
        run = {"config": self.config.to_dict(), "eval_split": self.eval_name, "epoch": epoch, "history": self.records}
        run.update(machine=machine_info(self.dev, self.dist.world_size), init=self.init)
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": get_rng_state(),
            "partial": partial,
            **({"example_loss": self.hard.loss.cpu()} if self.hard.loss is not None else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"budget_elapsed": self.planner.elapsed()} if self.planner is not None else {}),
        }
        return Checkpoint.of_model(self.model, self.data, (self.mean, self.std), run, training_state)

    def write_last(self, epoch: int, partial: dict) -> None:
        """A mid-epoch ``last.pt`` (rank 0)."""
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.write_checkpoint(self.checkpoint(epoch, partial))
            self.divergence.written(self.run_dir.last, f"epoch {epoch + 1}, step {partial['step']}")

    def write_epoch(self, epoch: int, record: dict) -> None:
        """After an epoch: ``last.pt``, ``best.pt`` when it is the best so far, the history, tensorboard."""
        top1 = record["val_top1"]
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.write_epoch(self.checkpoint(epoch + 1, None), best=top1 > self.best_top1)
            self.divergence.written(self.run_dir.last, f"epoch {epoch + 1}")
        self.best_top1 = max(self.best_top1, top1)
        if self.writer is not None:
            for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                self.writer.add_scalar(key, record[key], epoch + 1)
            self.writer.flush()

    def summarise(self, seconds: float, used: float | None) -> None:
        """The run's last lines: its best epoch and, under a budget, how the budget was spent."""
        if self.records:
            best = max(self.records, key=lambda r: r["val_top1"])
            self.say(
                f"done in {seconds:.1f} s; best {self.eval_name} top-1 {best['val_top1']:.4f} at epoch {best['epoch']}"
            )
        if self.planner is not None and self.planner.trace.replay:
            self.say(f"replayed the {len(self.planner.trace.decisions)} plans of its trace")
        elif self.planner is not None:
            trace = self.planner.trace
            replans = sum(1 for a, b in zip(trace.decisions, trace.decisions[1:]) if trace.changed(a, b))
            self.say(
                f"the {format_duration(trace.budget_s)} budget: {format_duration(used)} used "
                f"({100 * used / trace.budget_s:.0f}%: {format_duration(trace.measure_seconds)} measuring, then "
                f"training and evaluating; {replans} re-plan{'s' if replans != 1 else ''})"
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def calibrate_best(self) -> None:
        """A run that holds out validation images ends by fitting best.pt's temperature on them (as
        ``cifar-resnet calibrate`` does), so that its probabilities, and a service's, are calibrated by
        default; the logits are those the checkpoint evaluates with (its test-time augmentation and
        precision): the last epoch's when it is the best, else best.pt's computed again."""
        if self.run_dir is None or not self.dist.is_main or self.eval_name != "val" or not self.records:
            return
        best = max(self.records, key=lambda r: r["val_top1"])
        is_last = best["epoch"] == self.records[-1]["epoch"]
        if is_last and self.last_logits is not None:
            logits, labels = self.last_logits
        else:
            model = load_checkpoint(self.run_dir.best).build_model().to(self.dev)
            if self.config.channels_last:
                model.to(memory_format=torch.channels_last)
            _, split = self.data.eval_split()
            loader = CifarLoader(split, self.config.eval_batch_size, mean=self.mean, std=self.std, device=self.dev)
            logits, labels = collect_logits(model, loader, self.eval_options)
        t = fit_temperature(logits, labels)
        calibration = self.eval_options.calibration(self.eval_name, len(labels))
        paths = [self.run_dir.best] + ([self.run_dir.last] if is_last else [])
        for path in paths:
            load_checkpoint(path).replace(temperature=t, calibration=calibration).save(path)
        before = expected_calibration_error(logits.softmax(dim=1), labels)
        after = expected_calibration_error((logits / t).softmax(dim=1), labels)
        self.say(
            f"temperature {t:.3f} fitted on the {len(labels)} {self.eval_name} images (ECE {before:.3f} -> "
            f"{after:.3f}), stored in {' and '.join(p.name for p in paths)}"
        )
