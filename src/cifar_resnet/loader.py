"""Batches on the training device, from one uint8 copy of the images.

``CifarLoader`` keeps a split's images on the device as one uint8 tensor, shuffles with a device-side
permutation, augments whole batches (:mod:`cifar_resnet.augment`) and converts to normalised floats batch
by batch: no float copy of the whole set, no worker process. Its randomness is a function of
``(seed, epoch)``, so ``set_epoch(e, step=k)`` resumes exactly the batches an uninterrupted run sees;
``set_subset`` restricts the epochs that follow to some images (``--drop-easy``). Under torchrun every
rank draws the same global batch and keeps its own contiguous slice of it (``rank``, ``world_size``), so
global step ``k`` sees the same images, augmented the same way, however many processes share it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from . import augment
from .augment import NO_AUGMENT, Augment
from .data import Split

__all__ = ["CifarLoader"]


def _epoch_seed(seed: int, epoch: int) -> int:
    # A fixed odd multiplier spreads (seed, epoch) pairs over the 63-bit seed space without collisions
    # for any realistic number of epochs.
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 1) % (2**63)


class CifarLoader:
    """Iterate over ``(images, labels)`` batches of a :class:`~cifar_resnet.data.Split`.

    ``images`` come out as float NCHW tensors in channels_last memory (``dtype``, normalised with
    ``mean``/``std`` given in [0, 1] units), ``labels`` as int64, both on ``device``.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        mean,
        std,
        device: torch.device | str = "cpu",
        train: bool = False,
        aug: Augment | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if world_size > 1 and (batch_size % world_size or not train):
            raise ValueError(
                f"the batch of {batch_size} images cannot be shared by {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        self.rank, self.world_size = rank, world_size
        self.start_step = 0
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.aug = (aug or Augment()) if train else NO_AUGMENT
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.dtype = dtype
        self.epoch = 0
        self.subset: torch.Tensor | None = None
        self.batch_indices: torch.Tensor | None = None
        images = np.ascontiguousarray(split.images)
        # pin the host copy before the one transfer so it can overlap; on CPU this is the tensor itself
        host = torch.from_numpy(images)
        if self.device.type == "cuda":
            host = host.pin_memory()
        self.images = host.to(self.device, non_blocking=True)  # (N, S, S, 3) uint8, the only copy
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        # normalise(x/255) == x * scale + shift: one fused multiply-add in the first float conversion,
        # on the NHWC batch seen as (N, H*W*C) rows, with scale and shift tiled to one whole image: a
        # contiguous, vectorised op (broadcasting 3-vectors over the channel axis makes an inner loop of
        # length 3, which is much slower on the CPU)
        pixels = images.shape[1] * images.shape[2]
        self._scale = (1.0 / (255.0 * std_t)).repeat(pixels)
        self._shift = (-mean_t / std_t).repeat(pixels)
        self._cutout_fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8, device=self.device)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)
        self._flip_base = torch.rand(len(self.labels), generator=self._gen, device=self.device) < 0.5

    def __len__(self) -> int:
        n = len(self.labels) if self.subset is None else len(self.subset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_subset(self, indices: torch.Tensor | None) -> None:
        """Train on these images only (indices into the split), shuffled among themselves, from the next
        iteration on; None: all of them. Each image keeps its own alternating-flip phase."""
        if indices is not None:
            if not self.train:
                raise ValueError("a subset is for training loaders")
            indices = torch.as_tensor(indices, dtype=torch.int64).to(self.device)
            if indices.ndim != 1 or (
                len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < len(self.labels)
            ):
                raise ValueError(f"subset indices must be a 1-d tensor of indices below {len(self.labels)}")
        self.subset = indices

    def fork(self) -> CifarLoader:
        """A copy that shares the images but draws from a random generator of its own: iterating it (a
        budget's timing steps) leaves this loader's draws untouched."""
        twin = copy.copy(self)
        twin._gen = torch.Generator(device=self.device)
        return twin

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its step ``step`` on."""
        self.epoch, self.start_step = epoch, step

    def normalise(self, images_nhwc_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels_last memory, no copy before the conversion).

        Normalising before the permute runs on contiguous memory, which is faster on the CPU than the same
        op on the permuted (channels_last) view."""
        x = images_nhwc_uint8
        x = torch.addcmul(self._shift, x.reshape(len(x), -1).to(torch.float32), self._scale).view(x.shape)
        return x.to(self.dtype).permute(0, 3, 1, 2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels) if self.subset is None else len(self.subset)
        gen = self._gen
        if self.train:
            gen.manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen, device=self.device)
            if self.subset is not None:
                order = self.subset[order]
        else:
            order = None
        aug = self.aug
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share) if self.world_size > 1 else slice(None)
        for step, start in enumerate(range(0, len(self) * self.batch_size, self.batch_size)):
            end = min(start + self.batch_size, n)
            idx = order[start:end] if order is not None else slice(start, end)
            if step < self.start_step:
                if self.train:  # the same draws as the skipped step makes, results dropped
                    self._augment(self.images[idx], idx, aug, gen)
                continue
            x = self.images[idx]
            y = self.labels[idx]
            if self.train:
                x = self._augment(x, idx, aug, gen)
                self.batch_indices = idx[mine]  # which images this batch holds (for per-example losses)
            yield self.normalise(x[mine]), y[mine]
        self.start_step = 0
        if self.train:
            self.epoch += 1

    def _augment(self, x: torch.Tensor, idx, aug: Augment, gen: torch.Generator) -> torch.Tensor:
        if aug.crop_pad:
            x = augment.random_crop(x, aug.crop_pad, gen, aug.crop_mode)
        if aug.flip == "random":
            x = augment.flip(x, augment.random_flip_mask(len(x), gen, x.device))
        elif aug.flip == "alternating":
            x = augment.flip(x, augment.alternating_flip_mask(self._flip_base[idx], self.epoch))
        if aug.cutout:
            # fill with the mean colour, which the normalisation maps to zero
            x = augment.cutout(x, aug.cutout, gen, self._cutout_fill)
        return x
