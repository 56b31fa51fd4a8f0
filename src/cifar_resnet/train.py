"""Training: ``fit(config, data, out_dir)``, the one loop for every model, read top to bottom.

``fit`` sets the run up (:mod:`cifar_resnet.engine`, :mod:`cifar_resnet.optim`), trains an epoch with
:func:`~cifar_resnet.engine.train_one_epoch`, evaluates with
:func:`~cifar_resnet.engine.collect_logits`, prints the notebook's epoch line and keeps the run directory
(:class:`~cifar_resnet.checkpoint.RunDir`) up to date: ``config.json``, ``history.json``,
``metrics.csv``, ``last.pt`` (every epoch, enough to resume exactly) and ``best.pt`` (best validation
top-1). ``fit(..., resume=path)`` continues a run where it stopped.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, RunDir, load_checkpoint, make_checkpoint
from .config import TrainConfig, prepare_data
from .datasets import CifarData, channel_stats
from .engine import collect_logits, epoch_line, init_model, train_one_epoch, training_loader
from .loader import CifarLoader
from .metrics import basic_metrics
from .optim import build_optimizer, build_scheduler
from .runtime import get_rng_state, progress_bar, resolve_device, set_rng_state

__all__ = ["History", "fit"]


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
    if state["epoch"] >= config.epochs:
        raise ValueError(f"{resume} is from a finished run ({state['epoch']} of {config.epochs} epochs); "
                         "nothing to resume")
    return state, config


def fit(config: TrainConfig | None = None, data: CifarData | None = None, out_dir: str | Path | None = None, *,
        resume: str | Path | None = None, device: str | None = None, progress: bool | None = None,
        log: Callable[[str], None] | None = print, on_epoch_end: Callable[[dict], None] | None = None,
        tensorboard: bool = False) -> History:
    """Train ``config.model`` on ``data`` (``prepare_data(config)`` when omitted: a dataset named by
    ``cifar100``/``cifar10`` is downloaded on first use).

    ``out_dir``: the run directory (nothing is written when None). ``resume``: a ``last.pt`` to continue
    from exactly; ``config`` may then be omitted (the checkpoint's is used) and must otherwise equal it;
    ``device`` overrides the config's device (a resumed run may move, say, from a GPU to the CPU); the
    run directory defaults to the checkpoint's folder. ``on_epoch_end(record)`` is called after each
    epoch's files are written. ``tensorboard``: also write the per-epoch scalars under
    ``out_dir/tensorboard`` (needs the ``tensorboard`` extra).
    """
    t_start = time.perf_counter()
    state = None
    if resume is not None:
        state, config = _resume_state(resume, config, device)
        out_dir = Path(resume).parent if out_dir is None else out_dir
    elif config is None:
        raise ValueError("fit needs a config, or a checkpoint to resume")
    elif device is not None:
        config = dataclasses.replace(config, device=device)
    dev = resolve_device(config.device)
    progress = sys.stderr.isatty() if progress is None else progress
    say = log or (lambda s: None)
    if data is None:
        data = prepare_data(config)
    eval_name, eval_split = data.eval_split()
    if state is not None and list(state["classes"]) != list(data.classes):
        raise CheckpointError(f"{resume} was trained on other classes than {data.source} has")

    # normalisation statistics come from the training images (the checkpoint's when resuming)
    mean, std = (tuple(state["mean"]), tuple(state["std"])) if state else channel_stats(data.train.images)
    train_loader = training_loader(config, data.train, mean, std, dev)
    eval_loader = CifarLoader(eval_split, config.eval_batch_size, mean=mean, std=std, device=dev)
    model = init_model(config, data, mean, std, dev, data_init=state is None)
    optimizer = build_optimizer(config, model, dev)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    records: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        records = list(state["history"])
        start_epoch = state["epoch"]
        say(f"resuming {resume} at epoch {start_epoch + 1} of {config.epochs}")
    best_top1 = max((r["val_top1"] for r in records), default=-1.0)
    train_seconds_total = records[-1].get("train_seconds", 0.0) if records else 0.0
    train_model = torch.compile(model) if config.compile else model

    run = RunDir(out_dir).create() if out_dir is not None else None
    if run is not None:
        run.write_config(config.to_dict())
    writer = _tensorboard_writer(run) if tensorboard else None
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{config.model} ({n_params:,} parameters) on {dev}; {len(data.train)} training images, "
        f"{len(eval_split)} {eval_name} images, {config.epochs} epochs of {len(train_loader)} steps")

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        train_loader.set_epoch(epoch)
        with progress_bar(len(train_loader), f"epoch {epoch + 1}/{config.epochs}", progress, unit="batch") as bar:
            rec = train_one_epoch(train_model, train_loader, optimizer, scheduler, device=dev,
                                  label_smoothing=config.label_smoothing, grad_clip=config.grad_clip,
                                  grad_clip_mode=config.grad_clip_mode, amp=config.amp,
                                  bar=bar if progress else None)
        train_seconds = time.perf_counter() - t0
        train_seconds_total += train_seconds
        logits, labels = collect_logits(model, eval_loader, tta=config.tta, tta_translate=config.tta_translate,
                                        amp=config.amp)
        m = basic_metrics(logits, labels)
        record = {
            "epoch": epoch + 1, "lr": rec["lrs"][-1], "train_loss": rec["train_loss"],
            "train_top1": rec["train_top1"], "val_loss": m["loss"], "val_top1": m["top1"],
            "val_top5": m["top5"], "eval_split": eval_name,
            "seconds": time.perf_counter() - t0, "train_seconds": train_seconds_total,
            "images_per_s": rec["images"] / train_seconds,
            "lrs": rec["lrs"],
        }
        records.append(record)
        say(epoch_line(record["epoch"], record["lr"], record["train_loss"], record["val_loss"], record["val_top1"]))
        if run is not None:
            ckpt = make_checkpoint(model, classes=data.classes, coarse_classes=data.coarse_classes,
                                   dataset=data.name, mean=mean, std=std, config=config.to_dict(),
                                   eval_split=eval_name, epoch=epoch + 1, history=records,
                                   training_state={"optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict(), "rng": get_rng_state()})
            run.write_epoch(ckpt, best=m["top1"] > best_top1)
        best_top1 = max(best_top1, m["top1"])
        if writer is not None:
            for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                writer.add_scalar(key, record[key], epoch + 1)
            writer.flush()
        if on_epoch_end is not None:
            on_epoch_end(record)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t_start
    if records:
        best = max(records, key=lambda r: r["val_top1"])
        say(f"done in {seconds:.1f} s; best {eval_name} top-1 {best['val_top1']:.4f} at epoch {best['epoch']}")
    return History(records=records, model=model, seconds=seconds, out_dir=run.path if run else None)
