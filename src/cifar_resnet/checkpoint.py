"""Self-describing checkpoints.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: nothing in it is unpickled as code. It holds everything needed to
rebuild and use the model (model name and arguments, class names, normalisation statistics) and, for
``last.pt``, everything needed to resume training exactly (optimizer, scheduler, epoch, RNG state).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import create_model

FORMAT = "cifar-resnet/1"
REQUIRED = ("format", "model_name", "model_kwargs", "classes", "mean", "std", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked."""


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


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same directory, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint written by this package (never unpickles arbitrary objects)."""
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
