"""The fast path's forward pass on the CPU: LeNet-5 with the same weights and the same mathematics, arranged so
that the CPU does less work per step.

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
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hdr_lib.model import LeNet5


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C, 1, 5, 5] -> [4 C, 1, 6, 6]: for each corner (pi, pj) of a pooling window, in row-major order, the
    kernel shifted by (pi, pj) inside a 6x6 frame, so a stride-2 convolution with it gives that corner."""
    return torch.cat([F.pad(weight, (pj, 1 - pj, pi, 1 - pi)) for pi in (0, 1) for pj in (0, 1)], dim=0)


def _greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # A float 0/1 mask: arithmetic with it is vectorised, where bool masks take a slow type-promotion path.
    return torch.gt(a, b, out=torch.empty(a.shape, dtype=a.dtype, device=a.device))


class CornerMaxReLU(torch.autograd.Function):
    """relu(max over the four corners) for x of shape [B, 4, C, H, W], with the corners in row-major order
    (top left, top right, bottom left, bottom right): the same values and gradients as
    relu(max_pool2d(., 2, 2)) on the interleaved image."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        top_left, top_right, bottom_left, bottom_right = x.unbind(1)
        right_in_top = _greater(top_right, top_left)  # ties stay with the left: the first in row-major order
        right_in_bottom = _greater(bottom_right, bottom_left)
        top = torch.maximum(top_left, top_right)
        bottom = torch.maximum(bottom_left, bottom_right)
        in_bottom = _greater(bottom, top)  # ties stay with the top row
        out = torch.maximum(top, bottom).clamp_min_(0)
        ctx.save_for_backward(right_in_top, right_in_bottom, in_bottom, _greater(out, out.new_zeros(())))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        right_in_top, right_in_bottom, in_bottom, positive = ctx.saved_tensors
        grad = grad * positive
        grad_bottom = grad * in_bottom
        grad_top = grad - grad_bottom
        grad_in = torch.empty((grad.shape[0], 4, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        top_left, top_right, bottom_left, bottom_right = grad_in.unbind(1)
        torch.mul(grad_top, right_in_top, out=top_right)
        torch.sub(grad_top, top_right, out=top_left)
        torch.mul(grad_bottom, right_in_bottom, out=bottom_right)
        torch.sub(grad_bottom, bottom_right, out=bottom_left)
        return grad_in


def forward(model: LeNet5, x: torch.Tensor) -> torch.Tensor:
    """The logits of `model` for images x [B, 1, 28, 28], as `model(x)` computes them (up to float rounding),
    faster on the CPU. Only the paper's variant (28x28 input, no padding) is rearranged; the 1998 variant, with
    its padded first convolution, runs as the module does."""
    if model.variant != "paper" or x.shape[-2:] != (28, 28):
        return model(x)
    conv1 = model.conv1
    corners = F.conv2d(x, phase_weight(conv1.weight), conv1.bias.repeat(4), stride=2)  # [B, 4 C, 12, 12]
    corners = corners.contiguous()  # a copy only with the channels-last option
    pooled = CornerMaxReLU.apply(corners.view(x.shape[0], 4, conv1.out_channels, *corners.shape[-2:]))
    return model.after_pool1(pooled)
