"""Metrics over a loader.

``collect_logits`` runs a model over a loader once (optionally with flip test-time augmentation) and
returns the logits and labels on the CPU; every metric is then computed from those two tensors, so the
numbers printed during training, by ``cifar-resnet evaluate`` and in reports agree by construction.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; on CPU and MPS full precision (bf16 convolutions on CPUs without
    AMX are slower than fp32, and the result is what a user of this machine expects)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def collect_logits(model: nn.Module, loader, *, tta: bool = False, amp: bool = True,
                   progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (N, C) and int64 labels (N,) on the CPU, in loader order.

    With ``tta`` the logits are the mean of the image's and its mirror image's (flip test-time
    augmentation, as in airbench and the CIFAR speedruns).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs, labels = [], []
    try:
        for x, y in loader:
            with autocast_for(device, amp):
                logits = model(x)
                if tta:
                    logits = 0.5 * (logits + model(x.flip(-1)))
            outs.append(logits.float())
            labels.append(y)
            if progress is not None:
                progress.update(len(y))
    finally:
        model.train(was_training)
    # one device->host transfer at the end, not one per batch
    return torch.cat(outs).cpu(), torch.cat(labels).cpu()


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): is the label among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def basic_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy loss, top-1 and top-5 accuracy (fractions in [0, 1]) and the count."""
    if len(labels) == 0:
        raise ValueError("cannot evaluate on an empty split")
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "top1": topk_correct(logits, labels, 1).float().mean().item(),
        "top5": topk_correct(logits, labels, 5).float().mean().item(),
        "n": int(len(labels)),
    }


def evaluate_model(model: nn.Module, loader, *, tta: bool = False, amp: bool = True) -> dict:
    """``basic_metrics`` of a model over a loader."""
    logits, labels = collect_logits(model, loader, tta=tta, amp=amp)
    return basic_metrics(logits, labels)
