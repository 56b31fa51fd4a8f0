"""The checkpoint dict and every file of a run directory: one builder, one reader, one atomic write.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: nothing in it is unpickled as code. It holds everything needed to
rebuild and use the model (model name and arguments, class names, normalisation statistics, the config)
and, for ``last.pt``, everything needed to resume training exactly (optimizer, scheduler, epoch, RNG
state). :func:`make_checkpoint` is the only place that lays the dict out and :func:`load_checkpoint` the
only place that reads one.

A run directory (:class:`RunDir`) holds ``config.json``, ``history.json`` (the per-epoch records),
``metrics.csv`` (the same as a table), ``last.pt`` (each epoch, enough to resume), ``best.pt`` (best
validation top-1) and, when asked for, ``tensorboard/`` and ``plots/``. Every file is written by
:func:`atomic_write` (a temporary file in the same folder, then a rename), so a reader (``cifar-resnet
plot`` of a run in progress, a crash, a full disk) never sees half a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .models import create_model

__all__ = [
    "FORMAT",
    "CheckpointError",
    "RunDir",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "build_model",
    "load_checkpoint",
    "make_checkpoint",
    "payload_checksum",
    "unwrap",
]

FORMAT = "cifar-resnet/1"
REQUIRED = ("format", "model_name", "model_kwargs", "classes", "mean", "std", "model")
# what last.pt adds to the weights: enough to resume exactly ("partial": the epoch's progress when it was
# written inside an epoch, else None); a run with --drop-easy adds "example_loss", each image's last loss
TRAINING_STATE = ("optimizer", "scheduler", "rng", "partial")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked."""


# --------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``: a crash,
    a ``kill -9`` or an error never leaves half a file (the temporary file is removed). The file is
    flushed and fsynced before the rename and the folder after it, so that after a power loss ``path``
    is the old file or the new one, whole. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary files, for others to read too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


# --------------------------------------------------------------------------------------------------
# The checkpoint dict
# --------------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a ``torch.compile``d or DDP-wrapped model: save that, never the wrapper,
    so state_dict keys carry no ``_orig_mod.`` / ``module.`` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def payload_checksum(ckpt: dict) -> str:
    """SHA-256 over everything in a checkpoint but its ``checksum``: keys, tensors' dtype, shape and
    bytes, and every other value's JSON text, in a fixed order. A flipped byte anywhere in the weights,
    the optimizer state or the description changes it."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for k in sorted(value, key=str):
                digest.update(repr(k).encode())
                feed(value[k])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for v in value:
                feed(v)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed({k: v for k, v in ckpt.items() if k != "checksum"})
    return "sha256:" + digest.hexdigest()


def make_checkpoint(model: nn.Module, *, classes, coarse_classes, dataset: str, mean, std, config: dict,
                    eval_split: str, epoch: int, history: list[dict], training_state: dict | None = None) -> dict:
    """The checkpoint of ``model`` (built by ``create_model``, so it knows its name and arguments).

    ``training_state``: ``{"optimizer", "scheduler", "rng", "partial"}`` for a checkpoint that resumes
    (``last.pt``; ``partial``: how far into the epoch after ``epoch`` it was written, or None);
    without it the checkpoint is the weights and their description (``best.pt``)."""
    model = unwrap(model)
    ckpt = {
        "format": FORMAT,
        "model_name": model.model_name,
        "model_kwargs": model.model_kwargs,
        "classes": list(classes),
        "coarse_classes": list(coarse_classes) if coarse_classes else None,
        "dataset": dataset,
        "mean": list(mean),
        "std": list(std),
        "config": config,
        "eval_split": eval_split,
        "model": model.state_dict(),
        "epoch": epoch,
        "history": history,
    }
    if training_state is not None:
        missing = [k for k in TRAINING_STATE if k not in training_state]
        assert not missing, f"training state lacks {missing}"
        ckpt.update(training_state)
    ckpt["checksum"] = payload_checksum(ckpt)
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    resumable: bool = False) -> dict:
    """Load and validate a checkpoint written by this package (never unpickles arbitrary objects).

    ``resumable``: also require the training state that ``last.pt`` carries (a ``best.pt`` is refused)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-resnet checkpoint (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    # checkpoints from before the checksum existed have none and load as they are
    if "checksum" in ckpt and payload_checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"{path} is corrupt: its content does not match its checksum")
    if resumable:
        if any(k not in ckpt for k in ("optimizer", "scheduler", "rng", "epoch")):
            raise CheckpointError(f"{path} holds weights only (a best.pt?); resume from last.pt")
        if not ckpt.get("config"):
            raise CheckpointError(f"{path} holds no training configuration")
    return ckpt


