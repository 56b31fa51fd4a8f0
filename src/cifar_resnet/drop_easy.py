"""``--drop-easy``: train the later epochs on the images the model still gets most wrong.

:class:`HardExamples` keeps each training image's loss at its last training step and from epoch
``config.drop_start`` on picks the images of highest loss that an epoch trains on; a checkpoint keeps
those losses, and a mid-epoch one the epoch's subset, so that a resumed run picks the same images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .distributed import Dist

__all__ = ["HardExamples"]


class HardExamples:
    """``--drop-easy``: each training image's loss at its last training step (inf: not seen yet), and from
    epoch ``config.drop_start`` on, the ``keep`` images of highest loss that the epoch trains on. Off
    (every method a no-op) when ``config.drop_easy`` is 0."""

    def __init__(self, config: TrainConfig, n_train: int, dist: Dist, dev: torch.device, saved: torch.Tensor | None):
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
