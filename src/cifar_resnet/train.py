"""Training: ``fit(config, data, out_dir)``, the one loop for every model, read top to bottom.

``fit`` sets the run up (:class:`_Run`: data, loaders, model, optimizer, schedule; under ``torchrun`` the
process group, DistributedDataParallel and optionally SyncBatchNorm), then for every step of every epoch
runs :func:`~cifar_resnet.engine.train_step` and, at each step boundary, agrees with the other ranks once
(:class:`_StepChecks`) on whether to stop (SIGTERM, Ctrl-C), write a mid-epoch ``last.pt`` or give up
because the loss diverged. After each epoch it evaluates (:func:`_evaluate_epoch`, sharded over the
processes), prints the notebook's epoch line and keeps the run directory
(:class:`~cifar_resnet.checkpoint.RunDir`) up to date: ``config.json``, ``history.json``,
``metrics.csv``, ``last.pt`` (enough to resume exactly) and ``best.pt`` (best validation top-1).
``fit(..., resume=path)`` continues a run where it stopped, under any number of processes: an epoch's
running statistics (:class:`_EpochStats`) and the ``--drop-easy`` subset (:class:`_HardExamples`) are
saved inside the epoch and picked up again.
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
import torch.nn.functional as F
from torch import nn

from .budget import Plan, follow_plan, make_plan, measure, planned_config
from .checkpoint import Checkpoint, CheckpointError, EpochRecord, RunDir, load_checkpoint
from .config import TrainConfig, prepare_data
from .console import format_duration, progress_bar
from .data import CifarData, channel_stats
from .device import bf16_is_emulated, resolve_device
from .distributed import Dist, convert_sync_batchnorm, setup, teardown
from .engine import (
    EvalOptions,
    StepOptions,
    collect_logits,
    epoch_line,
    grad_scaler,
    init_model,
    resize_batch,
    train_step,
    training_loader,
)
from .loader import CifarLoader
from .memory import keep_freed_memory
from .metrics import basic_metrics, expected_calibration_error, fit_temperature
from .optim import build_optimizer, build_scheduler
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


class TrainingDiverged(ValueError):
    """The loss (or the weights) became non-finite; nothing was written after it happened."""


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
    the per-epoch scalars under ``out_dir/tensorboard`` (needs the ``tensorboard`` extra).

    Under ``torchrun`` every process calls ``fit`` with the same arguments; ``config.batch_size`` is the
    global batch. Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT and :class:`TrainingDiverged`
    when the loss becomes non-finite.
    """
    t_start = time.perf_counter()
    auto = resume == "auto"
    if auto:
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
    for value, name in ((save_every, "--save-every"), (save_every_steps, "--save-every-steps")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    say = log or (lambda s: None)
    if state is not None and state.epoch >= config.epochs:
        if not auto:
            raise ValueError(
                f"{resume} is from a finished run ({state.epoch} of {config.epochs} epochs); nothing to resume"
            )
        # a job restarted after it finished (a requeue): done already
        say(f"{resume}: the run has finished ({state.epoch} of {config.epochs} epochs); nothing to do")
        return History(records=state.history, model=state.build_model(), seconds=0.0, out_dir=Path(resume).parent)

    keep_freed_memory()  # each step reuses the last step's memory, not fresh pages (7-13% of a CPU step)
    dist, device_name = setup(config.device)
    try:
        run = _Run(
            config,
            data,
            out_dir,
            state,
            resume,
            dist,
            resolve_device(device_name),
            log=say,
            progress=progress,
            tensorboard=tensorboard,
        )
        return _train(run, t_start, _StepChecks(check_every, save_every, save_every_steps), on_epoch_end)
    finally:
        teardown(dist)


def _train(run: _Run, t_start: float, checks: _StepChecks, on_epoch_end: Callable[[dict], None] | None) -> History:
    """The loop: epoch -> step -> checks -> save."""
    config, dist, say = run.config, run.dist, run.say
    with StopSignals() as stop:
        for epoch in range(run.start_epoch, config.epochs):
            resumed = run.partial if epoch == run.start_epoch else None  # a mid-epoch last.pt's progress
            stats = _EpochStats.start(resumed, run.dev, dist)
            run.loader.set_subset(run.hard.subset(epoch, resumed))  # --drop-easy: the hardest images only
            steps = len(run.loader)
            run.loader.set_epoch(epoch, stats.first_step)
            run.train_model.train()
            with progress_bar(steps, f"epoch {epoch + 1}/{config.epochs}", run.progress, unit="batch") as bar:
                bar.update(stats.first_step)
                for step, (x, y) in enumerate(run.loader, start=stats.first_step):
                    x = resize_batch(x, config.train_sizes[epoch])  # progressive resizing (None: full size)
                    loss, out, lr = train_step(
                        run.train_model, x, y, run.optimizer, run.scheduler, run.step_options, run.scaler
                    )
                    run.hard.record(run.loader.batch_indices, out, y)
                    stats.add(loss, out, y, lr, dist.world_size)
                    if run.progress:
                        bar.update(1)
                        if step % 20 == 0:  # the one read-back, at logging points only
                            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
                    done = step + 1
                    stop_now, save_now = checks.after_step(run, stop, stats, epoch, done, steps)
                    if (save_now or stop_now) and done < steps:
                        checks.before_write(run, stats, epoch, step, lr)
                        run.write_last(epoch, stats.partial(dist, done, run.hard.kept))
                        checks.saved()
                    if stop_now and done < steps:
                        raise _interrupted(stop, run, epoch + 1, done, steps)

            record = _evaluate_epoch(run, epoch, stats, steps)
            run.records.append(record)
            say(epoch_line(record["epoch"], record["lr"], record["train_loss"], record["val_loss"], record["val_top1"]))
            run.write_epoch(epoch, record)
            if on_epoch_end is not None:
                on_epoch_end(record)
            (stop_now,) = dist.agree(stop.received is not None)  # a signal during the evaluation
            if stop_now and epoch + 1 < config.epochs:
                raise _interrupted(stop, run, epoch + 1, steps, steps)
    run.close()
    run.calibrate_best()
    seconds = time.perf_counter() - t_start
    if run.records:
        best = max(run.records, key=lambda r: r["val_top1"])
        say(f"done in {seconds:.1f} s; best {run.eval_name} top-1 {best['val_top1']:.4f} at epoch {best['epoch']}")
    if run.plan is not None:
        loop = time.perf_counter() - run.t_loop
        say(
            f"the {format_duration(run.plan.budget_s)} budget: {format_duration(run.plan.measure_seconds)} "
            f"measuring, then {format_duration(loop)} training and evaluating "
            f"(predicted {format_duration(run.plan.predicted_s)})"
        )
    return History(
        records=run.records, model=run.model, seconds=seconds, out_dir=run.run_dir.path if run.run_dir else None
    )


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
    (weights_bad,) = dist.agree(not _weights_finite(run.model))
    if weights_bad:
        raise run.diverged(epoch, steps - 1, stats.lrs[-1], "the weights are not finite")
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
        train_size=config.train_sizes[epoch] or run.data.train.images.shape[1],
        train_images=stats.seen,
        lrs=stats.lrs,
    ).to_dict()


