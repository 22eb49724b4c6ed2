"""LeNet-5 as tabled in the paper's §3.3 (28x28 input, no padding), the 1998 variant as an option, and a small
residual network: the "more advanced architectures such as ResNet" of the paper's future work (§5)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# The paper's §3.3 table, row by row: (layer, description as the paper gives it).
PAPER_TABLE = [
    ("Input", "28x28 grayscale image"),
    ("Conv1", "6 filters, 5x5 kernel, stride 1"),
    ("Activation", "ReLU"),
    ("Pool1", "max pooling 2x2, stride 2"),
    ("Conv2", "16 filters, 5x5 kernel, stride 1"),
    ("Activation", "ReLU"),
    ("Pool2", "max pooling 2x2, stride 2"),
    ("Flatten", "flatten for the fully connected layer"),
    ("FC1", "120 neurons"),
    ("Activation", "ReLU"),
    ("FC2", "84 neurons"),
    ("Activation", "ReLU"),
    ("Output", "10 neurons, softmax for classification"),
]


class LeNet5(nn.Module):
    """The paper's CNN. variant="paper": 28x28 with no padding, 44,426 parameters.
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


def build_model(model: str = "lenet5", variant: str = "paper") -> nn.Module:
    """The network a configuration names: LeNet-5 (of `variant`) or the residual network."""
    if model == "lenet5":
        return LeNet5(variant)
    if model == "resnet":
        return ResNet()
    raise ValueError(f"model must be 'lenet5' or 'resnet', got {model!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(variant: str = "paper") -> list[dict]:
    """Each layer with its output shape (one image) and parameter count, traced on a real forward pass."""
    model = LeNet5(variant)
    rows = [{"layer": "Input", "output_shape": (1, 28, 28), "parameters": 0}]
    x = torch.zeros(1, 1, 28, 28)
    steps = [
        ("Conv1", model.conv1), ("ReLU", F.relu), ("Pool1", lambda t: F.max_pool2d(t, 2, 2)),
        ("Conv2", model.conv2), ("ReLU", F.relu), ("Pool2", lambda t: F.max_pool2d(t, 2, 2)),
        ("Flatten", lambda t: torch.flatten(t, 1)),
        ("FC1", model.fc1), ("ReLU", F.relu), ("FC2", model.fc2), ("ReLU", F.relu), ("Output", model.fc3),
    ]
    with torch.no_grad():
        for name, step in steps:
            x = step(x)
            params = count_parameters(step) if isinstance(step, nn.Module) else 0
            rows.append({"layer": name, "output_shape": tuple(x.shape[1:]), "parameters": params})
    return rows


def training_flops(variant: str = "paper", images: int = 60_000, model: str = "lenet5") -> dict:
    """Multiply-adds per image of one forward pass and of one training step (the forward pass, every layer's weight
    gradient, and the input gradient of every layer but the first, which the image does not need), and the FLOPs of
    one training epoch at 2 FLOPs per multiply-add: the work the 3600 s and 300 s of §4.1 were spent on.

    The multiply-adds are those of every convolution and linear layer, counted on a real forward pass of one image
    (output elements x the taps of one output, for a dense layer its weights). ReLU, pooling, batch normalisation,
    the residual additions, the loss and the SGD update add a few operations per activation and are left out."""
    net = build_model(model, variant)
    macs = []

    def count(layer, _inputs, output):
        macs.append(output[0].numel() * layer.weight[0].numel())

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    forward = sum(macs)
    train = 3 * forward - macs[0]  # the first layer needs no input gradient
    return {"forward_macs_per_image": forward, "train_macs_per_image": train, "train_flops_per_epoch": 2 * train * images}
