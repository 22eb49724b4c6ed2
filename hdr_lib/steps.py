"""The one training-step interface (`Step`) and its plainest implementation, the reference path (`ReferenceStep`).

`hdr_lib.train.train` runs every epoch through a `Step`: the reference path here, written as PyTorch's examples
write a training loop, or one of the fast ways that `hdr_lib.fast.choose` picks. A step says what it cost once
(`setup_seconds`) and how it ran (`how`: short keys for the record's `execution`)."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch.nn import functional as F

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config, device: torch.device):
    """Mixed precision (bfloat16 or float16) when `config.amp` says so; with "off" a no-op: the paper's float32. No
    cast cache: a CUDA graph must not capture one (PyTorch's note on graphs and autocast)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(config.amp, torch.bfloat16), enabled=config.amp != "off",
                          cache_enabled=False)


def grad_scaler(config, device: torch.device):
    """float16's gradient scaler (float16 gradients underflow without one); None for bfloat16 and float32."""
    return torch.amp.GradScaler(device.type) if config.amp == "fp16" else None


class Step(ABC):
    """Runs the optimiser steps of an epoch. `setup_seconds`: one-time costs, timed apart from training (a build,
    a compilation, a graph capture). `how`: how it ran, as short keys for the record's `execution`."""

    setup_seconds: dict
    how: dict

    @abstractmethod
    def run_epoch(self, order: torch.Tensor, limit: int, on_step: Callable[[int], object]):
        """The first `limit` batches of the training set in the order `order` (indices), one optimiser step each;
        `on_step(n)` after every n steps. Returns (each step's loss, each step's batch size), as tensors."""


class ReferenceStep(Step):
    """The plain PyTorch loop: a DataLoader over torchvision's MNIST, model(x), loss.backward(), optimizer.step()."""

    def __init__(self, model, optimizer, dataset, batch_size: int, config, device, dist_ctx=None):
        from hdr_lib import distributed

        self.net = distributed.wrap_reference(dist_ctx, model) if dist_ctx is not None else model
        self.optimizer, self.dataset, self.batch_size = optimizer, dataset, batch_size
        self.config, self.device, self.dist = config, device, dist_ctx
        self.scaler = grad_scaler(config, device)
        self.setup_seconds, self.how = {}, {}

    def run_epoch(self, order, limit, on_step):
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=[int(j) for j in order])
        losses, counts = [], []
        for x, y in itertools.islice(loader, limit):
            x, y = x.to(self.device), y.to(self.device)
            with autocast(self.config, self.device):
                loss = F.cross_entropy(self.net(x), y)
            self.optimizer.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            losses.append(loss.item())
            counts.append(x.shape[0])
            on_step(1)
        losses = torch.tensor(losses)
        if self.dist is not None:  # each rank's shard losses -> the global batches' losses
            losses = self.dist.mean_losses(losses)
        return losses, torch.tensor(counts, dtype=torch.float32)
