"""``resnet18`` ... ``resnet152``: standard ResNets for 32x32 images, in torchvision's shape with a CIFAR stem.

He et al., "Deep Residual Learning for Image Recognition" (2015), as CIFAR practice adapts it
(weiaicunzai/pytorch-cifar100, kuangliu/pytorch-cifar): :class:`CifarResNet` with a 3x3 stem and no max-pool,
four stages of :class:`BasicBlock` or :class:`Bottleneck` (stride on the 3x3 conv, "v1.5") at 64/128/256/512
planes, global average pool, linear classifier. ``zero_init_residual`` zeroes each residual branch's last BN
(Goyal et al., "Accurate, Large Minibatch SGD", 2017). The design choices are described in docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; output has ``planes * expansion`` channels."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand by ``expansion``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for CIFAR: 3x3 stem without max-pool, four stages, global average pool, linear."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(_conv1x1(self.in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """All initialisation in one place: He-normal convs, BN gamma 1 / beta 0, optional zero-init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # fc keeps nn.Linear's default (uniform +-1/sqrt(fan_in)), as torchvision does.
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model
def resnet18(num_classes: int = 100, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-18 for CIFAR (BasicBlock x [2, 2, 2, 2]); 11.2 M parameters for 100 classes."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual)


@register_model
def resnet34(num_classes: int = 100, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-34 for CIFAR (BasicBlock x [3, 4, 6, 3]); 21.3 M parameters for 100 classes."""
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, zero_init_residual)


@register_model
def resnet50(num_classes: int = 100, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-50 for CIFAR (Bottleneck x [3, 4, 6, 3]); 23.7 M parameters for 100 classes."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual)


@register_model
def resnet101(num_classes: int = 100, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-101 for CIFAR (Bottleneck x [3, 4, 23, 3]); 42.7 M parameters for 100 classes."""
    return CifarResNet(Bottleneck, [3, 4, 23, 3], num_classes, zero_init_residual)


@register_model
def resnet152(num_classes: int = 100, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-152 for CIFAR (Bottleneck x [3, 8, 36, 3]); 58.3 M parameters for 100 classes."""
    return CifarResNet(Bottleneck, [3, 8, 36, 3], num_classes, zero_init_residual)
