"""Training: one config dataclass, named presets, and one loop for every model.

``fit(config, data, out_dir)`` trains, evaluates after every epoch, and keeps the run directory up to date:
``config.json``, ``history.json``, ``metrics.csv``, ``last.pt`` (every epoch, enough to resume exactly)
and ``best.pt`` (best validation top-1). ``fit(..., resume=path)`` continues a run where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_mod
from .datasets import CifarData, DataError, channel_stats, load_data, split_validation, subsample
from .evaluate import autocast_for, basic_metrics, collect_logits
from .loader import Augment, CifarLoader
from .models import create_model

OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov", "muon")
SCHEDULES = ("onecycle", "linear", "cosine", "constant")
CLIP_MODES = ("value", "norm")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Saved as ``config.json`` and inside every checkpoint."""

    # data
    data: str = "cifar100"          # .npz / archive / folder / dataset name (see datasets.load_data)
    val_split: int = 5000           # images held out from train, stratified; evaluation uses them
    train_subset: int = 0           # train on a stratified subset of this many images (0: all)
    # model
    model: str = "seed_resnet"
    model_kwargs: dict = field(default_factory=dict)
    whiten: bool = False            # patch-whitening init of the stem from training images (models that have it)
    # optimisation
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"         # adam | adamw | sgd | nesterov | muon (Muon filters + Nesterov SGD rest)
    lr: float = 1e-3                # peak learning rate (OneCycleLR's max_lr)
    momentum: float = 0.9           # SGD momentum (Adam uses its default betas)
    muon_lr: float = 0.1            # muon: peak step of the hidden filters, relative to their norm
    muon_momentum: float = 0.6      # muon: the filters' (Nesterov) momentum
    weight_decay: float = 1e-5
    schedule: str = "onecycle"      # onecycle | linear (warm-up then linear decay) | cosine | constant
    warmup: float = 0.3             # fraction of the steps spent rising (OneCycleLR's pct_start)
    grad_clip: float = 0.1          # 0 disables
    grad_clip_mode: str = "value"   # value (the notebook's clip_grad_value_) | norm
    label_smoothing: float = 0.0
    # augmentation
    crop_pad: int = 4               # random crop from the image padded by this many pixels (reflect)
    flip: str = "random"            # none | random | alternating
    cutout: int = 0                 # side of the cut-out square (0: off)
    # evaluation
    tta: bool = False               # flip test-time augmentation when evaluating
    tta_translate: int = 0          # also the image shifted this many px up-left and down-right (0: off)
    eval_batch_size: int = 500
    # machinery
    seed: int = 0
    device: str = "auto"            # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    amp: bool = True                # bf16 autocast on CUDA (ignored elsewhere)
    channels_last: bool = True
    compile: bool = False           # torch.compile the model for training

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.muon_lr > 0, f"muon learning rate must be > 0, got {self.muon_lr}"),
            (0 <= self.momentum < 1 and 0 <= self.muon_momentum < 1, "momenta must be in [0, 1)"),
            (self.tta_translate >= 0, f"tta translate must be >= 0, got {self.tta_translate}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"gradient clip must be >= 0, got {self.grad_clip}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 < self.warmup < 1, f"warm-up fraction must be in (0, 1), got {self.warmup}"),
            (self.val_split >= 0 and self.train_subset >= 0, "val split and train subset must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; use {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; use {', '.join(SCHEDULES)}"),
            (self.grad_clip_mode in CLIP_MODES, f"unknown clip mode {self.grad_clip_mode!r}; use value or norm"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        _ = self.augment  # builds an Augment, which validates the flip mode and sizes

    @property
    def augment(self) -> Augment:
        return Augment(crop_pad=self.crop_pad, flip=self.flip, cutout=self.cutout)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)


# Named presets. "seed" is the notebook's recipe (Adam, OneCycleLR per batch, max_lr 1e-3, gradient
# clipping by value 0.1, weight decay 1e-5, 100 epochs, 4 px reflect crop + flip) on its network.
PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(),
    # pytorch-cifar100's ResNet-18 recipe (SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs) with a one-cycle
    # schedule in place of its step schedule.
    "resnet18": TrainConfig(model="resnet18", optimizer="sgd", lr=0.1, weight_decay=5e-4, epochs=200,
                            grad_clip=0.0, warmup=0.15),
    # Time-to-accuracy, airbench-style (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
    # patch-whitened stem, Muon for the hidden filters and Nesterov SGD for the rest (as airbench94_muon),
    # a warm-up then linear decay, label smoothing 0.2, alternating flips, flip and 1-pixel translate
    # test-time augmentation. "fast" is for a GPU; "fast-cpu" is the same recipe on the narrow net sized
    # for a 2-core CPU (see the README's Performance section for what it reaches and how it was tuned).
    "fast": TrainConfig(model="fast", whiten=True, optimizer="muon", lr=2.0, momentum=0.9, muon_lr=0.1,
                        muon_momentum=0.6, weight_decay=5e-4, schedule="linear", warmup=0.2, grad_clip=0.0,
                        label_smoothing=0.2, crop_pad=2, flip="alternating", tta=True, tta_translate=1,
                        epochs=16, batch_size=512),
    "fast-cpu": TrainConfig(model="fast_small", whiten=True, optimizer="muon", lr=2.0, momentum=0.9,
                            muon_lr=0.1, muon_momentum=0.6, weight_decay=5e-4, schedule="linear", warmup=0.2,
                            grad_clip=0.0, label_smoothing=0.2, crop_pad=2, flip="alternating", tta=True,
                            tta_translate=1, epochs=17, batch_size=512),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available on this machine")
    return dev


