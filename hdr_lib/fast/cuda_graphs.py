"""CUDA graphs for the fast path: a whole epoch of training steps (or one step) captured once, then replayed.

At batch 64 LeNet-5's step is a few microseconds of GPU work per kernel (two kernels with hdr_lib.fast.triton_step,
many with PyTorch's own): launched one by one from Python, the CPU's launch overhead, not the GPU, would set the
pace. Captured as a graph, a replay launches them all with one call. Capturing a whole epoch (every step: batch
gather, forward, backward, SGD, and the loss kept) leaves one launch per epoch. What a graph reads is fixed at
capture: the batch order lives in a static device tensor, rewritten before each replay, and the learning rate is a
device tensor written in place each epoch.

Capture changes nothing in the experiment: the warm-up steps it needs (cuDNN's algorithm search, cuBLAS's
workspace, the optimiser's buffers, a compiled model's first calls) run on a side stream, and the weights and
momentum buffers are put back afterwards, in place, since the graph holds those very tensors.
"""

from __future__ import annotations

from typing import Callable

import torch

# What the CUDA fast path ran, by the name its records give it (`execution.cuda_step`).
CUDA_STEPS = {
    "graph-epoch": "each full epoch (every step's batch gather, forward, backward and fused SGD) captured once as "
                   "one CUDA graph and replayed once per epoch",
    "graph-step": "one full-batch training step captured as a CUDA graph and replayed once per batch (a smaller "
                  "last batch runs eagerly)",
    "eager": "each step's kernels launched one by one from Python",
}


def batches(order: torch.Tensor, batch_size: int, steps: int) -> list[torch.Tensor]:
    """The index slices of the first `steps` batches of `order` (the last may be smaller): views, so a graph
    captured over them reads whatever `order` holds when it replays."""
    n = order.shape[0]
    return [order[i * batch_size:min((i + 1) * batch_size, n)] for i in range(steps)]


class Snapshot:
    """The weights and momentum buffers at one moment, to put back in place after warm-up and capture.

    A buffer missing at the snapshot is put back as zeros: SGD's first step sets buf = grad, and
    0.9 * 0 + grad is the same number, so the restored run follows the uninterrupted one exactly."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [None if (b := optimizer.state.get(p, {}).get("momentum_buffer")) is None else b.clone()
                        for p in model.parameters()]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved, saved_buf in zip(self.model.parameters(), self.params, self.buffers):
            p.copy_(saved)
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.copy_(saved_buf) if saved_buf is not None else buf.zero_()


def capture(work: Callable[[], object], warmup: Callable[[], None]):
    """PyTorch's whole-network recipe: `warmup()` on a side stream, then `work()` captured; returns the graph and
    what `work()` returned (its tensors are the graph's static outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        warmup()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = work()
    return graph, out
