"""Training: ``fit(config, data, out_dir)``, the one loop for every model, read top to bottom.

``fit`` sets the run up (:mod:`cifar_resnet.engine`, :mod:`cifar_resnet.optim`; under ``torchrun`` the
process group, DistributedDataParallel and optionally SyncBatchNorm, :mod:`cifar_resnet.distributed`),
then for every step of every epoch runs :func:`~cifar_resnet.engine.train_step` and, between steps,
checks the loss for divergence, writes a mid-epoch ``last.pt`` when asked to and stops cleanly on SIGTERM
or Ctrl-C. After each epoch it evaluates (:func:`~cifar_resnet.engine.collect_logits`, sharded over the
processes), prints the notebook's epoch line and keeps the run directory
(:class:`~cifar_resnet.checkpoint.RunDir`) up to date: ``config.json``, ``history.json``,
``metrics.csv``, ``last.pt`` (enough to resume exactly) and ``best.pt`` (best validation top-1).
``fit(..., resume=path)`` continues a run where it stopped, under any number of processes.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, RunDir, build_model, load_checkpoint, make_checkpoint
from .config import TrainConfig, prepare_data
from .datasets import CifarData, channel_stats
from .distributed import Dist, convert_sync_batchnorm, setup, teardown
from .engine import collect_logits, epoch_line, init_model, resize_batch, train_step, training_loader
from .loader import CifarLoader
from .metrics import basic_metrics
from .optim import build_optimizer, build_scheduler
from .runtime import StopSignals, get_rng_state, progress_bar, resolve_device, set_rng_state, use_cpu_amp

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


def _tensorboard_writer(run: RunDir | None):
    if run is None:
        raise ValueError("--tensorboard needs a run directory (--out)")
    try:  # an optional dependency: imported only when asked for
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: "
                         "pip install 'cifar-resnet[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run.tensorboard))


def _resume_state(resume: str | Path, config: TrainConfig | None, device: str | None) -> tuple[dict, TrainConfig]:
    """The checkpoint to continue and the config it continues with: the saved one, where only the device
    may change."""
    state = load_checkpoint(resume, resumable=True)
    saved = TrainConfig.from_dict(state["config"])
    if config is None:
        config = saved
    if device is not None:
        config = dataclasses.replace(config, device=device)
    if dataclasses.replace(saved, device=config.device) != config:
        changed = [f.name for f in dataclasses.fields(TrainConfig)
                   if f.name != "device" and getattr(saved, f.name) != getattr(config, f.name)]
        raise ValueError(f"{resume} was written with another configuration ({', '.join(changed)} differ); a "
                         "resumed run continues as it was configured, only the device may change")
    return state, config


def _first_bad_step(losses: list[torch.Tensor], first_step: int) -> int | None:
    """The index of the first non-finite loss among those of steps ``first_step, first_step + 1, ...``."""
    if not losses:
        return None
    bad = (~torch.isfinite(torch.stack(losses))).nonzero()
    return first_step + int(bad[0]) if len(bad) else None


def _tta_name(tta: bool, translate: int) -> str:
    """How an epoch was evaluated: none, flip, translate1, flip+translate1, ..."""
    parts = (["flip"] if tta else []) + ([f"translate{translate}"] if translate else [])
    return "+".join(parts) or "none"


def _weights_finite(model: nn.Module) -> bool:
    """Every parameter and floating buffer (BN running statistics included) is finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def fit(config: TrainConfig | None = None, data: CifarData | None = None, out_dir: str | Path | None = None, *,
        resume: str | Path | None = None, device: str | None = None, save_every: float | None = None,
        save_every_steps: int | None = None, check_every: int = 10, progress: bool | None = None,
        log: Callable[[str], None] | None = print, on_epoch_end: Callable[[dict], None] | None = None,
        tensorboard: bool = False) -> History:
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
    for value, name in ((save_every, "--save-every"), (save_every_steps, "--save-every-steps")):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    say = log or (lambda s: None)
    if state is not None and state["epoch"] >= config.epochs:
        if not auto:
            raise ValueError(f"{resume} is from a finished run ({state['epoch']} of {config.epochs} epochs); "
                             "nothing to resume")
        # a job restarted after it finished (a requeue): done already
        say(f"{resume}: the run has finished ({state['epoch']} of {config.epochs} epochs); nothing to do")
        model = build_model(state, source=str(resume))
        return History(records=list(state["history"]), model=model, seconds=0.0, out_dir=Path(resume).parent)

    dist, device_name = setup(config.device)
    try:
        return _fit(config, data, out_dir, state, resume, dist, resolve_device(device_name), t_start,
                    save_every, save_every_steps, check_every, progress, say if dist.is_main else (lambda s: None),
                    on_epoch_end, tensorboard)
    finally:
        teardown(dist)