def build_model(ckpt: dict, *, expect_model: str | None = None, expect_classes: int | None = None,
                source: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    name, kwargs = ckpt["model_name"], dict(ckpt["model_kwargs"])
    if expect_model is not None and expect_model != name:
        raise CheckpointError(f"{source} holds a {name} model, not {expect_model}")
    n = len(ckpt["classes"])
    if expect_classes is not None and expect_classes != n:
        raise CheckpointError(f"{source} was trained for {n} classes, but the data has {expect_classes}")
    model = create_model(name, **kwargs)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit {name}: {str(e).splitlines()[0]}") from None
    return model


# --------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------

# seconds: the epoch's wall time (training and evaluation); train_seconds: training time so far, without
# evaluation, which is the clock of time-to-accuracy
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "seconds",
              "train_seconds", "images_per_s", "train_images", "train_size", "eval_tta")


class RunDir:
    """The files of one run directory: the only code that knows their names and formats."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_json = property(lambda self: self.path / "config.json")
    history_json = property(lambda self: self.path / "history.json")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    tensorboard = property(lambda self: self.path / "tensorboard")
    plots = property(lambda self: self.path / "plots")

    def create(self) -> RunDir:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_json, json.dumps(config, indent=1) + "\n")

    def write_checkpoint(self, ckpt: dict) -> None:
        """``last.pt`` alone (a checkpoint written inside an epoch)."""
        atomic_save(ckpt, self.last)

    def write_epoch(self, ckpt: dict, *, best: bool) -> None:
        """After an epoch: ``best.pt`` when ``best`` (the checkpoint without its training state),
        ``last.pt`` (all of it), then ``history.json`` and ``metrics.csv`` from ``ckpt["history"]``."""
        if best:
            weights = {k: v for k, v in ckpt.items() if k not in (*TRAINING_STATE, "checksum")}
            weights["best"] = True
            atomic_save({**weights, "checksum": payload_checksum(weights)}, self.best)
        atomic_save(ckpt, self.last)
        self.write_history(ckpt["history"])

    def write_history(self, records: list[dict]) -> None:
        # the per-step learning rates stay in last.pt: history.json is one line of numbers per epoch
        slim = [{k: v for k, v in r.items() if k != "lrs"} for r in records]
        atomic_write_text(self.history_json, json.dumps(slim, indent=1) + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in slim:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def read_history(self) -> tuple[list[dict], dict]:
        """The per-epoch records and the config of the run, readable while the run is in progress.

        ``history.json`` gives the records (it is replaced atomically after each epoch); the per-step
        learning rates it leaves out are taken from ``last.pt`` when that is readable and covers them.
        """
        run = self.path
        if not run.is_dir():
            raise ValueError(f"{run} is not a run directory" + (" (it is a file)" if run.exists() else ""))
        if not self.history_json.is_file():
            raise ValueError(f"{run} is not a run directory (no history.json; has the first epoch finished?)")
        try:
            records = json.loads(self.history_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.history_json}: unreadable ({' '.join(str(e).split())})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) and "epoch" in r for r in records):
            raise ValueError(f"{self.history_json}: not a list of per-epoch records")
        if not records:
            raise ValueError(f"{self.history_json}: no epoch has finished yet")
        config = {}
        if self.config_json.is_file():
            try:
                config = json.loads(self.config_json.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                config = {}
        if self.last.is_file():
            try:
                lrs = {r["epoch"]: r.get("lrs") for r in load_checkpoint(self.last).get("history", [])}
            except CheckpointError:  # being replaced, or foreign: the per-epoch lr is still plotted
                lrs = {}
            if all(lrs.get(r["epoch"]) for r in records):
                records = [{**r, "lrs": lrs[r["epoch"]]} for r in records]
        return records, config