class _EpochStats:
    """One epoch's running training statistics, accumulated on the device (no host synchronisation per
    step). A resumed epoch starts from the partial-epoch state of its ``last.pt``; :meth:`partial` writes
    that state. The sums a resumed epoch starts from are rank 0's share, so that the sum over the ranks
    is the whole epoch's."""

    def __init__(
        self,
        dev: torch.device,
        first_step: int,
        loss_sum: float,
        correct: int,
        seen: int,
        lrs: list[float],
        seconds_before: float,
    ):
        self.first_step, self.seen, self.lrs, self.seconds_before = first_step, seen, lrs, seconds_before
        self.loss_sum = torch.tensor(loss_sum, device=dev)
        self.correct = torch.tensor(correct, device=dev)
        self.losses: list[torch.Tensor] = []  # this rank's losses since the last divergence check
        self.unchecked_from = first_step  # the step of losses[0]
        self.t0 = time.perf_counter()

    @classmethod
    def start(cls, resumed: dict | None, dev: torch.device, dist: Dist) -> _EpochStats:
        if resumed is None:
            return cls(dev, 0, 0.0, 0, 0, [], 0.0)
        keep = dist.is_main
        return cls(
            dev,
            resumed["step"],
            resumed["loss_sum"] if keep else 0.0,
            resumed["correct"] if keep else 0,
            resumed["seen"],
            list(resumed["lrs"]),
            resumed["seconds"],
        )

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, lr: float, world_size: int) -> None:
        self.lrs.append(lr)
        self.loss_sum += loss * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y) * world_size
        self.losses.append(loss)

    def first_bad_step(self) -> int | None:
        """The first step since the last check whose loss is not finite (a host synchronisation); the
        steps are then checked."""
        bad = None
        if self.losses:
            nonfinite = (~torch.isfinite(torch.stack(self.losses))).nonzero()
            bad = self.unchecked_from + int(nonfinite[0]) if len(nonfinite) else None
        self.unchecked_from += len(self.losses)
        self.losses = []
        return bad

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
        return self.loss_sum.item() / self.seen, self.correct.item() / self.seen


