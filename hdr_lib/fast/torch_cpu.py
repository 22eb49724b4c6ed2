"""The fast path's CPU training step in PyTorch operators: LeNet-5 with the same weights and the same mathematics,
arranged so that the CPU does less work per step. The fast path runs it where `hdr_lib.fast.native` (the same
mathematics as one C++ operator, faster) is not used, and its forward pass with autograd under mixed precision
and under data parallelism.

On a small CPU, PyTorch's ``max_pool2d`` over the first convolution's output ([64, 6, 24, 24] per step) is one of
the slowest operators of the whole step: it is written as a scalar loop for the NCHW layout (about 0.4 ms per
step on the 2-core build machine, more than the convolution it follows). Here the first convolution is computed
as four stride-2 convolutions at once, one per corner of each 2x2 pooling window (its "phase"), so the four
values that a window compares come out in four separate, contiguous planes; pooling then is three elementwise
``maximum`` operations, which the CPU vectorises.

- Phase (pi, pj) of the output, conv1(x)[2i + pi, 2j + pj], is a stride-2 convolution of x with the 5x5 kernel
  placed at offset (pi, pj) inside a 6x6 frame of zeros. The four phase kernels are stacked into one
  [4 * 6, 1, 6, 6] weight built from conv1.weight by padding, so autograd adds their gradients back into it.
- Max pooling then ReLU, relu(max_pool2d(c)), equals max_pool2d(relu(c)) (ReLU is monotone), and needs the ReLU
  on a quarter of the values. The gradient follows max_pool2d's own rule: of the four, the first maximum in
  row-major order gets all of it, also on ties (a blank patch of a digit gives four equal values).

The second convolution and its pooling stay as they are: there, the same rearrangement measured slower.

`loss_and_gradients` goes one step further for training: it computes the loss and every parameter's gradient
with the backward pass written out (the chain rule, layer by layer, as autograd would apply it), so that a step
runs no autograd graph at all: on this network the graph's bookkeeping costs about a tenth of a CPU step.
Two choices there differ from what autograd does, not in what they compute but in how:

- conv2's weight gradient is computed as a forward convolution of conv2's input with the output gradient, the
  batch taking the place of the channels; oneDNN runs that faster than its own backward-weights kernel here
  (about 200 vs 320 microseconds per step).
- conv1 needs no gradient for its input (the images), so none is computed.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn import functional as F

from hdr_lib.model import LeNet5


CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # the corners (pi, pj) of a 2x2 pooling window, in row-major order


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C, 1, 5, 5] -> [4 C, 1, 6, 6]: for each corner (pi, pj) of a pooling window, in row-major order, the
    kernel shifted by (pi, pj) inside a 6x6 frame, so a stride-2 convolution with it gives that corner."""
    return torch.cat([F.pad(weight, (pj, 1 - pj, pi, 1 - pi)) for pi, pj in CORNERS], dim=0)


def phase_weight_backward(grad: torch.Tensor) -> torch.Tensor:
    """[4 C, 1, 6, 6] -> [C, 1, 5, 5]: the gradient for the 5x5 kernel given that of its four shifted copies, as
    autograd gives it back through `phase_weight`'s padding."""
    corners = grad.view(4, -1, *grad.shape[1:])
    return torch.stack([corners[k, ..., pi:pi + 5, pj:pj + 5] for k, (pi, pj) in enumerate(CORNERS)]).sum(0)


