"""Muon for the hidden convolution filters, Nesterov SGD for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; used by the airbench
CIFAR-10 speedruns) replaces each filter bank's momentum update by the nearest semi-orthogonal matrix
(:func:`zeropower`), so that every direction of the update moves at the same rate. :class:`MuonSGD` says
why not ``torch.optim.Muon`` and which parameters get which rule. :func:`build_optimizer` and
:func:`build_scheduler` make the optimizer and the per-batch learning-rate schedule a
:class:`~cifar_resnet.config.TrainConfig` asks for (training and ``lr-find`` share them);
:class:`ProgressSchedule` is the same schedule over a budget run's progress, whose length may change.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["MuonSGD", "ProgressSchedule", "build_optimizer", "build_scheduler", "muon_parameters", "zeropower"]

# The quintic's coefficients from the Muon write-up: they maximise the slope at zero, so that small
# singular values grow fast, at the price of converging to roughly [0.7, 1.2] rather than exactly 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def zeropower(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U @ V.T`` for ``g = U S V.T`` (2-D), by ``steps`` Newton-Schulz iterations."""
    if g.ndim != 2:
        raise ValueError(f"zeropower expects a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float() / (g.norm() + eps)  # spectral norm <= Frobenius norm = 1
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(g.dtype)


def muon_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(muon, other)``: the hidden filter banks (every >= 2-D parameter but the first and the last)
    and everything else, each in registration order."""
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = [i for i, p in enumerate(params) if p.ndim >= 2]
    hidden = set(matrices[1:-1])
    return ([p for i, p in enumerate(params) if i in hidden], [p for i, p in enumerate(params) if i not in hidden])


class MuonSGD(torch.optim.Optimizer):
    """Group 0: Nesterov SGD with weight decay; group 1: Muon (lr: the step's size relative to the weights);
    with ``bn_bias_lr`` != 1, group 2: the batch-norm biases, by Nesterov SGD at ``lr * bn_bias_lr`` and
    weight decay ``weight_decay / bn_bias_lr`` (the same decay per step; airbench trains them 64x faster).

    Muon gets every parameter with two or more dimensions except the network's first (it reads pixels)
    and last (the classifier) (:func:`muon_parameters`). Unlike ``torch.optim.Muon`` (2-D parameters
    only), it takes convolution filters and rescales each bank to Frobenius norm ``sqrt(out)`` before its
    step, as airbench does: filters followed by batch normalisation are scale-invariant, so without it
    their norm, and with it the effective step size, would drift; weight decay is not applied to them.
    One optimizer with two groups keeps one schedule and one state dict, so resume stays exact.

    ``MuonSGD(model, lr=..., momentum=..., weight_decay=..., muon_lr=..., muon_momentum=...)``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        muon_lr: float,
        muon_momentum: float,
        ns_steps: int = 5,
        bn_bias_lr: float = 1.0,
    ) -> None:
        if lr <= 0 or muon_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={lr}, muon_lr={muon_lr}")
        if not (0 <= momentum < 1 and 0 <= muon_momentum < 1):
            raise ValueError(f"momenta must be in [0, 1), got {momentum}, {muon_momentum}")
        muon, other = muon_parameters(model)
        if not muon:
            raise ValueError(
                "this model has no hidden filter banks for Muon (it needs at least three "
                "parameters with two or more dimensions)"
            )
        if bn_bias_lr <= 0:
            raise ValueError(f"bn_bias_lr must be > 0, got {bn_bias_lr}")
        bn_biases = []
        if bn_bias_lr != 1.0:
            ids = {
                id(m.bias)
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
            }
            bn_biases = [p for p in other if id(p) in ids]
            other = [p for p in other if id(p) not in ids]
        # the SGD group first: training logs group 0's learning rate, which is then the --lr one
        groups = [
            {"params": other, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "muon": False},
            {"params": muon, "lr": muon_lr, "momentum": muon_momentum, "weight_decay": 0.0, "muon": True},
        ]
        if bn_biases:
            groups.append(
                {
                    "params": bn_biases,
                    "lr": lr * bn_bias_lr,
                    "momentum": momentum,
                    "weight_decay": weight_decay / bn_bias_lr,
                    "muon": False,
                }
            )
        super().__init__(groups, {"ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if group["muon"]:
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads)
                for p, g, buf in zip(params, grads, bufs):
                    update = g.add(buf, alpha=mom)  # Nesterov
                    rows = p.shape[0]
                    p.mul_(rows**0.5 / p.norm().clamp_min(1e-12))
                    p.add_(zeropower(update.reshape(rows, -1), group["ns_steps"]).view_as(p), alpha=-lr)
            else:
                if wd:
                    grads = torch._foreach_add(grads, params, alpha=wd)
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads)
                updates = torch._foreach_add(grads, bufs, alpha=mom)  # Nesterov
                torch._foreach_add_(params, updates, alpha=-lr)
        return loss


def build_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of ``config.optimizer`` over ``model``'s parameters, at ``config.lr``."""
    if config.optimizer == "muon":
        return MuonSGD(
            model,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            muon_lr=config.muon_lr,
            muon_momentum=config.muon_momentum,
            bn_bias_lr=config.bn_bias_lr,
        )
    # fused kernels on CUDA (one launch for all parameters); foreach elsewhere
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.optimizer == "nesterov",
        **fast,
    )


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int | None = None
):
    """A per-batch schedule over ``total_steps`` steps (default ``epochs * steps_per_epoch``; a run whose
    epochs differ in length passes their sum)."""
    total = config.epochs * steps_per_epoch if total_steps is None else total_steps
    if config.schedule == "onecycle":
        # each group peaks at its own learning rate (MuonSGD has two); its momentum is left alone
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=config.warmup,
            cycle_momentum=config.optimizer != "muon",
        )
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


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class ProgressSchedule:
    """The per-batch schedule of a run whose length a budget may change while it runs, defined over the
    run's progress ``p`` (0 at the start, 1 at the end) rather than over a fixed number of steps.

    Each step moves progress on by ``rate`` and takes the learning rate at the middle of its share; a
    re-plan (:meth:`replan`) sets ``rate = (1 - p) / steps_left``, so what remains of the schedule is
    stretched or shortened over the steps that remain and the learning rate carries on from where it
    was (its slope changes, never its value). The shapes are :func:`build_scheduler`'s: ``linear`` and
    ``cosine`` after a linear warm-up over ``config.warmup``, ``constant``, and ``onecycle`` (cosine up
    from a 25th of the peak, down to a 25,000th, momentum cycled between 0.95 and 0.85 except for Muon,
    as ``OneCycleLR``). Its state (progress, rate) is what a checkpoint keeps for an exact resume."""

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
        if config.schedule not in ("linear", "cosine", "constant", "onecycle"):
            raise ValueError(f"unknown schedule {config.schedule!r}")
        self.optimizer, self.schedule, self.warmup = optimizer, config.schedule, config.warmup
        self.peaks = [g["lr"] for g in optimizer.param_groups]
        self.cycle_momentum = config.schedule == "onecycle" and config.optimizer != "muon"
        self.progress, self.rate = 0.0, 0.0
        self.replan(total_steps)

    def factor(self, p: float) -> float:
        """The learning rate at progress ``p``, as a fraction of the peak."""
        w = self.warmup
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "onecycle":
            start = 1 / 25
            if p < w:
                return _cos_anneal(start, 1.0, p / w)
            return _cos_anneal(1.0, start / 1e4, (p - w) / (1 - w))
        if p < w:
            return p / w
        if self.schedule == "linear":
            return max(0.0, (1 - p) / (1 - w))
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (p - w) / (1 - w))))

    def replan(self, steps_left: int) -> None:
        """Spread what remains of the schedule over ``steps_left`` steps from here."""
        if steps_left < 1:
            raise ValueError(f"a schedule needs at least one step left, got {steps_left}")
        self.rate = (1.0 - self.progress) / steps_left
        self._apply()

    def step(self) -> None:
        self.progress = min(1.0, self.progress + self.rate)
        self._apply()

    def _apply(self) -> None:
        p = min(1.0, self.progress + self.rate / 2)  # the middle of the step about to be taken
        f = self.factor(p)
        for group, peak in zip(self.optimizer.param_groups, self.peaks):
            group["lr"] = peak * f
            if self.cycle_momentum:
                w = self.warmup
                m = _cos_anneal(0.95, 0.85, p / w) if p < w else _cos_anneal(0.85, 0.95, (p - w) / (1 - w))
                if "betas" in group:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"progress": self.progress, "rate": self.rate}

    def load_state_dict(self, state: dict) -> None:
        self.progress, self.rate = float(state["progress"]), float(state["rate"])
        self._apply()
