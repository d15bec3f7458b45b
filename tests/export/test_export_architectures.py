"""The built-in networks have the shapes the issue asks for."""

from __future__ import annotations

import torch
from torch import nn

from layerserve.export.architectures import ARCHITECTURES, BasicBlock, architecture


def test_digits_cnn_has_four_conv_blocks_and_a_head_reading_128x2x2() -> None:
    model = architecture("digits_cnn").build().eval()
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4
    assert [name for name, _ in model.named_children()] == ["stem", "stage1", "stage2", "stage3", "head"]
    with torch.no_grad():
        features = model.stage3(model.stage2(model.stage1(model.stem(torch.zeros(3, 1, 32, 32)))))
        assert features.shape == (3, 128, 2, 2)
        assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


def test_digits_resnet_has_three_residual_stages_with_projection_skips() -> None:
    model = architecture("digits_resnet").build().eval()
    stages = [getattr(model, f"stage{i}") for i in (1, 2, 3)]
    assert all(isinstance(stage[0], BasicBlock) for stage in stages)
    assert isinstance(stages[0][0].shortcut, nn.Identity)
    assert all(isinstance(stage[0].shortcut, nn.Sequential) for stage in stages[1:])
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_resnet18_shaped_is_benchmark_only_with_resnet18_size() -> None:
    arch = ARCHITECTURES["resnet18_shaped"]
    assert not arch.trainable and arch.input_shape == (3, 224, 224)
    params = sum(p.numel() for p in arch.build().parameters())
    assert 11_000_000 < params < 12_500_000  # torchvision's resnet18: 11.69M
