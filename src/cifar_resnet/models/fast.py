"""``fast`` and ``fast_small``: an airbench-style network for time-to-accuracy, for 10 or 100 classes.

Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024, arXiv:2404.00498) and the airbench repository.
:class:`FastNet`, for 32x32 inputs: a bias-free 2x2 stem of 24 filters (32 -> 31) that :meth:`FastNet.init_whiten`
can set to whiten the training patches; three :class:`ConvGroup` (conv3x3 -> MaxPool2d(2) -> BN -> act, then
``depth - 1`` times conv3x3 -> BN -> act, ``widths``; 31 -> 15 -> 7 -> 3); AdaptiveMaxPool2d(1) and a bias-free
Linear whose logits are multiplied by ``logit_scale``. The activation is GELU unless ``act`` says ``"relu"`` or
``"silu"``. Works in ``channels_last`` and under bf16 autocast. Its design choices are explained in docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["ConvGroup", "FastNet", "fast", "fast_small"]


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ConvGroup(nn.Module):
    """conv3x3 -> MaxPool2d(2) -> BN -> GELU, then ``depth - 1`` times conv3x3 -> BN -> GELU (``conv2``/``norm2``,
    ``conv3``/``norm3``, ...; airbench94 has 2 convolutions a group, airbench96 3)."""

    def __init__(
        self, in_channels: int, out_channels: int, bn_momentum: float, bn_eps: float, act: str = "gelu", depth: int = 2
    ) -> None:
        super().__init__()
        self.depth = depth
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        for i in range(2, depth + 1):
            setattr(self, f"conv{i}", _conv3x3(out_channels, out_channels))
            setattr(self, f"norm{i}", nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum))
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        for i in range(2, self.depth + 1):
            x = self.act(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        return x


class FastNet(nn.Module):
    """airbench-style network; its design and the reasons for it: docs/models.md."""

    def __init__(
        self,
        num_classes: int = 100,
        widths: tuple[int, int, int] | list[int] = (64, 256, 256),
        stem_width: int = 24,
        stem_kernel: int = 2,
        logit_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-5,
        act: str = "gelu",
        depth: int = 2,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise ValueError(f"widths must be 3 positive integers, got {widths!r}")
        if stem_width < 1 or stem_kernel < 1:
            raise ValueError(f"stem_width and stem_kernel must be positive, got {stem_width}, {stem_kernel}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 4:
            raise ValueError(f"depth (convolutions in each of the 3 groups) must be an integer 1-4, got {depth!r}")
        self.stem = nn.Conv2d(3, stem_width, kernel_size=stem_kernel, padding=0, bias=False)
        self.stem_act = _activation(act)
        self.group1 = ConvGroup(stem_width, widths[0], bn_momentum, bn_eps, act, depth)
        self.group2 = ConvGroup(widths[0], widths[1], bn_momentum, bn_eps, act, depth)
        self.group3 = ConvGroup(widths[1], widths[2], bn_momentum, bn_eps, act, depth)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = float(logit_scale)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.stem:
                m.reset_parameters()
                # identity kernels in the first in_channels filters (airbench's Conv.reset_parameters)
                n = min(m.out_channels, m.in_channels)
                with torch.no_grad():
                    nn.init.dirac_(m.weight[:n])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The stem and head keep PyTorch's default init until init_whiten() is called.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.group3(self.group2(self.group1(x)))
        return self.head(self.flatten(self.pool(x))) * self.logit_scale

    def extra_repr(self) -> str:
        return f"logit_scale={self.logit_scale:.6g}"

    @torch.no_grad()
    def init_whiten(
        self,
        images: torch.Tensor,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        eps: float = 5e-4,
        max_images: int = 5000,
        freeze: bool = False,
    ) -> torch.Tensor:
        """Set the stem to a patch-whitening initialisation computed from training ``images``.

        Each pair of stem filters is ``+v / sqrt(l + eps)`` and ``-v / sqrt(l + eps)`` for one
        eigenvector ``v`` (eigenvalue ``l``) of the uncentred covariance of all ``k x k`` patches, the
        largest eigenvalues first, so the stem's outputs are decorrelated with unit variance on the
        training data (airbench's ``init_whitening_conv``; the pairs let the following GELU keep both
        signs).

        ``images``: either the float NCHW tensor the network will be fed (already normalised), or uint8
        images (NHWC as ``CifarData`` keeps them, or NCHW), which are scaled to [0, 1] and, given
        ``mean``/``std`` (per channel, in [0, 1] units), normalised as the loader will. At most
        ``max_images`` are used. ``freeze=True`` stops gradients to the stem as airbench does; that
        flag is not saved in a state_dict, so a resumed run must set it again. Returns the eigenvalues
        used, largest first.
        """
        x = self._as_nchw_float(images, mean, std)[:max_images]
        k = self.stem.kernel_size
        c = x.shape[1]
        dim = c * k[0] * k[1]
        out = self.stem.out_channels
        if out % 2 or out // 2 > dim:
            raise ValueError(
                f"whitening needs an even stem_width of at most {2 * dim} for a {k[0]}x{k[1]} stem, got {out}"
            )
        # Uncentred patch covariance, accumulated in float64 over chunks to bound memory.
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        for chunk in x.split(500):
            p = chunk.double().unfold(2, k[0], 1).unfold(3, k[1], 1)  # N, C, H', W', kh, kw
            p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, dim)  # flattened as (C, kh, kw) per patch
            cov += p.T @ p
            count += p.shape[0]
        if count == 0:
            raise ValueError("init_whiten needs at least one image")
        cov /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        n = out // 2
        filters = (eigenvectors[:, :n] / torch.sqrt(eigenvalues[:n].clamp_min(0) + eps)).T
        filters = filters.reshape(n, c, k[0], k[1])
        w = torch.cat([filters, -filters]).to(self.stem.weight.dtype)
        self.stem.weight.copy_(w)  # copy_ keeps the parameter's device and memory format
        self.stem.weight.requires_grad_(not freeze)
        return eigenvalues[:n].float()

    @staticmethod
    def _as_nchw_float(
        images: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
    ) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim != 4:
            raise ValueError(f"images must be a 4-d batch, got shape {tuple(x.shape)}")
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (NCHW or NHWC), got shape {tuple(x.shape)}")
        x = x.detach().cpu()
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
            if mean is not None:
                x = x - torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
            if std is not None:
                x = x / torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        elif mean is not None or std is not None:
            raise ValueError("mean/std apply to uint8 images only; float images must come normalised")
        return x.float()


@register_model
def fast(
    num_classes: int = 100,
    widths: tuple[int, int, int] = (64, 256, 256),
    stem_width: int = 24,
    logit_scale: float = 1 / 9,
    bn_momentum: float = 0.4,
    act: str = "gelu",
    depth: int = 2,
) -> FastNet:
    """airbench-style net (widths 64/256/256 as airbench94); ~2.0 M parameters for 100 classes."""
    return FastNet(
        num_classes,
        widths=widths,
        stem_width=stem_width,
        logit_scale=logit_scale,
        bn_momentum=bn_momentum,
        act=act,
        depth=depth,
    )


@register_model
def fast_small(
    num_classes: int = 100,
    widths: tuple[int, int, int] = (32, 64, 128),
    stem_width: int = 24,
    logit_scale: float = 1 / 9,
    bn_momentum: float = 0.4,
    act: str = "gelu",
    depth: int = 2,
) -> FastNet:
    """The fast net at widths 32/64/128, for CPUs with a couple of cores."""
    return FastNet(
        num_classes,
        widths=widths,
        stem_width=stem_width,
        logit_scale=logit_scale,
        bn_momentum=bn_momentum,
        act=act,
        depth=depth,
    )
