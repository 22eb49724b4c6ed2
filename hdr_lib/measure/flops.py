"""What the network costs: each layer's output shape and parameters (the §3.3 table, traced on a real forward
pass), the multiply-adds and FLOPs of a training step and epoch, for LeNet-5 and the residual network alike, and the
bytes LeNet-5 needs in float32."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from hdr_lib import paper
from hdr_lib.model import LeNet5, build_model, count_parameters


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


def memory_estimate(batch_size: int = paper.BATCH_SIZE, variant: str = "paper") -> dict:
    """Bytes LeNet-5 needs in float32: weights, gradients, momentum, one batch's activations, and MNIST itself."""
    params = count_parameters(LeNet5(variant))
    activations = sum(math.prod(row["output_shape"]) for row in layer_table(variant)) * batch_size
    images = paper.TRAIN_IMAGES + paper.TEST_IMAGES
    return {
        "weights, gradients and momentum": 3 * params * 4,
        f"activations of one batch of {batch_size} (forward, kept for backward)": activations * 4,
        "all of MNIST as float32 on the device (fast path)": images * paper.IMAGE_SIDE ** 2 * 4,
    }
