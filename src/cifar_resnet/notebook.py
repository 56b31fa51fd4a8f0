"""The seed notebook's Python API, as thin adapters over the package's engine.

People paste notebook code; after ``from cifar_resnet.notebook import *`` it runs unchanged (``ResNet``,
``BaseModel``, ``get_default_device``, ``to_device``, ``DeviceDataLoader``, ``evaluate``, ``fit``,
``plot_loss``, ``predict_image``). The names are the notebook's: this module's ``fit(epochs, train_dl,
...)`` and ``evaluate(model, loader)`` are not :func:`cifar_resnet.fit` (``fit(config, data)``) nor
``cifar-resnet evaluate``. Its ``fit`` runs :func:`cifar_resnet.engine.train_one_epoch` and evaluates
with :func:`cifar_resnet.engine.collect_logits`: nothing here is a second loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import CIFAR100_CLASSES
from .engine import StepOptions, collect_logits, epoch_line, train_one_epoch
from .inference import predict_tensor
from .metrics import basic_metrics
from .models import create_model
from .plots import plot_accuracy as plot_accuracies
from .plots import plot_loss
from .plots import plot_lr as plot_lrs

__all__ = [
    "BaseModel",
    "DeviceDataLoader",
    "ResNet",
    "accuracy",
    "evaluate",
    "fit",
    "get_default_device",
    "get_lr",
    "plot_accuracies",
    "plot_loss",
    "plot_lrs",
    "predict_image",
    "to_device",
]


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _, preds = torch.max(outputs, dim=1)
    return torch.tensor(torch.sum(preds == labels).item() / len(preds))


class BaseModel(nn.Module):
    """The notebook's ``ImageClassificationBase``-style mix-in: per-batch steps and the epoch log line."""

    def training_step(self, batch):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch):
        images, labels = batch
        out = self(images)
        return {"val_loss": F.cross_entropy(out, labels).detach(), "val_acc": accuracy(out, labels)}

    def validation_epoch_end(self, outputs):
        epoch_loss = torch.stack([x["val_loss"] for x in outputs]).mean()
        epoch_acc = torch.stack([x["val_acc"] for x in outputs]).mean()
        return {"val_loss": epoch_loss.item(), "val_acc": epoch_acc.item()}

    def epoch_end(self, epoch, result):
        print(epoch_line(epoch, result["lrs"][-1], result["train_loss"], result["val_loss"], result["val_acc"]))


class ResNet(BaseModel):
    """The notebook's network, built as the notebook builds it: ``ResNet(in_channels, num_classes)``.

    It is ``seed_resnet`` from the registry (the same layers and weights layout) with the notebook's
    methods. ``classes``: the class names ``predict_image`` answers with (CIFAR-100's for 100 classes)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 100, classes: Sequence[str] | None = None):
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"the notebook's network reads RGB images (in_channels 3), got {in_channels}")
        self.net = create_model("seed_resnet", num_classes=num_classes)
        self.classes = (
            list(classes) if classes is not None else (list(CIFAR100_CLASSES) if num_classes == 100 else None)
        )

    def forward(self, x):
        return self.net(x)


def get_default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def to_device(data, device):
    """Move a tensor, a model, or a (nested) list/tuple of tensors to ``device``."""
    if isinstance(data, (list, tuple)):
        return [to_device(x, device) for x in data]
    return data.to(device, non_blocking=True)


class DeviceDataLoader:
    """Wrap a data loader to move its batches to a device (the notebook's helper)."""

    def __init__(self, dl, device):
        self.dl = dl
        self.device = device

    def __iter__(self):
        for b in self.dl:
            yield to_device(b, self.device)

    def __len__(self):
        return len(self.dl)


def _on_device(batches: Iterable, device: torch.device):
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, val_loader) -> dict:
    """``{'val_loss', 'val_acc'}`` over a loader, as the notebook's ``evaluate`` returns."""
    device = _device_of(model)
    logits, labels = collect_logits(model, _on_device(val_loader, device))  # fp32, as the notebook
    m = basic_metrics(logits, labels)
    return {"val_loss": m["loss"], "val_acc": m["top1"]}


def get_lr(optimizer) -> float:
    for group in optimizer.param_groups:
        return group["lr"]


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def fit(
    epochs,
    train_dl,
    test_dl,
    model,
    optimizer,
    max_lr,
    grad_clip=None,
    weight_decay=0,
    scheduler=torch.optim.lr_scheduler.OneCycleLR,
):
    """The notebook's ``fit``: returns a list of per-epoch dicts with ``lrs``, ``train_loss``, ``val_loss``,
    ``val_acc``; prints the notebook's line through ``model.epoch_end``.

    ``optimizer`` and ``scheduler`` may be classes (``torch.optim.Adam``, ``OneCycleLR``), built here as the
    notebook does (``optimizer(params, max_lr, weight_decay=...)``, ``scheduler(opt, max_lr, epochs=...,
    steps_per_epoch=len(train_dl))``, stepped every batch), or ready-made instances.
    """
    device = _device_of(model)
    if isinstance(optimizer, type) or not isinstance(optimizer, torch.optim.Optimizer):
        kwargs = {"weight_decay": weight_decay} if _takes(optimizer, "weight_decay") else {}
        optimizer = optimizer(model.parameters(), max_lr, **kwargs)
    if isinstance(scheduler, type) or not hasattr(scheduler, "step"):
        scheduler = scheduler(optimizer, max_lr, epochs=epochs, steps_per_epoch=len(train_dl))
    history = []
    for epoch in range(epochs):
        rec = train_one_epoch(
            model,
            _on_device(train_dl, device),
            optimizer,
            scheduler,
            StepOptions(grad_clip=grad_clip or 0.0, grad_clip_mode="value"),
        )  # fp32
        result = evaluate(model, test_dl)
        result["train_loss"] = rec["train_loss"]
        result["lrs"] = rec["lrs"]
        if hasattr(model, "epoch_end"):
            model.epoch_end(epoch, result)
        history.append(result)
    return history


@torch.no_grad()
def predict_image(img: torch.Tensor, model: nn.Module, classes: Sequence[str] | None = None) -> str:
    """Class name of one normalised (3, 32, 32) image tensor, as the notebook's ``predict_image``
    (probabilities from :func:`cifar_resnet.inference.predict_tensor`)."""
    if img.ndim != 3:
        raise ValueError(f"predict_image takes one (C, H, W) image tensor, got shape {tuple(img.shape)}")
    names = classes if classes is not None else getattr(model, "classes", None) or CIFAR100_CLASSES
    probs = predict_tensor(model, img)
    return names[int(probs.argmax(dim=1)[0])]
