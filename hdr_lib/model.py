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


def training_flops(variant: str = "paper", images: int = paper.TRAIN_IMAGES, model: str = "lenet5") -> dict:
    """Multiply-adds per image of one forward pass and of one training step (the forward pass, every layer's weight
    gradient, and the input gradient of every layer but the first, which the image does not need), and the FLOPs of
    one training epoch at 2 FLOPs per multiply-add: the work §4.1's times were spent on.

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