def prepare_data(config: TrainConfig, data: CifarData | None = None) -> CifarData:
    """The run's data: ``config.data`` loaded (or ``data`` as given), with the validation split held out
    (unless the source brings one) and the training subset taken, both seeded by ``config.seed``."""
    if data is None:
        data = load_data(config.data)
    if config.val_split and data.val is None:
        data = split_validation(data, config.val_split, seed=config.seed)
    if config.train_subset:
        data = subsample(data, config.train_subset, seed=config.seed)
    return data


def init_model(config: TrainConfig, data: CifarData, mean, std, device: torch.device, *,
                model: nn.Module | None = None, data_init: bool = True) -> nn.Module:
    """The model a run starts from: seeded initialisation of ``config.model`` (or ``model`` as given),
    the optional patch-whitening of its stem from the training images, moved to ``device``."""
    torch.manual_seed(config.seed)  # the model's initialisation
    if model is None:
        model = create_model(config.model, num_classes=data.num_classes, **config.model_kwargs)
    if config.whiten and data_init:
        if not hasattr(model, "init_whiten"):
            raise ValueError(f"--whiten: model {config.model} has no patch-whitening stem (use fast or fast_small)")
        model.init_whiten(data.train.images[:5000], mean=mean, std=std)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA (one launch for all parameters); foreach elsewhere
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    params = model.parameters()
    if config.optimizer == "muon":
        from .optim import MuonSGD

        return MuonSGD(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                       muon_lr=config.muon_lr, muon_momentum=config.muon_momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.optimizer == "nesterov", **fast)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-batch schedule over ``epochs * steps_per_epoch`` steps."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        # each group peaks at its own learning rate (MuonSGD has two); its momentum is left alone
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total, pct_start=config.warmup,
                                                   cycle_momentum=config.optimizer != "muon")
    warm = max(1, int(config.warmup * total))
    if config.schedule == "linear":
        def factor(step: int) -> float:
            return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    elif config.schedule == "cosine":
        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def train_one_epoch(model: nn.Module, batches, optimizer, scheduler, *, device: torch.device,
                    label_smoothing: float = 0.0, grad_clip: float = 0.0, grad_clip_mode: str = "value",
                    amp: bool = True, bar=None, log_every: int = 20) -> dict:
    """One pass over ``batches`` (``(images, labels)`` already on ``device``), stepping the scheduler per
    batch; returns the mean training loss and accuracy and the learning rate each step used."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    lrs = []
    for step, (x, y) in enumerate(batches):
        with autocast_for(device, amp):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            if grad_clip_mode == "value":
                nn.utils.clip_grad_value_(model.parameters(), grad_clip)
            else:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
        # accumulate on the device: no host synchronisation inside the step
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:  # the one read-back, at logging points only
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lrs[-1]:.2e}", refresh=False)
    if seen == 0:
        raise ValueError("the training loader yielded no batch")
    return {"train_loss": loss_sum.item() / seen, "train_top1": correct.item() / seen,
            "lrs": lrs, "images": seen}


def _progress(total: int, desc: str, enabled: bool, unit: str = "batch"):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)


# seconds: the epoch's wall time (training and evaluation); train_seconds: training time so far, without
# evaluation, which is the clock of time-to-accuracy
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "seconds",
              "train_seconds", "images_per_s")


def _write_history(out_dir: Path, records: list[dict]) -> None:
    slim = [{k: v for k, v in r.items() if k != "lrs"} for r in records]
    ckpt_mod.atomic_write_text(out_dir / "history.json", json.dumps(slim, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in slim:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    ckpt_mod.atomic_write_text(out_dir / "metrics.csv", buf.getvalue())


def epoch_line(record: dict) -> str:
    """The notebook's per-epoch line."""
    return (f"Epoch {record['epoch']}, last_lr: {record['lr']:.5f}, train_loss: {record['train_loss']:.4f}, "
            f"val_loss: {record['val_loss']:.4f}, val_acc: {record['val_top1']:.4f}")