def _fit(config: TrainConfig, data: CifarData | None, out_dir, state: dict | None, resume, dist: Dist,
         dev: torch.device, t_start: float, save_every, save_every_steps, check_every: int, progress,
         say: Callable[[str], None], on_epoch_end, tensorboard: bool) -> History:
    progress = dist.is_main and (sys.stderr.isatty() if progress is None else progress)
    if data is None:  # rank 0 first: a dataset that must be downloaded is downloaded once
        data = prepare_data(config) if dist.is_main else None
        dist.barrier()
        if data is None:
            data = prepare_data(config)
    eval_name, eval_split = data.eval_split()
    if state is not None and list(state["classes"]) != list(data.classes):
        raise CheckpointError(f"{resume} was trained on other classes than {data.source} has")

    # normalisation statistics come from the training images (the checkpoint's when resuming)
    mean, std = (tuple(state["mean"]), tuple(state["std"])) if state else channel_stats(data.train.images)
    train_loader = training_loader(config, data.train, mean, std, dev, rank=dist.rank, world_size=dist.world_size)
    steps = full_steps = len(train_loader)
    # --drop-easy: from epoch config.drop_start on, only the keep_n images of highest loss are trained on
    n_train = train_loader.num_images
    keep_n = n_train - int(config.drop_easy * n_train)
    if config.drop_easy:
        if dist.enabled:
            raise ValueError("--drop-easy is for one process; it does not run under torchrun")
        if keep_n // config.batch_size == 0:
            raise ValueError(f"--drop-easy {config.drop_easy} keeps {keep_n} images, fewer than one batch")
    epoch_steps = [full_steps if e < config.drop_start else keep_n // config.batch_size for e in range(config.epochs)]
    eval_shard = eval_split.subset(range(len(eval_split))[dist.shard(len(eval_split))])
    eval_loader = CifarLoader(eval_shard, config.eval_batch_size, mean=mean, std=std, device=dev)
    model = init_model(config, data, mean, std, dev, data_init=state is None)
    if config.sync_bn and dist.enabled:
        convert_sync_batchnorm(model)
    optimizer = build_optimizer(config, model, dev)
    scheduler = build_scheduler(config, optimizer, steps, total_steps=sum(epoch_steps))
    # each training image's loss at its last training step (inf: not seen yet), for --drop-easy
    example_loss = torch.full((n_train,), float("inf"), device=dev) if config.drop_easy else None
    records: list[dict] = []
    start_epoch, start_step, partial = 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        records = list(state["history"])
        start_epoch = state["epoch"]
        partial = state.get("partial")
        if example_loss is not None and state.get("example_loss") is not None:
            example_loss = state["example_loss"].to(dev)
        start_step = partial["step"] if partial else 0
        say(f"resuming {resume} at epoch {start_epoch + 1} of {config.epochs}"
            + (f", step {start_step + 1} of {epoch_steps[start_epoch]}" if start_step else ""))
    best_top1 = max((r["val_top1"] for r in records), default=-1.0)
    train_seconds_total = records[-1].get("train_seconds", 0.0) if records else 0.0
    train_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if dist.enabled else model
    train_model = torch.compile(train_model) if config.compile else train_model

    run = RunDir(out_dir) if out_dir is not None else None
    if run is not None and dist.is_main:
        run.create().write_config(config.to_dict())
    writer = _tensorboard_writer(run) if tensorboard and dist.is_main else None
    # where the last checkpoint with finite weights was written, for the message of a diverged run
    last_good = None
    if state is not None and run is not None:
        last_good = (run.last, f"epoch {start_epoch + 1}, step {start_step}" if start_step else f"epoch {start_epoch}")
    n_params = sum(p.numel() for p in model.parameters())
    procs = f" x {dist.world_size} processes" if dist.enabled else ""
    cpu_amp = dev.type == "cpu" and use_cpu_amp(config.cpu_amp)
    bf16 = cpu_amp or (config.amp and dev.type == "cuda")
    sizes = config.train_sizes
    precision = " (bf16)" if bf16 else " (fp32: no AMX on this CPU)" if dev.type == "cpu" and \
        config.cpu_amp == "auto" else ""
    say(f"{config.model} ({n_params:,} parameters) on {dev}{precision}{procs}; "
        f"{len(data.train)} training images, "
        f"{len(eval_split)} {eval_name} images, {config.epochs} epochs of {steps} steps")

    def checkpoint(epoch: int, records: list[dict], partial: dict | None) -> dict:
        return make_checkpoint(model, classes=data.classes, coarse_classes=data.coarse_classes, dataset=data.name,
                               mean=mean, std=std, config=config.to_dict(), eval_split=eval_name, epoch=epoch,
                               history=records, training_state={"optimizer": optimizer.state_dict(),
                                                                "scheduler": scheduler.state_dict(),
                                                                "rng": get_rng_state(), "partial": partial,
                                                                "example_loss": None if example_loss is None
                                                                else example_loss.cpu()})

    def diverged(epoch: int, step: int, lr: float, what: str) -> TrainingDiverged:
        good = f"the last good checkpoint is {last_good[0]} ({last_good[1]})" if last_good else \
            "no checkpoint was written"
        return TrainingDiverged(f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g}); "
                                f"{good}; lower --lr or --grad-clip")

    last_save = time.monotonic()
    with StopSignals() as stop:
        for epoch in range(start_epoch, config.epochs):
            resumed = partial if epoch == start_epoch else None
            first = resumed["step"] if resumed else 0
            t0 = time.perf_counter()
            kept = None
            if epoch >= config.drop_start:  # the images of highest loss; a resumed epoch keeps its own
                kept = resumed["keep"].to(dev) if resumed else \
                    torch.topk(example_loss, keep_n).indices.sort().values
            train_loader.set_subset(kept)
            steps = len(train_loader)
            train_loader.set_epoch(epoch, first)
            train_model.train()
            # accumulated on the device (no host synchronisation per step); a resumed epoch's sums so far
            # are rank 0's share, so that the sum over the ranks is the whole epoch's
            keep = resumed is not None and dist.is_main
            loss_sum = torch.tensor(resumed["loss_sum"] if keep else 0.0, device=dev)
            correct = torch.tensor(resumed["correct"] if keep else 0, device=dev)
            seen = resumed["seen"] if resumed else 0
            lrs = list(resumed["lrs"]) if resumed else []
            seconds_before = resumed["seconds"] if resumed else 0.0
            window, window_start = [], first
            with progress_bar(steps, f"epoch {epoch + 1}/{config.epochs}", progress, unit="batch") as bar:
                bar.update(first)
                for step, (x, y) in enumerate(train_loader, start=first):
                    x = resize_batch(x, sizes[epoch])  # progressive resizing (None: full size)
                    loss, out, lr = train_step(train_model, x, y, optimizer, scheduler, device=dev,
                                               label_smoothing=config.label_smoothing, grad_clip=config.grad_clip,
                                               grad_clip_mode=config.grad_clip_mode, amp=config.amp,
                                               cpu_amp=cpu_amp)
                    if example_loss is not None:
                        example_loss[train_loader.batch_indices] = F.cross_entropy(out.float(), y, reduction="none")
                    lrs.append(lr)
                    loss_sum += loss * len(y)
                    correct += (out.argmax(1) == y).sum()
                    seen += len(y) * dist.world_size
                    window.append(loss)
                    done = step + 1
                    if progress:
                        bar.update(1)
                        if step % 20 == 0:  # the one read-back, at logging points only
                            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
                    due = bool(save_every_steps and done % save_every_steps == 0) or bool(
                        save_every and time.monotonic() - last_save >= save_every)
                    stop_now, save_now = dist.agree(stop.received is not None, due)
                    if done % check_every == 0 or save_now or stop_now or done == steps:
                        bad = _first_bad_step(window, window_start)
                        (bad_anywhere,) = dist.agree(bad is not None)
                        if bad_anywhere:
                            bad = window_start if bad is None else bad
                            raise diverged(epoch, bad, lrs[bad - first], "the loss is not finite")
                        window, window_start = [], done
                    if (save_now or stop_now) and done < steps:
                        (weights_bad,) = dist.agree(not _weights_finite(model))
                        if weights_bad:
                            raise diverged(epoch, step, lr, "the weights are not finite")
                        sums = dist.sum(torch.stack([loss_sum.double(), correct.double()]))
                        mid = {"step": done, "loss_sum": float(sums[0]), "correct": int(sums[1]), "seen": seen,
                               "lrs": lrs, "seconds": seconds_before + time.perf_counter() - t0,
                               "keep": None if kept is None else kept.cpu()}
                        if run is not None and dist.is_main:
                            run.write_checkpoint(checkpoint(epoch, records, mid))
                            last_good = (run.last, f"epoch {epoch + 1}, step {done}")
                        last_save = time.monotonic()
                    if stop_now and done < steps:
                        raise TrainingInterrupted(stop.name or "a signal", stop.received or 15, epoch + 1, done,
                                                  steps, run.last if run is not None else None)

            train_seconds = seconds_before + time.perf_counter() - t0
            train_seconds_total += train_seconds
            (weights_bad,) = dist.agree(not _weights_finite(model))
            if weights_bad:
                raise diverged(epoch, steps - 1, lrs[-1], "the weights are not finite")
            dist.sum(loss_sum)
            dist.sum(correct)
            dist.broadcast_buffers(model)  # every rank evaluates rank 0's model
            # full TTA every epoch, or (--no-tta-every-epoch) one plain pass until the last epoch
            full = config.tta_every_epoch or epoch + 1 == config.epochs
            tta, tta_translate = (config.tta, config.tta_translate) if full else (False, 0)
            logits, labels = collect_logits(model, eval_loader, tta=tta, tta_translate=tta_translate,
                                            amp=config.amp, cpu_amp=cpu_amp)
            logits, labels = dist.gather_rows(logits.to(dev)).cpu(), dist.gather_rows(labels.to(dev)).cpu()
            m = basic_metrics(logits, labels)
            record = {
                "epoch": epoch + 1, "lr": lrs[-1], "train_loss": loss_sum.item() / seen,
                "train_top1": correct.item() / seen, "val_loss": m["loss"], "val_top1": m["top1"],
                "val_top5": m["top5"], "eval_split": eval_name,
                "seconds": seconds_before + time.perf_counter() - t0, "train_seconds": train_seconds_total,
                "images_per_s": seen / train_seconds, "eval_tta": _tta_name(tta, tta_translate),
                "train_size": sizes[epoch] or data.train.images.shape[1], "train_images": seen,
                "lrs": lrs,
            }
            records.append(record)
            say(epoch_line(record["epoch"], record["lr"], record["train_loss"], record["val_loss"],
                           record["val_top1"]))
            if run is not None and dist.is_main:
                run.write_epoch(checkpoint(epoch + 1, records, None), best=m["top1"] > best_top1)
                last_good = (run.last, f"epoch {epoch + 1}")
            best_top1 = max(best_top1, m["top1"])
            if writer is not None:
                for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                    writer.add_scalar(key, record[key], epoch + 1)
                writer.flush()
            if on_epoch_end is not None:
                on_epoch_end(record)
            (stop_now,) = dist.agree(stop.received is not None)
            if stop_now and epoch + 1 < config.epochs:
                raise TrainingInterrupted(stop.name or "a signal", stop.received or 15, epoch + 1, steps, steps,
                                          run.last if run is not None else None)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t_start
    if records:
        best = max(records, key=lambda r: r["val_top1"])
        say(f"done in {seconds:.1f} s; best {eval_name} top-1 {best['val_top1']:.4f} at epoch {best['epoch']}")
    return History(records=records, model=model, seconds=seconds, out_dir=run.path if run else None)