class _HardExamples:
    """``--drop-easy``: each training image's loss at its last training step (inf: not seen yet), and from
    epoch ``config.drop_start`` on, the ``keep`` images of highest loss that the epoch trains on. Off
    (every method a no-op) when ``config.drop_easy`` is 0."""

    def __init__(self, config: TrainConfig, n_train: int, dist: Dist, dev: torch.device, state: Checkpoint | None):
        self.on, self.start_epoch = bool(config.drop_easy), config.drop_start
        self.keep = n_train - int(config.drop_easy * n_train)
        self.kept: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        if not self.on:
            return
        if dist.enabled:
            raise ValueError("--drop-easy is for one process; it does not run under torchrun")
        if self.keep // config.batch_size == 0:
            raise ValueError(f"--drop-easy {config.drop_easy} keeps {self.keep} images, fewer than one batch")
        saved = state.example_loss if state is not None else None
        self.loss = saved.to(dev) if saved is not None else torch.full((n_train,), float("inf"), device=dev)

    def steps(self, config: TrainConfig, full_steps: int) -> list[int]:
        """The number of steps of each epoch (the schedule runs over their sum)."""
        return [full_steps if e < self.start_epoch else self.keep // config.batch_size for e in range(config.epochs)]

    def subset(self, epoch: int, resumed: dict | None) -> torch.Tensor | None:
        """The images epoch ``epoch`` trains on (None: all); a resumed epoch keeps its own."""
        self.kept = None
        if self.on and epoch >= self.start_epoch:
            self.kept = (
                resumed["keep"].to(self.loss.device)
                if resumed
                else torch.topk(self.loss, self.keep).indices.sort().values
            )
        return self.kept

    def record(self, indices: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        if self.loss is not None:
            self.loss[indices] = F.cross_entropy(out.float(), y, reduction="none")


class _StepChecks:
    """What happens at a step boundary. :meth:`after_step` agrees with the other ranks once: stop (a
    signal), write a mid-epoch ``last.pt`` (``--save-every``/``--save-every-steps``) and diverged (a
    non-finite loss, checked every ``check_every`` steps, at the epoch's end and whenever this rank
    wants to stop or save: a check is a host synchronisation on a GPU). Before a mid-epoch write,
    :meth:`before_write` makes sure no rank holds an unchecked loss or non-finite weights."""

    def __init__(self, check_every: int, save_every: float | None, save_every_steps: int | None):
        self.check_every, self.save_every, self.save_every_steps = check_every, save_every, save_every_steps
        self.last_save = time.monotonic()

    def after_step(
        self, run: _Run, stop: StopSignals, stats: _EpochStats, epoch: int, done: int, steps: int
    ) -> tuple[bool, bool]:
        want_stop = stop.received is not None
        want_save = bool(self.save_every_steps and done % self.save_every_steps == 0) or bool(
            self.save_every and time.monotonic() - self.last_save >= self.save_every
        )
        check = done % self.check_every == 0 or done == steps or want_stop or want_save
        window_start = stats.unchecked_from
        bad = stats.first_bad_step() if check else None
        stop_now, save_now, diverged = run.dist.agree(want_stop, want_save, bad is not None)
        if diverged:
            self._raise_diverged(run, stats, epoch, window_start if bad is None else bad)
        return stop_now, save_now

    def before_write(self, run: _Run, stats: _EpochStats, epoch: int, step: int, lr: float) -> None:
        window_start = stats.unchecked_from
        bad = stats.first_bad_step()  # another rank's reason to write: this rank's last losses are unchecked
        loss_bad, weights_bad = run.dist.agree(bad is not None, not _weights_finite(run.model))
        if loss_bad:
            self._raise_diverged(run, stats, epoch, window_start if bad is None else bad)
        if weights_bad:
            raise run.diverged(epoch, step, lr, "the weights are not finite")

    def saved(self) -> None:
        self.last_save = time.monotonic()

    @staticmethod
    def _raise_diverged(run: _Run, stats: _EpochStats, epoch: int, bad: int) -> None:
        # bad: the first step with a non-finite loss (another rank's: the first step of this rank's window)
        raise run.diverged(epoch, bad, stats.lrs[bad], "the loss is not finite")


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


def _weights_finite(model: nn.Module) -> bool:
    """Every parameter and floating buffer (BN running statistics included) is finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


class _Run:
    """Everything the loop works with, set up once: the data and its loaders, the model (and its DDP /
    compiled wrapper for training), the optimizer, schedule and loss scaler, the step's and evaluation's
    options, the --drop-easy state, the run directory and where a resumed run starts."""

    def __init__(
        self,
        config: TrainConfig,
        data: CifarData | None,
        out_dir,
        state: Checkpoint | None,
        resume,
        dist: Dist,
        dev: torch.device,
        *,
        log: Callable[[str], None],
        progress: bool | None,
        tensorboard: bool,
    ):
        self.config, self.dist, self.dev = config, dist, dev
        self.say = log if dist.is_main else (lambda s: None)
        self.progress = dist.is_main and (sys.stderr.isatty() if progress is None else progress)
        if data is None:  # rank 0 first: a dataset that must be downloaded is downloaded once
            data = prepare_data(config) if dist.is_main else None
            dist.barrier()
            if data is None:
                data = prepare_data(config)
        self.data = data
        self.eval_name, eval_split = data.eval_split()
        if state is not None and state.classes != list(data.classes):
            raise CheckpointError(f"{resume} was trained on other classes than {data.source} has")

        # normalisation statistics come from the training images (the checkpoint's when resuming)
        self.mean, self.std = (state.mean, state.std) if state else channel_stats(data.train.images)
        self.loader = training_loader(
            config, data.train, self.mean, self.std, dev, rank=dist.rank, world_size=dist.world_size
        )
        full_steps = len(self.loader)
        eval_shard = eval_split.subset(range(len(eval_split))[dist.shard(len(eval_split))])
        self.eval_loader = CifarLoader(eval_shard, config.eval_batch_size, mean=self.mean, std=self.std, device=dev)
        self.model = init_model(config, data, self.mean, self.std, dev, data_init=state is None)
        if config.sync_bn and dist.enabled:
            convert_sync_batchnorm(self.model)
        self.plan = None
        if config.budget_seconds is not None and not config.plan:  # --budget: measure, then fix the epochs
            self.plan = self._make_plan(config, full_steps)
            self.config = config = planned_config(config, self.plan)
        self.hard = _HardExamples(config, self.loader.num_images, dist, dev, state)
        self.optimizer = build_optimizer(config, self.model, dev)
        self.scheduler = build_scheduler(
            config, self.optimizer, full_steps, total_steps=sum(self.hard.steps(config, full_steps))
        )
        self.step_options = StepOptions.from_config(config, dev)
        self.eval_options = EvalOptions.from_config(config, dev)
        self.scaler = grad_scaler(self.step_options, dev)

        self.records: list[dict] = []
        self.last_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start_epoch, self.partial = 0, None
        if state is not None:
            self._load(state, resume, full_steps)
        self.best_top1 = max((r["val_top1"] for r in self.records), default=-1.0)
        self.train_seconds = self.records[-1].get("train_seconds", 0.0) if self.records else 0.0
        self.train_model = (
            nn.parallel.DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
            if dist.enabled
            else self.model
        )
        self.train_model = torch.compile(self.train_model) if config.compile else self.train_model

        self.run_dir = RunDir(out_dir) if out_dir is not None else None
        if self.run_dir is not None and dist.is_main:
            self.run_dir.create().write_config(config.to_dict())
        self.writer = _tensorboard_writer(self.run_dir) if tensorboard and dist.is_main else None
        # where the last checkpoint with finite weights was written, for the message of a diverged run
        self.last_good = None
        if state is not None and self.run_dir is not None:
            step = self.partial["step"] if self.partial else 0
            self.last_good = (
                self.run_dir.last,
                f"epoch {self.start_epoch + 1}, step {step}" if step else f"epoch {self.start_epoch}",
            )
        self._announce(eval_split, full_steps)
        if self.plan is not None:
            self.say(self.plan.line(data.train.images.shape[1]))
        self.t_loop = time.perf_counter()

    def _make_plan(self, config: TrainConfig, full_steps: int) -> Plan:
        n_train = self.loader.num_images

        def steps_for(candidate: TrainConfig) -> list[int]:
            hard = _HardExamples(candidate, n_train, self.dist, self.dev, None)
            return hard.steps(candidate, full_steps)

        measured = measure(config, self.model, self.loader, self.eval_loader, self.dev, self.dist)
        return make_plan(config, config.budget_seconds, measured, steps_for)

    def _load(self, state: Checkpoint, resume, full_steps: int) -> None:
        self.model.load_state_dict(state.state_dict)
        self.optimizer.load_state_dict(state.optimizer_state)
        self.scheduler.load_state_dict(state.scheduler_state)
        if self.scaler is not None and state.scaler_state is not None:
            self.scaler.load_state_dict(state.scaler_state)
        set_rng_state(state.rng_state)
        self.records = state.history
        self.start_epoch, self.partial = state.epoch, state.partial
        step = self.partial["step"] if self.partial else 0
        steps = self.hard.steps(self.config, full_steps)[self.start_epoch]
        self.say(
            f"resuming {resume} at epoch {self.start_epoch + 1} of {self.config.epochs}"
            + (f", step {step + 1} of {steps}" if step else "")
        )

    def _announce(self, eval_split, steps: int) -> None:
        config, dev = self.config, self.dev
        n_params = sum(p.numel() for p in self.model.parameters())
        procs = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        precision = self.step_options.precision
        note = (
            " (bf16, emulated: this CPU has no AMX or AVX512_BF16, so a step takes many times the fp32 one; "
            "--precision auto picks fp32 here)"
            if precision == "bf16" and bf16_is_emulated(dev)
            else f" ({precision})"
            if precision != "fp32"
            else " (fp32: no bf16 instructions, AMX or AVX512_BF16, on this CPU)"
            if dev.type == "cpu" and config.precision == "auto"
            else ""
        )
        self.say(
            f"{config.model} ({n_params:,} parameters) on {dev}{note}{procs}; "
            f"{len(self.data.train)} training images, "
            f"{len(eval_split)} {self.eval_name} images, {config.epochs} epochs of {steps} steps"
        )

    def checkpoint(self, epoch: int, partial: dict | None) -> Checkpoint:
        """The run's checkpoint after ``epoch`` epochs (and ``partial``: the progress into the next)."""
        data = self.data
        return Checkpoint.of_model(
            self.model,
            classes=data.classes,
            coarse_classes=data.coarse_classes,
            dataset=data.name,
            mean=self.mean,
            std=self.std,
            config=self.config.to_dict(),
            eval_split=self.eval_name,
            epoch=epoch,
            history=self.records,
            training_state={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": get_rng_state(),
                "partial": partial,
                **({"example_loss": self.hard.loss.cpu()} if self.hard.loss is not None else {}),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            },
        )

    def write_last(self, epoch: int, partial: dict) -> None:
        """A mid-epoch ``last.pt`` (rank 0)."""
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.write_checkpoint(self.checkpoint(epoch, partial))
            self.last_good = (self.run_dir.last, f"epoch {epoch + 1}, step {partial['step']}")

    def write_epoch(self, epoch: int, record: dict) -> None:
        """After an epoch: ``last.pt``, ``best.pt`` when it is the best so far, the history, tensorboard."""
        top1 = record["val_top1"]
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.write_epoch(self.checkpoint(epoch + 1, None), best=top1 > self.best_top1)
            self.last_good = (self.run_dir.last, f"epoch {epoch + 1}")
        self.best_top1 = max(self.best_top1, top1)
        if self.writer is not None:
            for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                self.writer.add_scalar(key, record[key], epoch + 1)
            self.writer.flush()

    def diverged(self, epoch: int, step: int, lr: float, what: str) -> TrainingDiverged:
        good = (
            f"the last good checkpoint is {self.last_good[0]} ({self.last_good[1]})"
            if self.last_good
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g}); "
            f"{good}; lower --lr or --grad-clip"
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
