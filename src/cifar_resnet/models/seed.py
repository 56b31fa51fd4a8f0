"""The seed notebook's ResNet, reproduced as it is (quirks included): 7,500,132 parameters for 100 classes.

A stem conv3x3(64)+BN+ReLU+MaxPool(3, stride 2) takes 32x32 to 15x15; each of three stages opens with a
bottleneck ``ConvBlock`` (1x1, then a 3x3 expanding to 256/512/1024, with a 1x1 shortcut) and then calls
ONE ``IdentityBlock`` 3, 4 and 2 times with shared weights; AvgPool(4) and Linear(1024, num_classes) end it.
How the structure was reconstructed from the notebook's description, the parameter count term by term and
the cost (about 1.0 GFLOP per image forward): docs/models.md, "The seed network, reconstructed".
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
    """The notebook's network; its structure and counts: docs/models.md."""

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
