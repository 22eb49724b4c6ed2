"""The CUDA fast path's training step as two Triton kernels (`hdr_lib.fast.triton_kernels`), in place of PyTorch's many
small cuDNN, cuBLAS and elementwise kernels: a step's arithmetic is tiny (about 0.1 GFLOP), so its time goes to
launching kernels and to the gaps between them, and two kernels per step are as few as its dependencies allow
(every image's gradient before the update). The batch gather is in the first kernel (it reads the images the batch
order names), SGD with momentum in the second.

The parameters are moved into one flat buffer, which the module's parameters then view (their values, names and
the optimiser's param groups are unchanged), and the momentum buffers likewise, which the optimiser's state then
holds, so its state_dict, checkpoints and the LR scheduler work as before. The learning rate is read from the
optimiser's own device tensor at every step.

`TrainStep.check()` compares the first batch's gradient with autograd's on the module before a run uses the
kernels: a GPU or Triton version on which they compute something else is caught there, and the run falls back to
the cuDNN step with the reason in its record.
"""

from __future__ import annotations

import importlib
import os

import torch
from torch.nn import functional as F

from hdr_lib.model import LeNet5

SHAPES = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 256), (120,), (84, 120), (84,), (10, 84), (10,)]
TOLERANCE = 1e-4  # of the gradient's largest entry: float32 sums in another order differed by about 1e-7 of it


def reason_not_applicable(model, optimizer, x_all) -> str | None:
    """Why the Triton step cannot run this configuration, or None if it can."""
    if x_all.device.type != "cuda" and not _interpreting():
        return "the Triton step runs on CUDA (or in Triton's interpreter)"
    if not isinstance(model, LeNet5) or model.variant != "paper":
        return "the Triton step computes the paper's 28x28 LeNet-5 only"
    if [tuple(p.shape) for p in model.parameters()] != SHAPES or x_all.shape[1:] != (1, 28, 28):
        return "unexpected parameter or image shapes"
    if any(p.dtype != torch.float32 for p in model.parameters()) or x_all.dtype != torch.float32:
        return "the Triton step computes in float32 only"
    if not x_all.is_contiguous() or not all(p.is_contiguous() for p in model.parameters()):
        return "the Triton step reads contiguous images and parameters only"
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return "the Triton step updates with plain SGD (one param group) only"
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["dampening"] or group["nesterov"] or group["maximize"]:
        return "the Triton step's SGD has no weight decay, dampening, Nesterov or maximize"
    if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != x_all.device:
        return "the Triton step reads the learning rate from a tensor on the device"
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return "the optimiser has step hooks, which the Triton step would not call"
    try:
        kernels()
    except Exception as exc:  # noqa: BLE001 (no triton, or it cannot load: say why)
        return f"Triton unavailable ({type(exc).__name__}: {exc})"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def kernels():
    """The kernel module, imported on first use (Triton reads TRITON_INTERPRET when it defines them)."""
    return importlib.import_module("hdr_lib.fast.triton_kernels")


