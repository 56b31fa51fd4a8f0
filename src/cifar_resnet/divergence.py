"""A diverged run stops loudly: :class:`Divergence` is the one judge of whether a run's loss or weights
became non-finite, and :class:`TrainingDiverged` what it raises, naming the first bad step, its learning
rate and the last good checkpoint. The loss is checked on the host only when asked (a check is a host
synchronisation on a GPU), and the ranks agree on the answer in the exchange the loop makes anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .distributed import Dist

__all__ = ["Divergence", "TrainingDiverged"]


class TrainingDiverged(ValueError):
    """The loss (or the weights) became non-finite; nothing was written after it happened."""


class Divergence:
    """The one judge of a diverged run: this rank's losses since the last check and the model's weights,
    checked when asked, agreed over the ranks in the same exchange as the loop's own flags, and
    :class:`TrainingDiverged` raised naming the first bad step, its learning rate and the last good
    checkpoint (written before it went bad: nothing is written after)."""

    def __init__(self, dist: Dist, model: nn.Module, last_good: tuple[Path, str] | None):
        self.dist, self.model = dist, model
        self.last_good = last_good  # (path, "epoch e, step s") of the last checkpoint written
        self.epoch, self.lrs, self.losses, self.unchecked_from = 0, [], [], 0

    def start(self, epoch: int, stats) -> None:
        """A new epoch, from step ``stats.first_step`` on; ``stats.lrs``: each step's learning rate."""
        self.epoch, self.lrs, self.losses, self.unchecked_from = epoch, stats.lrs, [], stats.first_step

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def written(self, path: Path, where: str) -> None:
        """A checkpoint was written at ``where`` (its weights were checked, or it ends an epoch)."""
        self.last_good = (path, where)

    def agree(self, *flags: bool, losses: bool = True, weights_at: int | None = None) -> tuple[bool, ...]:
        """``flags`` agreed over the ranks (true on any rank: true) together with the checks: of the losses
        since the last check (``losses``: a host synchronisation) and, with ``weights_at`` (the step just
        taken), of the weights; raises :class:`TrainingDiverged` when any rank found one not finite."""
        window_start = self.unchecked_from
        bad = self._first_bad_loss() if losses else None
        weights_bad = weights_at is not None and not self._weights_finite()
        *agreed, loss_bad, weights_bad = self.dist.agree(*flags, bad is not None, weights_bad)
        if loss_bad:  # another rank's bad loss: this rank names the first step of its unchecked window
            raise self._error(window_start if bad is None else bad, "the loss is not finite")
        if weights_bad:
            raise self._error(weights_at, "the weights are not finite")
        return tuple(agreed)

    def _first_bad_loss(self) -> int | None:
        """The first step since the last check whose loss is not finite; those steps are then checked."""
        bad = None
        if self.losses:
            nonfinite = (~torch.isfinite(torch.stack(self.losses))).nonzero()
            bad = self.unchecked_from + int(nonfinite[0]) if len(nonfinite) else None
        self.unchecked_from += len(self.losses)
        self.losses = []
        return bad

    def _weights_finite(self) -> bool:
        """Every parameter and floating buffer (BN running statistics included) is finite."""
        state = self.model.state_dict().values()
        return all(bool(torch.isfinite(v).all()) for v in state if v.is_floating_point())

    def _error(self, step: int, what: str) -> TrainingDiverged:
        good = (
            f"the last good checkpoint is {self.last_good[0]} ({self.last_good[1]})"
            if self.last_good
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"training diverged: {what} at epoch {self.epoch + 1}, step {step + 1} (lr {self.lrs[step]:.4g}); "
            f"{good}; lower --lr or --grad-clip"
        )
