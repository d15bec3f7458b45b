"""The built-in networks. Top-level children are named ``stem``, ``stageN``, ``head``:
the exporter records these module scopes on every ONNX node, and the splitter turns
them into block names (``00_stem``, ``01_stage1``, ..., ``NN_head``).

* ``digits_cnn``: a plain CNN, 4 conv blocks (conv-BN-ReLU-maxpool) and a linear head;
  1x32x32 -> 128x2x2 -> 10 logits.
* ``digits_resnet``: a small residual network, stem + 3 residual stages (identity and
  1x1-projection skips) + global-pool head; 1x32x32 -> 10 logits.
* ``resnet18_shaped``: ResNet-18's layout on 3x224x224 with random weights, for
  benchmarks only (never trained, never committed, never reported as accurate).
* ``resnet50_shaped``: ResNet-50's layout (bottlenecks, [3, 4, 6, 3], 25.6M
  parameters) on 3x224x224 with random weights, likewise for benchmarks only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Four conv blocks, each halving the resolution, then a linear classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(1, widths[0]), nn.MaxPool2d(2))
        for i in range(1, len(widths)):
            self.add_module(f"stage{i}", nn.Sequential(*_conv_bn_relu(widths[i - 1], widths[i]), nn.MaxPool2d(2)))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(widths[-1] * 2 * 2, classes))
        self.stages = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.stages + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.head(x)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs plus a skip (identity, or 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3, 1x1 expand (x4), plus a skip (projected when the shape changes)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, residual stages (``stage1``...), global average pool and a linear head."""

    def __init__(
        self,
        stem: nn.Sequential,
        widths: tuple[int, ...],
        blocks_per_stage: int | tuple[int, ...],
        classes: int,
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem
        counts = blocks_per_stage if isinstance(blocks_per_stage, tuple) else (blocks_per_stage,) * len(widths)
        cin = widths[0]
        for i, (width, count) in enumerate(zip(widths, counts, strict=True), start=1):
            stride = 1 if i == 1 else 2
            if bottleneck:
                blocks = [Bottleneck(cin, width, stride)]
                cin = width * Bottleneck.expansion
                blocks += [Bottleneck(cin, width) for _ in range(count - 1)]
            else:
                blocks = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
                cin = width
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        self.stages = len(widths)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.stages + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.head(x)


def digits_cnn() -> nn.Module:
    """``digits_cnn``: input float32 [N,1,32,32], output logits [N,10]."""
    return DigitsCNN()


def digits_resnet() -> nn.Module:
    """``digits_resnet``: input float32 [N,1,32,32], output logits [N,10]."""
    stem = nn.Sequential(*_conv_bn_relu(1, 16), nn.MaxPool2d(2))
    return ResNet(stem, widths=(16, 32, 64), blocks_per_stage=1, classes=10)


def resnet18_shaped() -> nn.Module:
    """ResNet-18's layout (float32 [N,3,224,224] -> [N,1000]) with random weights; benchmarks only."""
    return ResNet(_imagenet_stem(), widths=(64, 128, 256, 512), blocks_per_stage=2, classes=1000)


def resnet50_shaped() -> nn.Module:
    """ResNet-50's layout (float32 [N,3,224,224] -> [N,1000], 25.6M parameters) with random weights; benchmarks only."""
    return ResNet(_imagenet_stem(), widths=(64, 128, 256, 512), blocks_per_stage=(3, 4, 6, 3), classes=1000,
                  bottleneck=True)


def _imagenet_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


@dataclass(frozen=True)
class Architecture:
    """A named network and what its export needs to know."""

    name: str
    build: Callable[[], nn.Module]
    description: str
    input_shape: tuple[int, int, int]
    trainable: bool


ARCHITECTURES: dict[str, Architecture] = {
    "digits_cnn": Architecture(
        "digits_cnn", digits_cnn, "digits_cnn: 4 conv blocks (conv-BN-ReLU-maxpool, 16/32/64/128) + linear head",
        (1, 32, 32), True,
    ),
    "digits_resnet": Architecture(
        "digits_resnet", digits_resnet,
        "digits_resnet: conv stem + 3 residual stages (16/32/64, identity and 1x1 projection skips) + pooled linear head",
        (1, 32, 32), True,
    ),
    "resnet18_shaped": Architecture(
        "resnet18_shaped", resnet18_shaped,
        "resnet18_shaped: ResNet-18 layout on 3x224x224, random weights (benchmarks only)",
        (3, 224, 224), False,
    ),
    "resnet50_shaped": Architecture(
        "resnet50_shaped", resnet50_shaped,
        "resnet50_shaped: ResNet-50 layout (bottlenecks, 3-4-6-3) on 3x224x224, random weights (benchmarks only)",
        (3, 224, 224), False,
    ),
}


def architecture(name: str) -> Architecture:
    """The architecture called ``name``; KeyError listing the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})") from None
