"""LeNet-5 as tabled in the paper's §3.3 (28x28 input, no padding), the 1998 variant as an option, and (in
`hdr_lib.resnet`) a small residual network: the "more advanced architectures such as ResNet" of the paper's future
work (§5)."""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from hdr_lib import paper
from hdr_lib.resnet import ResNet

# The paper's §3.3 table, row by row: (layer, description as the paper gives it).
PAPER_TABLE = [(layer, text) for layer, text, _ in paper.TABLE_3_3]


class LeNet5(nn.Module):
    """The paper's CNN. variant="paper": 28x28 with no padding, paper.PARAMETERS parameters.
    variant="lenet1998": conv1 padded by 2 (the 32x32 input of LeCun et al. 1998), 61,706 parameters.

    The output is logits: the paper's softmax lives inside the cross-entropy loss (§3.4).
    """

    def __init__(self, variant: str = "paper"):
        super().__init__()
        if variant not in ("paper", "lenet1998"):
            raise ValueError(f"variant must be 'paper' or 'lenet1998', got {variant!r}")
        self.variant = variant
        pad = 2 if variant == "lenet1998" else 0
        side = ((28 + 2 * pad - 4) // 2 - 4) // 2  # 4 for the paper, 5 for 1998
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, stride=1, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, stride=1)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_pool1(F.max_pool2d(F.relu(self.conv1(x)), 2, 2))

    def after_pool1(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the first pooling layer (hdr_lib.fast.torch_cpu computes the layers before it its own way)."""
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(model: str = "lenet5", variant: str = "paper") -> nn.Module:
    """The network a configuration names: LeNet-5 (of `variant`) or the residual network."""
    if model == "lenet5":
        return LeNet5(variant)
    if model == "resnet":
        return ResNet()
    raise ValueError(f"model must be 'lenet5' or 'resnet', got {model!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
