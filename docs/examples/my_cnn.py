"""A user's own CNN, as in docs/bring-your-own-cnn.md: ``layerserve export --model docs/examples/my_cnn.py:MyCNN``.

Plain PyTorch, nothing layerserve-specific: a stem, three stages that use a residual add,
depthwise convolutions with squeeze-and-excitation, and a channel split / concatenation /
channel shuffle, then a pooled linear head. layerserve names the blocks after these
top-level modules: ``stem``, ``layer1``, ``layer2``, ``layer3``, ``pool``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """Two 3x3 convolutions and a skip connection (ResNet's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), nn.ReLU(), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DepthwiseSE(nn.Module):
    """Expand, depthwise 3x3 (stride 2), squeeze-and-excitation, project (MobileNet's inverted residual)."""

    def __init__(self, cin: int, cout: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(conv_bn(cin, hidden, 1), nn.Hardswish())
        self.depthwise = nn.Sequential(conv_bn(hidden, hidden, 3, 2, groups=hidden), nn.Hardswish())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden // 4, 1), nn.ReLU(),
                                     nn.Conv2d(hidden // 4, hidden, 1), nn.Hardsigmoid())
        self.project = conv_bn(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.expand(x))
        return self.project(x * self.squeeze(x))


class ShuffleBlock(nn.Module):
    """Split the channels in two, transform one half, concatenate, shuffle (ShuffleNet-v2's unit)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), nn.ReLU(), conv_bn(half, half, 3, groups=half),
                                    conv_bn(half, half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, self.branch(right)], dim=1)
        batch, channels, height, width = x.shape
        return x.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)


class MyCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(Residual(16), Residual(16))
        self.layer2 = DepthwiseSE(16, 32)
        self.layer3 = nn.Sequential(ShuffleBlock(32), ShuffleBlock(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
