"""Processes that train one model together: the process group, rank helpers and reductions.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup` joins the process group (NCCL on CUDA, one GPU per
local rank; gloo on the CPU) and returns a :class:`Dist`; in a plain process it returns the one-process
``Dist`` and every helper is a no-op, so the training loop calls them unconditionally. Agreements between
the ranks (:meth:`Dist.agree`) go through a gloo group on the CPU: asking costs no GPU synchronisation.
:func:`data_parallel` wraps a model for training; ``--sync-bn`` (:class:`SyncBatchNorm2d`) normalises
with the global batch's statistics, on a CPU as well (PyTorch's ``nn.SyncBatchNorm`` runs on GPUs only).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import nn

__all__ = ["Dist", "SyncBatchNorm2d", "convert_sync_batchnorm", "data_parallel", "setup", "teardown"]


@dataclass
class Dist:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: object = field(default=None, repr=False)  # the gloo group for agreements (None: one process)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (the first ``n % world_size`` ranks get one more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank -> true on every rank (a logical OR over the ranks)."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=self.control)
        return tuple(bool(v) for v in t.tolist())

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (a CPU tensor) replaced by their maximum over the ranks (in place; returned)."""
        if self.enabled:
            tdist.all_reduce(values, op=tdist.ReduceOp.MAX, group=self.control)
        return values

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place; returned for convenience)."""
        if self.enabled:
            tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
        return values

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The ranks' ``rows`` (first dimension may differ by rank) concatenated in rank order, on every
        rank: what one process computing all the rows would hold."""
        if not self.enabled:
            return rows
        sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(self.world_size)]
        tdist.all_gather(sizes, torch.tensor([len(rows)], device=rows.device))
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) on every rank, so that all evaluate one model."""
        if self.enabled:
            for b in model.buffers():
                tdist.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier(group=self.control)


TIMEOUT = datetime.timedelta(minutes=10)


def _store(rank: int, world: int) -> tdist.Store:
    """torchrun's key-value store, with a prefix of its own for each restart of the workers: keys that
    workers of an earlier attempt published (their addresses) must not be read by the new ones."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    store = tdist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=TIMEOUT,
    )
    return tdist.PrefixStore(f"cifar-resnet/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def setup(device: str) -> tuple[Dist, str]:
    """Join torchrun's process group when there is one; returns the Dist and the device to train on
    (``cuda:LOCAL_RANK`` for ``auto``/``cuda`` under torchrun on a GPU machine)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                "use --nproc-per-node at most the number of GPUs"
            )
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    elif device == "auto":
        device = "cpu"
    if not tdist.is_initialized():
        tdist.init_process_group(
            "nccl" if use_cuda else "gloo", store=_store(rank, world), rank=rank, world_size=world, timeout=TIMEOUT
        )
    control = tdist.new_group(backend="gloo") if use_cuda else tdist.group.WORLD
    return Dist(rank=rank, world_size=world, local_rank=local, control=control), device


def teardown(dist: Dist) -> None:
    """Leave the process group, and let go of it: gloo's worker threads end only when the last reference to
    the group is dropped, and a thread still alive when the interpreter shuts down can abort the process
    (``terminate called without an active exception``) as it frees a finished all-reduce's tensors, which
    needs the interpreter. ``dist.control`` held that reference until exit."""
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
    dist.control = None


def data_parallel(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (gradients averaged over the ranks at each
    backward pass); ``model`` itself in one process."""
    if not dist.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of each rank's input is the sum over the ranks of
    the gradients of the output (every rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        tdist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch, summed over the ranks
    (two passes: the mean, then the mean squared deviation from it, as one process computes them). The
    sums go through autograd-aware all-reduces, so gradients flow to every rank's images as they would
    in one process. With one process, or in eval mode, it is ``BatchNorm2d``; its state dict is the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()
        count = torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device)
        total = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n  # biased, as BN normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of ``model`` replaced by a :class:`SyncBatchNorm2d` holding the same
    parameters and buffers (in place; returns ``model``)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=child.weight.device if child.affine else None,
            )
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child)
    return model