def _tensorboard_writer(out: Path | None):
    if out is None:
        raise ValueError("--tensorboard needs a run directory (--out)")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'cifar-resnet[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(config: TrainConfig, data: CifarData | None = None, out_dir: str | Path | None = None, *,
        resume: str | Path | None = None, progress: bool | None = None,
        log: Callable[[str], None] | None = print,
        on_epoch_end: Callable[[dict], None] | None = None,
        model: nn.Module | None = None, tensorboard: bool = False) -> History:
    """Train ``config.model`` on ``data`` (``prepare_data(config)`` when omitted).

    ``out_dir``: the run directory (nothing is written when None). ``resume``: a ``last.pt`` to continue
    from; its config and data set-up are used, ``config`` must equal the checkpoint's. ``model``: train
    this module instead of building ``config.model`` (the notebook adapter passes its own).
    ``on_epoch_end(record)`` is called after each epoch's files are written. ``tensorboard``: also write
    the per-epoch scalars under ``out_dir/tensorboard`` (needs the ``tensorboard`` extra).
    """
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    progress = sys.stderr.isatty() if progress is None else progress
    say = log or (lambda s: None)
    state = None
    if resume is not None:
        state = ckpt_mod.load_checkpoint(resume)
        if "optimizer" not in state or "epoch" not in state:
            raise ckpt_mod.CheckpointError(f"{resume} holds weights only (a best.pt?); resume from last.pt")
        saved = TrainConfig.from_dict(state["config"])
        if dataclasses.replace(saved, device=config.device) != config:
            raise ValueError(f"{resume} was written with another configuration; resume continues it as saved")
        if state["epoch"] >= config.epochs:
            raise ValueError(f"{resume} is from a finished run ({state['epoch']} of {config.epochs} epochs); "
                             "nothing to resume")
    if data is None:
        data = prepare_data(config)
    eval_name, eval_split = data.eval_split()
    if state is not None and list(state["classes"]) != list(data.classes):
        raise ValueError(f"{resume} was trained on other classes than {data.source} has")

    # normalisation statistics come from the training images (the checkpoint's when resuming)
    mean, std = (tuple(state["mean"]), tuple(state["std"])) if state else channel_stats(data.train.images)
    train_loader = CifarLoader(data.train, config.batch_size, mean=mean, std=std, device=device, train=True,
                               aug=config.augment, seed=config.seed)
    eval_loader = CifarLoader(eval_split, config.eval_batch_size, mean=mean, std=std, device=device)
    if len(train_loader) == 0:
        raise ValueError(f"{len(data.train)} training images is fewer than one batch of {config.batch_size}")

    model = init_model(config, data, mean, std, device, model=model, data_init=state is None)
    optimizer = build_optimizer(config, model, device)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    records: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        records = list(state["history"])
        start_epoch = state["epoch"]
        out_dir = Path(resume).parent if out_dir is None else out_dir
        say(f"resuming {resume} at epoch {start_epoch + 1} of {config.epochs}")
    best_top1 = max((r["val_top1"] for r in records), default=-1.0)
    train_seconds_total = records[-1].get("train_seconds", 0.0) if records else 0.0
    train_model = torch.compile(model) if config.compile else model

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_mod.atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
    writer = _tensorboard_writer(out) if tensorboard else None
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{config.model} ({n_params:,} parameters) on {device}; {len(data.train)} training images, "
        f"{len(eval_split)} {eval_name} images, {config.epochs} epochs of {len(train_loader)} steps")

    base = {
        "format": ckpt_mod.FORMAT,
        "model_name": getattr(model, "model_name", config.model),
        "model_kwargs": getattr(model, "model_kwargs", {"num_classes": data.num_classes, **config.model_kwargs}),
        "classes": list(data.classes),
        "coarse_classes": list(data.coarse_classes) if data.coarse_classes else None,
        "dataset": data.name,
        "mean": list(mean),
        "std": list(std),
        "config": config.to_dict(),
        "eval_split": eval_name,
    }
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        train_loader.set_epoch(epoch)
        bar = _progress(len(train_loader), f"epoch {epoch + 1}/{config.epochs}", progress)
        try:
            rec = train_one_epoch(train_model, train_loader, optimizer, scheduler, device=device,
                                  label_smoothing=config.label_smoothing, grad_clip=config.grad_clip,
                                  grad_clip_mode=config.grad_clip_mode, amp=config.amp, bar=bar)
        finally:
            if bar is not None:
                bar.close()
        train_seconds = time.perf_counter() - t0
        train_seconds_total += train_seconds
        logits, labels = collect_logits(model, eval_loader, tta=config.tta, translate=config.tta_translate,
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
        say(epoch_line(record))
        if out is not None:
            body = {**base, "model": ckpt_mod.unwrap(model).state_dict(), "epoch": epoch + 1,
                    "history": records}
            if m["top1"] > best_top1:
                best_top1 = m["top1"]
                ckpt_mod.atomic_save({**body, "best": True}, out / "best.pt")
            ckpt_mod.atomic_save({**body, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "rng": _rng_state()}, out / "last.pt")
            _write_history(out, records)
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
    return History(records=records, model=model, seconds=seconds, out_dir=out)


__all__ = [
    "PRESETS",
    "DataError",
    "History",
    "TrainConfig",
    "epoch_line",
    "fit",
    "get_preset",
    "prepare_data",
    "resolve_device",
    "train_one_epoch",
]
