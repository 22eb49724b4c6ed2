"""The fast ways to run a training step, each a `hdr_lib.steps.Step`: the data already on the device, each batch
cut from it by index, no host sync, fused SGD. `hdr_lib.fast.choose` picks one; `hdr_lib.fast.cuda_graphs.Graphed`
wraps any of them on CUDA."""

from __future__ import annotations

import math
import time

import torch
from torch.nn import functional as F

from hdr_lib import distributed
from hdr_lib.fast import cuda_graphs, native, threads, torch_cpu
from hdr_lib.steps import Step, autocast


class FastStep(Step):
    """A step on images `x_all` and labels `y_all` already on the device; subclasses compute `step(x, y)`.
    `global_batch`: the batch of the whole run (under data parallelism, `batch_size` is this rank's share)."""

    def __init__(self, model, optimizer, x_all, y_all, batch_size: int, global_batch: int | None = None):
        self.model, self.optimizer = model, optimizer
        self.x_all, self.y_all, self.batch_size = x_all, y_all, batch_size
        self.global_batch = global_batch or batch_size
        self.device, self.n = x_all.device, x_all.shape[0]
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        self.setup_seconds, self.how = {}, {}
        self.captured = False  # set by cuda_graphs.Graphed once a graph holds this step's tensors
        # On the CPU, the thread count is chosen from the CPU time actually available, step by step (threads.py).
        self.governor = threads.Governor() if self.device.type == "cpu" else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_on(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the images `idx` names: gather, forward, backward, update; returns the loss, on the device."""
        return self.step(self.x_all.index_select(0, idx), self.y_all.index_select(0, idx))

    def batch_shapes(self) -> list[int]:
        """The batch sizes an epoch has: the full one, and a smaller last one where the set does not divide."""
        return sorted({min(self.batch_size, self.n), self.n - (self.steps_per_epoch - 1) * self.batch_size},
                      reverse=True)

    def weights(self, limit: int) -> torch.Tensor:
        """The global batch sizes of an epoch's first `limit` steps (an epoch's loss weighs each step by them)."""
        return torch.tensor([min(self.global_batch, self.n - i * self.global_batch) for i in range(limit)],
                            dtype=torch.float32)

    def run_epoch(self, order, limit, on_step):
        order = order.to(self.device, non_blocking=True)
        governor = self.governor
        if governor is None:
            losses = torch.empty(limit, device=self.device)
            for i, idx in enumerate(cuda_graphs.batches(order, self.batch_size, limit)):
                losses[i] = self.train_on(idx)
                on_step(1)
            return losses, self.weights(limit)
        # On the CPU, in blocks: as many steps as the governor runs before its next decision (`run_steps`).
        order = order[:min(self.n, limit * self.batch_size)]
        losses, seconds = torch.empty(limit), torch.empty(limit, dtype=torch.float64)
        threads_before, done = torch.get_num_threads(), 0
        try:
            while done < limit:
                count, stop_after = governor.next_block(limit - done)
                part = order[done * self.batch_size:(done + count) * self.batch_size]
                ran = self.run_steps(part, losses[done:], seconds[done:], stop_after)
                for step_seconds in seconds[done:done + ran].tolist():
                    governor.after_step(step_seconds)
                done += ran
                on_step(ran)
        finally:
            torch.set_num_threads(threads_before)  # whatever runs next in the process (evaluation) gets them all
            governor.end_epoch()
        return losses, self.weights(limit)

    def run_steps(self, order, losses, seconds, stop_after: float) -> int:
        """Steps on the consecutive batches of `order` (a CPU epoch's block), at least one: each step's loss into
        `losses` and its seconds into `seconds`, from their first element; a step slower than `stop_after` seconds is
        the last. Returns the number run. Here one step; the native step runs the whole block in one call."""
        start = time.perf_counter()
        losses[0] = self.train_on(order[:self.batch_size])
        seconds[0] = time.perf_counter() - start
        return 1

    def thread_record(self) -> dict:
        """The record's view of the thread counts (`execution`): per epoch, and why; lists filled as epochs end."""
        if self.governor is None:
            return {}
        reason = threads.REASON if self.governor.active else "one thread: the process may use one CPU"
        return {"threads_per_epoch": self.governor.per_epoch, "thread_reason": reason,
                "thread_steps_per_epoch": self.governor.steps_per_epoch}


class NativeStep(FastStep):
    """`hdr_lib.fast.native`'s C++ operator: loss and gradients without autograd, then the fused SGD kernel; under
    data parallelism with the all-reduce between the two."""

    def __init__(self, *args, dist_ctx=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.native = native.TrainStep(self.model, self.optimizer)
        if dist_ctx is not None:
            self.native = distributed.NativeStep(self.native, dist_ctx)
        # The operator reads a batch's images and labels by index from the whole set, where the set is laid out as
        # it reads it; else each batch is gathered first.
        self.indexed = self.x_all.is_contiguous() and self.y_all.dtype == torch.int64 and self.y_all.is_contiguous()

    def train_on(self, idx):
        if self.indexed:
            return self.native(self.x_all, self.y_all, idx.contiguous())
        return super().train_on(idx)

    def run_steps(self, order, losses, seconds, stop_after):
        """The block in one call of the operator (`TrainStep.steps`), each step timed inside it; on one process, where
        the operator reads the batches by index."""
        if not (self.indexed and isinstance(self.native, native.TrainStep)):
            return super().run_steps(order, losses, seconds, stop_after)
        return self.native.steps(self.x_all, self.y_all, order.contiguous(), self.batch_size, losses, seconds,
                                 stop_after)

    def step(self, x, y):
        return self.native(x, y)


class ExplicitStep(FastStep):
    """`hdr_lib.fast.torch_cpu.train_step`: the gradients written out layer by layer in PyTorch operators."""

    def step(self, x, y):
        return torch_cpu.train_step(self.model, self.optimizer, x, y)


class AutogradStep(FastStep):
    """The forward pass `forward` (the module, torch_cpu's rearranged one, or the compiled module) with autograd,
    under the configuration's autocast, with float16's gradient scaler and the data-parallel all-reduce."""

    def __init__(self, *args, forward, config, scaler=None, dist_ctx=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward, self.config, self.scaler, self.dist, self.dist_state = forward, config, scaler, dist_ctx, {}

    def step(self, x, y):
        with autocast(self.config, self.device):
            loss = F.cross_entropy(self.forward(x), y)
        # While capturing, the gradients are made anew by each step; after, they live in a graph's memory and
        # an eager step zeroes them in place.
        self.optimizer.zero_grad(set_to_none=not self.captured)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.dist is not None:
            loss = distributed.all_reduce_autograd(self.dist, self.model, loss, self.dist_state)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach()

    def warm(self) -> None:
        """The compiled model's first calls (where compilation happens), once per batch shape, forward and
        backward: no optimiser step, so the weights do not move."""
        for size in self.batch_shapes():
            idx = torch.arange(size, device=self.device)
            with autocast(self.config, self.device):
                loss = F.cross_entropy(self.forward(self.x_all.index_select(0, idx)), self.y_all.index_select(0, idx))
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)


class TritonStep(FastStep):
    """`hdr_lib.fast.triton_step`'s two kernels (the gather is in the first), checked against autograd before use."""

    def __init__(self, *args, kernels, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels = kernels

    def train_on(self, idx):
        return self.kernels.step(self.x_all, self.y_all, idx)
