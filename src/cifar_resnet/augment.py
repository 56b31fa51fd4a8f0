"""Whole-batch augmentations as tensor operations.

Every function takes a batch in NHWC layout (the layout the images are stored in, uint8 or float) on any
device, and a ``torch.Generator`` on that device, and does the work for the whole batch in a handful of
tensor operations: no per-image Python loop, no PIL. This is what makes the loader cheap next to a training
step (airbench's ``CifarLoader`` is the model: https://github.com/KellerJordan/cifar10-airbench).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLIP_MODES = ("none", "random", "alternating")


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; the defaults are the notebook's (4 px reflect crop, random flip)."""

    crop_pad: int = 4
    crop_mode: str = "reflect"
    flip: str = "random"
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise ValueError(f"unknown flip mode {self.flip!r}; use one of {', '.join(FLIP_MODES)}")
        if self.crop_pad < 0 or self.cutout < 0:
            raise ValueError("crop padding and cutout size must be >= 0")


NO_AUGMENT = Augment(crop_pad=0, flip="none", cutout=0)


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] onto [0, size) as reflect padding does (edge not repeated)."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def random_crop(
    images: torch.Tensor, pad: int, generator: torch.Generator | None = None, mode: str = "reflect"
) -> torch.Tensor:
    """Random crop of each image from the image padded by ``pad`` pixels on each side.

    Equivalent to ``RandomCrop(32, padding=pad, padding_mode=mode)`` applied image by image, but done as
    one gather of whole pixel rows: only the columns are padded (two thin strips), each padded row is seen
    as bytes, ``unfold`` makes every horizontal shift of it a view, and one indexing picks, for each output
    row, its source row (reflected at the border, or a zero row for ``mode="zeros"``) at the image's shift.
    Much faster on a CPU than gathering pixel by pixel (rows of ``w * c`` bytes are copied, not 3-byte
    pixels), with the same result.
    """
    if pad <= 0:
        return images
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"unknown crop padding mode {mode!r}; use 'reflect' or 'zeros'")
    n, h, w, c = images.shape
    dev = images.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]  # (n, h), in padded-row coordinates
    if mode == "reflect":
        left, right = images[:, :, 1 : pad + 1].flip(2), images[:, :, w - pad - 1 : w - 1].flip(2)
        padded = torch.cat([left, images, right], dim=2)
        rows = _reflect(rows - pad, h)
    else:
        strip = images.new_zeros(n, h, pad, c)
        padded = torch.cat([strip, images, strip], dim=2)
        zero_rows = padded.new_zeros(n, pad, w + 2 * pad, c)
        padded = torch.cat([zero_rows, padded, zero_rows], dim=1)
    windows = padded.reshape(n, padded.shape[1], (w + 2 * pad) * c).unfold(2, w * c, c)  # (n, rows, shifts, w*c)
    return windows[torch.arange(n, device=dev)[:, None], rows, dx[:, None]].view(n, h, w, c)


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images where ``mask`` (bool, shape (n,)) is true."""
    return torch.where(mask[:, None, None, None], images.flip(2), images)


def random_flip_mask(
    n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < 0.5


def alternating_flip_mask(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: a random half of the images is flipped on even epochs and exactly the
    other half on odd epochs, so every image is seen both ways every two epochs (less redundancy than
    independent coin flips; Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", section 3.6)."""
    return base ^ bool(epoch % 2)


def cutout_mask(
    n: int, h: int, w: int, size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean (n, h, w, 1) mask of one random ``size`` x ``size`` square per image (DeVries & Taylor 2017).

    The square's centre is uniform over the image, so it may be partly outside (as in the paper).
    """
    cy = torch.randint(0, h, (n, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=device, generator=generator)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)  # (n, h)
    in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)  # (n, w)
    return (in_y[:, :, None] & in_x[:, None, :])[..., None]


def cutout(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None, fill: torch.Tensor | float = 0
) -> torch.Tensor:
    """Set a random ``size`` x ``size`` square of each image to ``fill`` (a scalar or one value per channel)."""
    if size <= 0:
        return images
    n, h, w = images.shape[:3]
    mask = cutout_mask(n, h, w, size, generator, images.device)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    return torch.where(mask, fill, images)