def _flat_indices(device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each entry of the flat parameter vector, the two entries of a sample's scratch row whose product,
    summed over the batch, is its gradient (a convolution's gradient is in the row itself, times 1.0)."""
    k = kernels()
    us, vs = [], []

    def own(offset, n):
        us.append(torch.arange(offset, offset + n))
        vs.append(torch.full((n,), int(k.ONE)))

    def outer(dz, h, rows, cols):
        us.append((dz + torch.arange(rows)).repeat_interleave(cols))
        vs.append((h + torch.arange(cols)).repeat(rows))
        own(dz, rows)  # the bias

    own(int(k.C1W), 150), own(int(k.C1B), 6), own(int(k.C2W), 2400), own(int(k.C2B), 16)
    outer(int(k.DZ1), int(k.H0), 120, 256)
    outer(int(k.DZ2), int(k.H1), 84, 120)
    outer(int(k.DZ3), int(k.H2), 10, 84)
    return (torch.cat(us).to(torch.int32).to(device), torch.cat(vs).to(torch.int32).to(device))


class TrainStep:
    """`step(x_all, y_all, idx)`: one SGD step on the images `idx` names; returns the batch's mean loss."""

    def __init__(self, model: LeNet5, optimizer: torch.optim.SGD, batch_size: int):
        self.k = kernels()
        params = list(model.parameters())
        device = params[0].device
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.buf = torch.zeros_like(self.flat)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                state = optimizer.state[p]
                if state.get("momentum_buffer") is not None:  # resumed: carry the buffers over
                    self.buf[offset:offset + n].copy_(state["momentum_buffer"].reshape(-1))
                p.data = self.flat[offset:offset + n].view_as(p)
                p.grad = None
                state["momentum_buffer"] = self.buf[offset:offset + n].view_as(p)
                offset += n
        # SGD's step() with no gradient changes nothing; it marks the optimiser as stepped for the LR scheduler.
        optimizer.step()
        self.group = optimizer.param_groups[0]
        self.u, self.v = _flat_indices(device)
        self.params = params
        self.scratch = torch.empty(batch_size, int(self.k.ROW), device=device)
        self.winners = torch.empty(batch_size, int(self.k.IROW), dtype=torch.int32, device=device)

    def step(self, x_all, y_all, idx, *, flat=None, buf=None, grad_out=None) -> torch.Tensor:
        n = idx.shape[0]
        if not 0 < n <= self.scratch.shape[0]:
            raise ValueError(f"a batch of {n} images; this step holds scratch rows for 1 to {self.scratch.shape[0]}")
        loss = torch.empty((), device=idx.device)
        self.sample(x_all, y_all, idx)
        self.update(n, loss, flat=flat, buf=buf, grad_out=grad_out)
        return loss

    def sample(self, x_all, y_all, idx, num_warps: int = 8) -> None:
        """The first kernel: each image's forward and backward pass, into its scratch row."""
        self.k.sample_kernel[(idx.shape[0],)](x_all, y_all, idx, *self.params, self.scratch, self.winners,
                                              1.0 / idx.shape[0], num_warps=num_warps)

    def update(self, n: int, loss, *, flat=None, buf=None, grad_out=None) -> None:
        """The second kernel: the gradient summed over the first `n` scratch rows, SGD with momentum on `flat`
        (default: the parameters) and `buf` (their momentum), and the batch's loss into `loss`."""
        flat = self.flat if flat is None else flat
        self.k.update_kernel[(_cdiv(flat.numel(), 128),)](
            self.scratch, self.u, self.v, flat, self.buf if buf is None else buf, self.group["lr"], loss,
            grad_out if grad_out is not None else loss, n, flat.numel(), float(self.group["momentum"]),
            STORE_GRAD=grad_out is not None)

    def check(self, x_all, y_all, idx) -> str | None:
        """One step's gradient and loss against autograd's on the module's parameters, computed on copies (nothing
        changes); None when they agree, else what differs."""
        grad = torch.empty_like(self.flat)
        loss = self.step(x_all, y_all, idx, flat=self.flat.clone(), buf=self.buf.clone(), grad_out=grad)
        x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
        params = [p.detach().clone().requires_grad_() for p in self.params]
        ref_loss = F.cross_entropy(_functional_forward(params, x), y)
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref_loss, params)])
        scale = ref.abs().max().item()
        err = (grad - ref).abs().max().item()
        if not (err <= TOLERANCE * scale) or not abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()):
            return (f"the Triton step's first gradient differs from autograd's by {err:.3g} (largest entry "
                    f"{scale:.3g}); loss {loss.item():.6f} vs {ref_loss.item():.6f}")
        return None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _functional_forward(params, x):
    w1, b1, w2, b2, f1w, f1b, f2w, f2b, f3w, f3b = params
    x = F.max_pool2d(F.relu(F.conv2d(x, w1, b1)), 2, 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, w2, b2)), 2, 2)
    x = F.relu(F.linear(torch.flatten(x, 1), f1w, f1b))
    x = F.relu(F.linear(x, f2w, f2b))
    return F.linear(x, f3w, f3b)
