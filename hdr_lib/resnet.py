"""A small residual network for 28x28 digits: the "more advanced architectures such as ResNet" of the paper's future
work (§5), trained by `--model resnet` (`hdr_lib.model.build_model`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalisation, added to the block's input (He et al. 2016); a 1x1 convolution
    on the shortcut where the block halves the side or changes the channels."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """A small residual network for 28x28 digits: a 3x3 stem of 16 channels, three stages of basic blocks with
    16, 32 and 64 channels at 28x28, 14x14 and 7x7, global average pooling and one linear layer to 10 logits.
    `blocks` basic blocks per stage (1: eight weighted layers, a "ResNet-8")."""

    CHANNELS = (16, 32, 64)

    def __init__(self, blocks: int = 1):
        super().__init__()
        if not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
        self.variant = "resnet"  # what hdr_lib.fast.torch_cpu, hdr_lib.fast.native and hdr_lib.fast.triton_step check: not LeNet-5
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate(self.CHANNELS):
            for j in range(blocks):
                layers.append(BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
