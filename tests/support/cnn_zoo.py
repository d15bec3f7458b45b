"""CNNs written the way users write them: the styles of ResNet, MobileNet-v3, DenseNet, Inception,
ShuffleNet, EfficientNet and RegNet, at 3x224x224 with random weights.

Written for the bring-your-own-CNN tests, not taken from torchvision (the project never depends
on it): module names follow torchvision's conventions (``conv1``/``layer1``/``fc``, a ``features``
container, ``trunk_output``), forward passes use the idioms users use (``torch.flatten``,
``x.view(x.size(0), -1)``, ``chunk``, channel shuffle through ``view``/``transpose``, squeeze-and-
excitation, depthwise and grouped convolutions, concatenations). Widths are narrow so that the
suite stays fast on two cores; the layouts and the activation sizes at the stem are real.

This file doubles as a "user's model file" for ``layerserve export --model cnn_zoo.py:NAME``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGE_SHAPE = (3, 224, 224)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.gate(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


# -- ResNet (bottleneck, torchvision layout: conv1 bn1 relu maxpool layer1..4 avgpool fc) ---------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    """ResNet-50's layout (bottlenecks, [3, 4, 6, 3]) scaled by ``width``; 64 gives ResNet-50 itself."""

    def __init__(self, width: int = 8, layers: tuple[int, ...] = (2, 2, 2, 2), classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for index, count in enumerate(layers):
            stage_width = width * 2**index
            blocks = []
            for block in range(count):
                blocks.append(Bottleneck(cin, stage_width, 2 if block == 0 and index > 0 else 1))
                cin = stage_width * Bottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_style() -> nn.Module:
    """ResNet-50 exactly as torchvision lays it out (25.6M parameters), random weights."""
    return ResNetStyle(width=64, layers=(3, 4, 6, 3))


# -- MobileNet-v3 (features container, inverted residuals, SE with hard-sigmoid, hard-swish) -------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, expand: int, cout: int, kernel: int, stride: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(conv_bn(cin, expand, 1, act=act))
        layers.append(conv_bn(expand, expand, kernel, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcitation(expand, max(8, expand // 4), nn.Hardsigmoid))
        layers.append(conv_bn(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3Style(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        # (kernel, expand, out, se, activation, stride)
        settings = [
            (3, 16, 16, True, nn.ReLU, 2),
            (3, 48, 24, False, nn.ReLU, 2),
            (3, 56, 24, False, nn.ReLU, 1),
            (5, 64, 40, True, nn.Hardswish, 2),
            (5, 96, 40, True, nn.Hardswish, 1),
            (5, 128, 48, True, nn.Hardswish, 1),
            (5, 192, 64, True, nn.Hardswish, 2),
        ]
        layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for kernel, expand, cout, se, act, stride in settings:
            layers.append(InvertedResidual(cin, expand, cout, kernel, stride, se, act))
            cin = cout
        layers.append(conv_bn(cin, 6 * cin, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# -- DenseNet (features container with dense blocks: every layer concatenates) ------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNetStyle(nn.Module):
    def __init__(self, growth: int = 8, blocks: tuple[int, ...] = (2, 3, 3, 2), classes: int = 1000) -> None:
        super().__init__()
        channels = 2 * growth
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, channels, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(channels))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        for i, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(layers, channels, growth))
            channels += layers * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# -- Inception (named top-level convs and mixed blocks of parallel branches) --------------------


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(cin, 16, 1)
        self.branch5x5_1 = conv_bn(cin, 12, 1)
        self.branch5x5_2 = conv_bn(12, 16, 5)
        self.branch3x3dbl_1 = conv_bn(cin, 16, 1)
        self.branch3x3dbl_2 = conv_bn(16, 24, 3)
        self.branch_pool = conv_bn(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_2(self.branch3x3dbl_1(x)),
            self.branch_pool(F.avg_pool2d(x, 3, 1, 1)),
        ]
        return torch.cat(branches, 1)


class InceptionReduction(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = conv_bn(cin, 32, 3, 2)
        self.branch3x3dbl_1 = conv_bn(cin, 16, 1)
        self.branch3x3dbl_2 = conv_bn(16, 24, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_2(self.branch3x3dbl_1(x)), F.max_pool2d(x, 3, 2, 1)], 1)


class InceptionStyle(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = conv_bn(3, 16, 3, 2)
        self.Conv2d_2a_3x3 = conv_bn(16, 16, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, 1)
        self.Conv2d_3b_1x1 = conv_bn(16, 32, 1)
        self.maxpool2 = nn.MaxPool2d(3, 2, 1)
        self.Mixed_5b = InceptionA(32, 16)
        self.Mixed_5c = InceptionA(72, 24)
        self.Mixed_6a = InceptionReduction(80)
        self.Mixed_6b = InceptionA(136, 32)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(88, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool2(self.Conv2d_3b_1x1(x))
        x = self.Mixed_6b(self.Mixed_6a(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.dropout(self.avgpool(x))
        return self.fc(x.view(x.size(0), -1))


# -- ShuffleNet-v2 (channel split with chunk, channel shuffle through view/transpose) -----------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        else:
            self.branch1 = nn.Sequential()
        source = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(source, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetStyle(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), repeats: tuple[int, ...] = (2, 2, 2), classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, widths[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for index, (cout, count) in enumerate(zip(widths[1:], repeats, strict=True)):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(count - 1)]
            self.add_module(f"stage{index + 2}", nn.Sequential(*units))
            cin = cout
        self.conv5 = conv_bn(cin, 256, 1)
        self.fc = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


# -- EfficientNet (features container of MBConv stages with SE and SiLU) ------------------------


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        expand = cin * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(cin, expand, 1, act=nn.SiLU))
        layers.append(conv_bn(expand, expand, kernel, stride, groups=expand, act=nn.SiLU))
        layers.append(SqueezeExcitation(expand, max(1, cin // 4), nn.Sigmoid))
        layers.append(conv_bn(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class EfficientNetStyle(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        # (expand ratio, kernel, stride, out channels, repeats)
        stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 1), (6, 5, 2, 112, 1)]
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
        cin = 32
        for ratio, kernel, stride, cout, repeats in stages:
            blocks = [MBConv(cin if i == 0 else cout, cout, ratio, kernel, stride if i == 0 else 1) for i in range(repeats)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        layers.append(conv_bn(cin, 320, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(320, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# -- RegNet (stem, trunk_output of stages of grouped-conv bottlenecks with SE) -----------------


class RegNetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.f = nn.Sequential(
            conv_bn(cin, cout, 1),
            conv_bn(cout, cout, 3, stride, groups=cout // group_width),
            SqueezeExcitation(cout, max(1, cin // 4)),
            conv_bn(cout, cout, 1, act=None),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class AnyStage(nn.Sequential):
    def __init__(self, cin: int, cout: int, depth: int, group_width: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"block{i + 1}", RegNetBlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1, group_width))


class RegNetStyle(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), depths: tuple[int, ...] = (1, 2, 2, 1), classes: int = 1000) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        self.trunk_output = nn.Sequential()
        cin = 32
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            self.trunk_output.add_module(f"block{index + 1}", AnyStage(cin, width, depth, group_width=8))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


ZOO: dict[str, type[nn.Module]] = {
    "resnet": ResNetStyle,
    "mobilenet_v3": MobileNetV3Style,
    "densenet": DenseNetStyle,
    "inception": InceptionStyle,
    "shufflenet": ShuffleNetStyle,
    "efficientnet": EfficientNetStyle,
    "regnet": RegNetStyle,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Architecture ``name`` of ZOO with seeded random weights (BatchNorm statistics randomised too), in eval mode."""
    torch.manual_seed(seed)
    model = ZOO[name]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()
