"""The seed notebook's ResNet, reproduced as it is (quirks included).

The notebook (a Jovian / "zero to GANs" style CIFAR-100 notebook with ``BaseModel``, ``conv_block``,
``identity_block`` and a one-cycle ``fit``) was not found in any searchable source, so the details its
description leaves open were solved for. Over conv bias on/off, bottleneck widths of 16..1024 per stage
and five identity-block shapes (1x1-3x3, 3x3-1x1, 1x1-3x3-1x1, 3x3-3x3, 1x1-1x1), the only
configurations with exactly 7,500,132 parameters are the one below and the same with the identity
block's two convs swapped (identical count and cost). The strides then follow from the FLOPs: stage
strides 1/2/2 give 0.997 GFLOP, against 0.78 for 2/1/2 and 0.46 for 2/2/1 (all three end at 4x4).

Structure (32x32 input)::

    stem    conv3x3(3->64, pad 1) + BN + ReLU + MaxPool(3, stride 2, no pad)     32x32 -> 15x15
    stage1  ConvBlock(64  -> 64  -> 256,  stride 1)  + IdentityBlock(256, 64)  x3   15x15
    stage2  ConvBlock(256 -> 128 -> 512,  stride 2)  + IdentityBlock(512, 128) x4    8x8
    stage3  ConvBlock(512 -> 256 -> 1024, stride 2)  + IdentityBlock(1024, 256) x2   4x4
    head    AvgPool2d(4) -> flatten -> Linear(1024, num_classes)

    ConvBlock(in -> mid -> out, s):  relu( BN(conv3x3(mid->out)(relu(BN(conv1x1(in->mid, stride s)(x)))))
                                           + BN(conv1x1(in->out, stride s)(x)) )
    IdentityBlock(out, mid):         relu( BN(conv3x3(mid->out)(relu(BN(conv1x1(out->mid)(x))))) + x )

The bottleneck width is a quarter of the stage's output (64/128/256, ResNet's expansion of 4), every
convolution has a bias (``nn.Conv2d``'s default, which the notebook kept although BN follows each one),
and the stride-2 1x1 convolutions take 15 -> 8 -> 4 so the map is 4x4 for the AvgPool(4).

The two quirks are intentional and kept:

* the max-pool on a 32x32 input (an ImageNet habit) leaves an odd 15x15 map;
* each stage has ONE identity block whose module is called 3, 4 and 2 times in ``forward`` - the same
  weights (and the same BN running statistics) reused, not 9 distinct blocks.

Parameter count for 100 classes. Each conv is ``weight + bias``, each BN ``+ 2*channels`` (gamma and
beta; running statistics are buffers, not parameters); a shared identity block counts once:

=====================  =========  =================================================================
part                   params     terms: branch 1x1 | branch 3x3 | shortcut 1x1
=====================  =========  =================================================================
stem                       1,920  3*64*9+64 + 128
stage1 conv block        169,664  (64*64+64 + 128) | (64*256*9+256 + 512) | (64*256+256 + 512)
stage1 identity block    164,800  (256*64+64 + 128) | (64*256*9+256 + 512)
stage2 conv block        757,120  (256*128+128 + 256) | (128*512*9+512 + 1024) | (256*512+512 + 1024)
stage2 identity block    657,280  (512*128+128 + 256) | (128*512*9+512 + 1024)
stage3 conv block      3,021,568  (512*256+256 + 512) | (256*1024*9+1024 + 2048) | (512*1024+1024 + 2048)
stage3 identity block  2,625,280  (1024*256+256 + 512) | (256*1024*9+1024 + 2048)
fc                       102,500  1024*100+100
total                  7,500,132
=====================  =========  =================================================================

(Without conv biases it would be 7,493,796. Of the two equivalent identity-block orders, 1x1-then-3x3
is used because it mirrors the conv block.)

Cost: ``torch.utils.flop_counter.FlopCounterMode`` reports 996,753,408 FLOPs per image forward, in its
convention of 2 FLOPs per multiply-add (convolutions and the linear layer only; BN, ReLU, pooling and
bias additions are not counted) - i.e. 0.498 G multiply-adds. The shared identity blocks are counted
once per call: stage1 148 M, stage2 216 M and stage3 132 M multiply-adds.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["ConvBlock", "IdentityBlock", "SeedResNet", "SeedStage", "seed_resnet"]


class ConvBlock(nn.Module):
    """A stage's opening block: 1x1 (strided) -> 3x3 expanding branch, plus a 1x1 projection shortcut."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class IdentityBlock(nn.Module):
    """1x1 reduce -> 3x3 expand, added to the unchanged input."""

    def __init__(self, channels: int, mid_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, mid_channels, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class SeedStage(nn.Module):
    """A conv block, then ONE identity block applied ``repeats`` times with the same weights."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int, repeats: int) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, mid_channels, out_channels, stride)
        self.identity = IdentityBlock(out_channels, mid_channels)
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for _ in range(self.repeats):  # weight sharing is the notebook's design, not an accident
            x = self.identity(x)
        return x

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}"


class SeedResNet(nn.Module):
    """The notebook's network; see the module docstring for its exact structure and counts."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # no padding: 32x32 -> 15x15, as in the notebook
        )
        self.stage1 = SeedStage(64, 64, 256, stride=1, repeats=3)  # 15x15
        self.stage2 = SeedStage(256, 128, 512, stride=2, repeats=4)  # 8x8
        self.stage3 = SeedStage(512, 256, 1024, stride=2, repeats=2)  # 4x4
        self.pool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(1024, num_classes)
        # Weights keep PyTorch's default initialisation, as the notebook did.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        return self.fc(self.flatten(self.pool(x)))


@register_model
def seed_resnet(num_classes: int = 100) -> SeedResNet:
    """The seed notebook's ResNet (7,500,132 parameters for 100 classes, ~1.0 GFLOP per image)."""
    return SeedResNet(num_classes=num_classes)
