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


def brief(exc: Exception) -> str:
    """An exception as a record gives it: its type and the first line of its message, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class Graphed:
    """A fast step (`hdr_lib.fast.steps.FastStep`) on CUDA, with its full epochs replayed as one captured graph
    and, for epochs cut short by `max_steps` (or where the epoch graph could not be captured), a one-step graph
    replayed per full batch; with `capture` off, or where capture fails (the record says why), steps run eagerly.
    `how["cuda_steps"]` counts how each step ran (`CUDA_STEPS`)."""

    def __init__(self, step, *, capture: bool, full_epochs: bool, partial_epochs: bool):
        self.inner, self.batch_size, self.device = step, step.batch_size, step.device
        self.epoch_graph = self.step_graph = None
        self.steps_run = {name: 0 for name in CUDA_STEPS}
        self.setup_seconds = dict(step.setup_seconds)
        errors = self._capture(full_epochs, partial_epochs) if capture and (full_epochs or partial_epochs) else []
        self.how = {**step.how, "cuda_steps": self.steps_run, "cuda_graph_error": "; ".join(errors) or None}
        step.captured = self.epoch_graph is not None or self.step_graph is not None

    def _capture(self, full_epochs: bool, partial_epochs: bool) -> list[str]:
        """Capture the graphs the run will replay; the weights and momentum buffers are put back either way.
        Returns why a capture failed, if one did."""
        s, b = self.inner, self.batch_size
        snapshot = Snapshot(s.model, s.optimizer)
        self.order_static = torch.arange(s.n, device=self.device)  # what the graphs read their batches from
        errors = []

        def warmup():
            for _ in range(3):
                s.train_on(self.order_static[:b])
            for size in s.batch_shapes()[1:]:
                s.train_on(self.order_static[s.n - size:])

        try:
            if full_epochs:
                steps = batches(self.order_static, b, s.steps_per_epoch)
                try:
                    self.epoch_graph, self.epoch_losses = capture(
                        lambda: torch.stack([s.train_on(idx) for idx in steps]), warmup)
                except Exception as exc:  # noqa: BLE001 (any failure to capture: say why, go on without)
                    errors.append(f"epoch graph: {self._after_failed_capture(exc)}")
                warmup = lambda: None  # noqa: E731  (warm already)
            if (partial_epochs or self.epoch_graph is None) and s.n >= b:
                try:
                    self.step_graph, self.step_loss = capture(lambda: s.train_on(self.order_static[:b]), warmup)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"step graph: {self._after_failed_capture(exc)}")
        finally:
            snapshot.restore()
        return errors

    def _after_failed_capture(self, exc: Exception) -> str:
        """Leave no trace of a capture that failed (its gradients, the capture stream); return its reason."""
        self.inner.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":  # a failed capture_end leaves the capture stream current
            torch.cuda.set_stream(torch.cuda.default_stream(self.device))
        return brief(exc)

    def run_epoch(self, order, limit, on_step):
        order = order.to(self.device, non_blocking=True)
        if self.epoch_graph is not None and limit == self.inner.steps_per_epoch:
            self.order_static.copy_(order)
            self.epoch_graph.replay()
            self.steps_run["graph-epoch"] += limit
            on_step(limit)
            return self.epoch_losses, self.inner.weights(limit)
        losses = torch.empty(limit, device=self.device)
        for i, idx in enumerate(batches(order, self.batch_size, limit)):
            if self.step_graph is not None and idx.shape[0] == self.batch_size:
                self.order_static[:self.batch_size].copy_(idx)
                self.step_graph.replay()
                self.steps_run["graph-step"] += 1
                losses[i] = self.step_loss
            else:
                self.steps_run["eager"] += 1
                losses[i] = self.inner.train_on(idx)
            on_step(1)
        return losses, self.inner.weights(limit)
