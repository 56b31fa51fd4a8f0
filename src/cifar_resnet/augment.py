"""Whole-batch augmentations as tensor operations.

Every function takes a batch in NHWC layout (the layout the images are stored in, uint8 or float) on any
device, and a ``torch.Generator`` on that device, and does the work for the whole batch in a handful of
tensor operations: no per-image Python loop, no PIL. This is what makes the loader cheap next to a training
step (airbench's ``CifarLoader`` is the model: https://github.com/KellerJordan/cifar10-airbench).
"""

from __future__ import annotations

import torch


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] onto [0, size) as reflect padding does (edge not repeated)."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                mode: str = "reflect") -> torch.Tensor:
    """Random crop of each image from the image padded by ``pad`` pixels on each side.

    Equivalent to ``RandomCrop(32, padding=pad, padding_mode=mode)`` applied image by image, but done as
    one gather: the padded image is never built, the source row/column of every output pixel is computed
    (reflected at the border, or marked as zero for ``mode="zeros"``).
    """
    if pad <= 0:
        return images
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    dev = images.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :] - pad  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :] - pad  # (n, w)
    if mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        return images[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if mode == "zeros":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out = images[torch.arange(n, device=dev)[:, None, None], rows.clamp(0, h - 1)[:, :, None],
                     cols.clamp(0, w - 1)[:, None, :]]
        return out * inside[..., None].to(out.dtype)
    raise ValueError(f"unknown crop padding mode {mode!r}; use 'reflect' or 'zeros'")


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images where ``mask`` (bool, shape (n,)) is true."""
    return torch.where(mask[:, None, None, None], images.flip(2), images)


def random_flip_mask(n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < 0.5


def alternating_flip_mask(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: a random half of the images is flipped on even epochs and exactly the
    other half on odd epochs, so every image is seen both ways every two epochs (less redundancy than
    independent coin flips; Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", section 3.6)."""
    return base ^ bool(epoch % 2)


def cutout_mask(n: int, h: int, w: int, size: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
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


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None,
           fill: torch.Tensor | float = 0) -> torch.Tensor:
    """Set a random ``size`` x ``size`` square of each image to ``fill`` (a scalar or one value per channel)."""
    if size <= 0:
        return images
    n, h, w = images.shape[:3]
    mask = cutout_mask(n, h, w, size, generator, images.device)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    return torch.where(mask, fill, images)