def conv1_corners(conv1: torch.nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1 of images x [B, 1, 28, 28] as its four pooling corners: [B, 4, C, 12, 12], corner k holding
    conv1(x)[..., 2i + pi, 2j + pj] for CORNERS[k]; with the phase kernels it was computed with."""
    kernels = phase_weight(conv1.weight)
    corners = F.conv2d(x, kernels, conv1.bias.repeat(4), stride=2)  # [B, 4 C, 12, 12]
    corners = corners.contiguous()  # no copy: conv2d's output is contiguous
    return kernels, corners.view(x.shape[0], 4, conv1.out_channels, *corners.shape[-2:])


def _greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # A float 0/1 mask: arithmetic with it is vectorised, where bool masks take a slow type-promotion path.
    return torch.gt(a, b, out=torch.empty(a.shape, dtype=a.dtype, device=a.device))


def corner_max_relu(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """relu(max over the four corners) for x of shape [B, 4, C, H, W], with the corners in row-major order
    (top left, top right, bottom left, bottom right), and the masks its gradient needs: the same values as
    relu(max_pool2d(., 2, 2)) on the interleaved image."""
    top_left, top_right, bottom_left, bottom_right = x.unbind(1)
    right_in_top = _greater(top_right, top_left)  # ties stay with the left: the first in row-major order
    right_in_bottom = _greater(bottom_right, bottom_left)
    top = torch.maximum(top_left, top_right)
    bottom = torch.maximum(bottom_left, bottom_right)
    in_bottom = _greater(bottom, top)  # ties stay with the top row
    out = torch.maximum(top, bottom).clamp_min_(0)
    return out, (right_in_top, right_in_bottom, in_bottom)


def corner_max_relu_backward(grad: torch.Tensor, out: torch.Tensor, masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The gradient of `corner_max_relu` for its input [B, 4, C, H, W], given the gradient of its output `out`:
    max_pool2d's rule (the whole gradient to the first maximum of each window), and none where ReLU cut."""
    right_in_top, right_in_bottom, in_bottom = masks
    grad = torch.ops.aten.threshold_backward(grad, out, 0)
    grad_bottom = grad * in_bottom
    grad_top = grad - grad_bottom
    grad_in = torch.empty((grad.shape[0], 4, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
    top_left, top_right, bottom_left, bottom_right = grad_in.unbind(1)
    torch.mul(grad_top, right_in_top, out=top_right)
    torch.sub(grad_top, top_right, out=top_left)
    torch.mul(grad_bottom, right_in_bottom, out=bottom_right)
    torch.sub(grad_bottom, bottom_right, out=bottom_left)
    return grad_in


class CornerMaxReLU(torch.autograd.Function):
    """`corner_max_relu` for autograd: the same values and gradients as relu(max_pool2d(., 2, 2)) on the
    interleaved image."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, masks = corner_max_relu(x)
        ctx.save_for_backward(out, *masks)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, *masks = ctx.saved_tensors
        return corner_max_relu_backward(grad, out, tuple(masks))


def applies(model: LeNet5, x: torch.Tensor) -> bool:
    """Whether the rearranged first layers fit: the paper's variant (28x28 input, no padding) on the CPU. The 1998
    variant, with its padded first convolution, runs as the module does."""
    return model.variant == "paper" and x.shape[-2:] == (28, 28) and x.device.type == "cpu"


def forward(model: LeNet5, x: torch.Tensor) -> torch.Tensor:
    """The logits of `model` for images x [B, 1, 28, 28], as `model(x)` computes them (up to float rounding),
    faster on the CPU; for autograd, and for the options (bfloat16, compilation) the explicit step leaves out."""
    if not applies(model, x):
        return model(x)
    _, corners = conv1_corners(model.conv1, x)
    return model.after_pool1(CornerMaxReLU.apply(corners))


# The profiler spans of the explicit step, by part (hdr_lib.measure.profiling counts what runs inside them as that part).
SPANS = {
    "conv1": "fastcpu.conv1",  # conv1 per pooling corner, forward and backward
    "pool1": "fastcpu.CornerMaxReLU",  # pooling of conv1 with its ReLU, forward and backward
    "conv2": "fastcpu.conv2",  # conv2 with its ReLU, forward and backward
    "fc": "fastcpu.fully_connected",  # fc1 to fc3 with their ReLUs, forward and backward
    "loss": "fastcpu.cross_entropy",  # the loss and its gradient for the logits
}


def _span(name: str):
    """A named span for the profiler (hdr_lib.measure.profiling sorts operators by the span they run in); nothing, at no
    cost, when no profiler runs."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def _linear_backward(grad: torch.Tensor, inputs: torch.Tensor, layer: torch.nn.Linear, grads: dict) -> torch.Tensor:
    """y = inputs @ W.T + b: puts (dW, db) in `grads[layer]` and returns the gradient for `inputs`."""
    grads[layer] = (grad.t().mm(inputs), grad.sum(0))
    return grad.mm(layer.weight)


def _layers(model: LeNet5) -> tuple[torch.nn.Module, ...]:
    return model.conv1, model.conv2, model.fc1, model.fc2, model.fc3  # the order of model.parameters()


def loss_and_gradients(model: LeNet5, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The mean cross-entropy of `model` on images x [B, 1, 28, 28] with labels y, and the gradient of every
    parameter, in the order of `model.parameters()`: what `F.cross_entropy(model(x), y).backward()` gives (up to
    float rounding), without an autograd graph. Only where `applies(model, x)`."""
    loss, grads = _loss_and_layer_gradients(model, x, y)
    return loss, [g for layer in _layers(model) for g in grads[layer]]


@torch.no_grad()
def _loss_and_layer_gradients(model: LeNet5, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The loss, and {layer: (weight gradient, bias gradient)}. Each part of the step runs in a span named after
    its layer (SPANS), so that the profiler can say where the time goes, as it can with autograd's own names."""
    conv1, conv2, fc1, fc2, fc3 = _layers(model)
    batch = x.shape[0]
    aten = torch.ops.aten
    # Forward, keeping what the backward pass reads.
    with _span(SPANS["conv1"]):
        kernels, corners = conv1_corners(conv1, x)
    with _span(SPANS["pool1"]):
        a1, masks = corner_max_relu(corners)
    with _span(SPANS["conv2"]):
        a2 = F.conv2d(a1, conv2.weight, conv2.bias).relu_()
    pooled, where = F.max_pool2d(a2, 2, 2, return_indices=True)
    with _span(SPANS["fc"]):
        h0 = pooled.flatten(1)
        h1 = F.linear(h0, fc1.weight, fc1.bias).relu_()
        h2 = F.linear(h1, fc2.weight, fc2.bias).relu_()
        logits = F.linear(h2, fc3.weight, fc3.bias)
    # Backward, from the loss to conv1: grads[layer] = (weight gradient, bias gradient).
    with _span(SPANS["loss"]):
        log_p = F.log_softmax(logits, dim=1)
        loss = F.nll_loss(log_p, y)
        grad = log_p.exp_()  # d loss / d logits = (softmax - one_hot(y)) / B
        grad.index_put_((torch.arange(batch), y), grad.new_tensor(-1.0), accumulate=True)
        grad.mul_(1.0 / batch)
    grads: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    with _span(SPANS["fc"]):
        grad = aten.threshold_backward(_linear_backward(grad, h2, fc3, grads), h2, 0)
        grad = aten.threshold_backward(_linear_backward(grad, h1, fc2, grads), h1, 0)
        grad = _linear_backward(grad, h0, fc1, grads).view(pooled.shape)
    grad = aten.max_pool2d_with_indices_backward(grad, a2, [2, 2], [2, 2], [0, 0], [1, 1], False, where)
    with _span(SPANS["conv2"]):
        grad = aten.threshold_backward(grad, a2, 0)
        grads[conv2] = (F.conv2d(a1.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1).contiguous(),
                        grad.sum((0, 2, 3)))
        grad = aten.convolution_backward(grad, a1, conv2.weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                         [True, False, False])[0]
    with _span(SPANS["pool1"]):
        grad = corner_max_relu_backward(grad, a1, masks)
    with _span(SPANS["conv1"]):
        _, grad_kernels, grad_bias = aten.convolution_backward(
            grad.flatten(1, 2), x, kernels, [kernels.shape[0]], [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
            [False, True, True])
        grads[conv1] = (phase_weight_backward(grad_kernels), grad_bias.view(4, -1).sum(0))
    return loss, grads


def train_step(model: LeNet5, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step with the gradients of `loss_and_gradients`; returns the loss (before the step)."""
    loss, grads = _loss_and_layer_gradients(model, x, y)
    for layer, (weight, bias) in grads.items():
        layer.weight.grad, layer.bias.grad = weight, bias
    optimizer.step()
    return loss
