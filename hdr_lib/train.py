"""Timed training on CPU or CUDA: one experiment, two code paths ("fast" and "reference"), checkpoints, records."""

from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from hdr_lib import data as mnist
from hdr_lib import checkpoint as checkpoints
from hdr_lib import distributed, paths
from hdr_lib.fast import cuda_graphs, torch_cpu, native, triton_step
from hdr_lib.config import ConfigError, TrainConfig, check
from hdr_lib.measure.machine import CpuMeter, NvmlSampler, environment, peak_rss_bytes, resolve_device
from hdr_lib.model import LeNet5, build_model
from hdr_lib.measure.records import SCHEMA, write_json_atomic
from hdr_lib.measure.timing import Stopwatch, synchronize

CHECKPOINT_NAME = checkpoints.NAME
TRAIN_STEPS_LABEL = "hdr.train_steps"  # marks an epoch's optimiser steps for hdr_lib.measure.profiling


def batch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the training set for one epoch: a function of (seed, epoch) alone, made on the CPU,
    so every device and both paths see the same batches, and a resumed run needs no generator state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def init_model(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Initial weights drawn on the CPU from the seed, then moved: the same on every device (and every rank)."""
    torch.manual_seed(config.seed)
    return build_model(config.model, config.variant).to(device)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step decay (our reading of §3.4): lr * gamma ** floor((epoch - 1) / step), epochs counted from 1."""
    return config.lr * config.lr_gamma ** ((epoch - 1) // config.lr_step_epochs)


@dataclass
class Run:
    """The state of one training run as it goes; `record()` turns it into the JSON record."""

    config: TrainConfig
    device: torch.device
    env: dict
    epochs: list = field(default_factory=list)
    setup_seconds: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    status: str = "incomplete"
    resumed_from_epoch: int | None = None

    def record(self) -> dict:
        config = self.config.as_dict()
        config["device_requested"] = config["device"]
        config["device"] = self.device.type
        total = sum(e["train_seconds"] for e in self.epochs)
        return {
            "schema": SCHEMA,
            "kind": "train",
            "config": config,
            "deviations_from_paper": self.config.deviations(),
            "environment": self.env,
            "epochs": self.epochs,
            "total_train_seconds": total if self.epochs else None,
            "total_eval_seconds": sum(e["eval_seconds"] for e in self.epochs) if self.epochs else None,
            "setup_seconds": self.setup_seconds,
            "test_accuracy": self.epochs[-1]["test_accuracy"] if self.epochs else None,
            "status": self.status,
            "resumed_from_epoch": self.resumed_from_epoch,
            **self.extra,
        }


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    if os.environ.get("HDR_PROGRESS", "").lower() in ("0", "false", "no", "off"):
        return False
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        return True
    return "ipykernel" in sys.modules


class _NoBar:
    """Stands in for tqdm where it is not installed (the GPU machine needs only torch and torchvision)."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _bar(enabled: bool, **kwargs):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 2000) -> float:
    """Test accuracy in percent on float images [N, 1, 28, 28] already on the model's device."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, images.shape[0], batch):
        logits = model(images[start:start + batch])
        correct += (logits.argmax(1) == labels[start:start + batch]).sum()
    model.train(was_training)
    return 100.0 * correct.item() / images.shape[0]


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities for float images [N, 1, 28, 28]."""
    model.eval()
    device = next(model.parameters()).device
    return torch.softmax(model(images.to(device)), dim=1).cpu()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: TrainConfig, device: torch.device):
    """Mixed precision (bfloat16 or float16) when `config.amp` says so; with "off" a no-op: the paper's float32. No
    cast cache: a CUDA graph must not capture one (PyTorch's note on graphs and autocast)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(config.amp, torch.bfloat16), enabled=config.amp != "off",
                          cache_enabled=False)


def grad_scaler(config: TrainConfig, device: torch.device):
    """float16's gradient scaler (float16 gradients underflow without one); None for bfloat16 and float32."""
    return torch.amp.GradScaler(device.type) if config.amp == "fp16" else None


def _amp_note(config: TrainConfig, device: torch.device, fast: bool) -> str | None:
    """What mixed precision ran as, and why there: the record's `execution.amp_step`."""
    if config.amp == "off":
        return None
    if not fast:
        return f"the module with autograd under {config.amp} autocast (the reference path)"
    if device.type == "cpu":
        return (f"the module's forward pass with autograd under {config.amp} autocast: the native C++ step and the "
                "explicit step compute in float32 only")
    return (f"PyTorch's kernels under {config.amp} autocast: the Triton step computes in float32 only"
            + ("; no CUDA graph, since the gradient scaler decides on the host whether to step" if config.amp == "fp16"
               else ""))


# What the fast path runs for a step on the CPU, by the name its records give it (`execution.cpu_step`).
CPU_STEPS = {
    "native": "hdr_lib.fast.native: the loss and gradients in one C++ operator compiled for this CPU (each convolution "
              "with its ReLU and pooling as one hand-vectorised loop; the fully connected layers through ATen), "
              "no autograd graph",
    "explicit": "hdr_lib.fast.torch_cpu.train_step: conv1 computed per pooling corner, pooling as elementwise maxima, "
                "gradients written out layer by layer (no autograd graph)",
    "compiled": "the module compiled by torch.compile (Inductor) with autograd",
    "forward": "hdr_lib.fast.torch_cpu.forward with autograd: conv1 computed per pooling corner, pooling as elementwise "
               "maxima",
    "module": "the module's forward with autograd",
}


# Which kernels the CUDA fast path's step runs (`execution.cuda_kernels`).
CUDA_KERNELS = {
    "triton": "hdr_lib.fast.triton_step: two Triton kernels per step (one program per image for the forward and backward "
              "pass, then the batch's gradient sums with SGD and momentum), gradients checked against autograd's "
              "before the run",
    "aten": "PyTorch's own CUDA kernels (cuDNN convolutions, cuBLAS matrix products, elementwise kernels, fused "
            "SGD)",
}


def _brief(exc: Exception) -> str:
    """An exception as a record gives it: its type and the first line of its message, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class _FastSteps:
    """The fast path's training step: data already on the device, batches cut by index, no host sync,
    fused SGD; on the CPU `hdr_lib.fast.native`'s operator where it builds, else `hdr_lib.fast.torch_cpu`'s explicit step (and
    its forward pass with autograd under the bfloat16, channels-last and compile options); on CUDA
    `hdr_lib.fast.triton_step`'s two kernels where they apply and pass their check (else PyTorch's kernels), each full
    epoch replayed as one CUDA graph (`hdr_lib.fast.cuda_graphs`), and an epoch cut short by `max_steps` replaying a
    one-step graph per batch.

    One-time costs are timed here, apart from training, in `setup_seconds`: building or loading the native step,
    compiling and checking the Triton kernels, compiling the model, capturing the graphs."""

    def __init__(self, model, optimizer, x_all, y_all, batch_size, amp_context, *, options_on, compiled,
                 use_graph, full_epochs, partial_epochs, triton=False, tf32=False, scaler=None, dist_ctx=None):
        self.model, self.optimizer, self.amp = model, optimizer, amp_context
        self.scaler, self.dist, self._dist_state = scaler, dist_ctx, {}  # float16's scaler; the data-parallel run
        self.x_all, self.y_all, self.batch_size = x_all, y_all, batch_size
        self.device = x_all.device
        self.n = x_all.shape[0]
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        self.setup_seconds = {}
        on_cpu = self.device.type == "cpu"
        rearranged = torch_cpu.applies(model, x_all[:1])  # on the CPU only
        without_options = rearranged and not options_on and not compiled and not triton
        with Stopwatch() as sw_native:  # the first call in a process loads the library, or builds it once
            self.native = without_options and native.applies(model, x_all[:1]) and native.use()
        self.setup_seconds["native_cpu_step"] = sw_native.seconds if self.native else 0.0
        self.native_unavailable = native.reason() if without_options and not self.native else None
        self.native_step = native.TrainStep(model, optimizer) if self.native else None
        if self.native and dist_ctx is not None:  # the all-reduce between the operator's gradients and the update
            self.native_step = distributed.NativeStep(self.native_step, dist_ctx)
        # The explicit step updates the weights itself: under data parallelism the forward pass with autograd runs.
        self.explicit = without_options and not self.native and dist_ctx is None
        if compiled:
            self.forward = torch.compile(model, dynamic=False)
        else:
            self.forward = (lambda x: torch_cpu.forward(model, x)) if rearranged else model
        kind = ("native" if self.native else "explicit" if self.explicit else "compiled" if compiled
                else "forward" if rearranged else "module")
        self.cpu_step = CPU_STEPS[kind] if on_cpu else None  # what the record names
        with Stopwatch(self.device) as sw_triton:  # Triton compiles the kernels at their first launch
            self.triton_step, self.triton_unavailable = None, None
            if triton:
                self._try_triton(options_on or compiled or tf32)
        self.setup_seconds["triton_step"] = sw_triton.seconds if self.triton_step is not None else 0.0
        self.cuda_kernels = CUDA_KERNELS["triton" if self.triton_step is not None else "aten"]
        self.captured = False
        self.epoch_graph = self.step_graph = None
        self.graph_error = None
        self.steps_run = {name: 0 for name in cuda_graphs.CUDA_STEPS}  # CUDA only: which way each step ran
        with Stopwatch(self.device) as sw_compile:
            if compiled:
                self._warm_compiled()
        self.setup_seconds["compile"] = sw_compile.seconds if compiled else 0.0
        with Stopwatch(self.device) as sw_capture:
            if use_graph and (full_epochs or partial_epochs):
                self._capture(full_epochs, partial_epochs)
        self.setup_seconds["cuda_graph_capture"] = sw_capture.seconds if use_graph else 0.0

    def _batch_shapes(self) -> list[int]:
        """The batch sizes an epoch has: the full one, and a smaller last one where the set does not divide."""
        return sorted({min(self.batch_size, self.n), self.n - (self.steps_per_epoch - 1) * self.batch_size},
                      reverse=True)

    def _try_triton(self, options_on: bool) -> None:
        """Use hdr_lib.fast.triton_step where it applies and its first gradient matches autograd's; else say why."""
        if options_on:
            self.triton_unavailable = ("the Triton step computes in IEEE float32, without the amp, channels-last, "
                                       "tf32 and compile options")
            return
        self.triton_unavailable = triton_step.reason_not_applicable(self.model, self.optimizer, self.x_all)
        if self.triton_unavailable is not None:
            return
        try:
            step = triton_step.TrainStep(self.model, self.optimizer, self.batch_size)
            first = torch.arange(self.batch_size, device=self.device)
            self.triton_unavailable = step.check(self.x_all, self.y_all, first)
        except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile here: say why, use ATen's)
            self.triton_unavailable = _brief(exc)
        if self.triton_unavailable is None:
            self.triton_step = step

    def _train_on(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the images `idx` names: gather, forward, backward, update; returns the loss, on the device."""
        if self.triton_step is not None:
            return self.triton_step.step(self.x_all, self.y_all, idx)
        x = self.x_all.index_select(0, idx)
        y = self.y_all.index_select(0, idx)
        if self.native:
            return self.native_step(x, y)
        if self.explicit:
            return torch_cpu.train_step(self.model, self.optimizer, x, y)
        with self.amp():
            loss = F.cross_entropy(self.forward(x), y)
        # While capturing, the gradients are made anew by each step; after, they live in a graph's memory and
        # an eager step zeroes them in place.
        self.optimizer.zero_grad(set_to_none=not self.captured)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.dist is not None:
            loss = distributed.all_reduce_autograd(self.dist, self.model, loss, self._dist_state)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach()

    def _warm_compiled(self) -> None:
        """The compiled model's first calls (where compilation happens), once per batch shape, forward and
        backward: no optimiser step, so the weights do not move."""
        for size in self._batch_shapes():
            idx = torch.arange(size, device=self.device)
            with self.amp():
                loss = F.cross_entropy(self.forward(self.x_all.index_select(0, idx)), self.y_all.index_select(0, idx))
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _capture(self, full_epochs: bool, partial_epochs: bool) -> None:
        """Capture the graphs the run will replay: the epoch graph for full epochs, the step graph for epochs cut
        short, or for every epoch where the epoch graph could not be captured. Where capture fails (an operation
        this torch cannot capture, say), the record says why and those steps run eagerly. The weights and
        momentum buffers are put back either way."""
        b = self.batch_size
        snapshot = cuda_graphs.Snapshot(self.model, self.optimizer)
        self.order_static = torch.arange(self.n, device=self.device)  # what the graphs read their batches from
        errors = []

        def warmup():
            for _ in range(3):
                self._train_on(self.order_static[:b])
            for size in self._batch_shapes()[1:]:
                self._train_on(self.order_static[self.n - size:])

        try:
            if full_epochs:
                steps = cuda_graphs.batches(self.order_static, b, self.steps_per_epoch)
                try:
                    self.epoch_graph, self.epoch_losses = cuda_graphs.capture(
                        lambda: torch.stack([self._train_on(idx) for idx in steps]), warmup)
                except Exception as exc:  # noqa: BLE001 (any failure to capture: say why, go on without)
                    errors.append(f"epoch graph: {self._after_failed_capture(exc)}")
                warmup = lambda: None  # noqa: E731  (warm already)
            if (partial_epochs or self.epoch_graph is None) and self.n >= b:
                try:
                    self.step_graph, self.step_loss = cuda_graphs.capture(
                        lambda: self._train_on(self.order_static[:b]), warmup)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"step graph: {self._after_failed_capture(exc)}")
        finally:
            snapshot.restore()
        self.graph_error = "; ".join(errors) or None
        self.captured = self.epoch_graph is not None or self.step_graph is not None

    def _after_failed_capture(self, exc: Exception) -> str:
        """Leave no trace of a capture that failed (its gradients, the capture stream); return its reason."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":  # a failed capture_end leaves the capture stream current
            torch.cuda.set_stream(torch.cuda.default_stream(self.device))
        return _brief(exc)

    def run_epoch(self, order: torch.Tensor, limit: int, on_step: Callable[[int], object]) -> torch.Tensor:
        """The first `limit` steps of an epoch in the batch order `order` (on the device); returns their losses."""
        if self.epoch_graph is not None and limit == self.steps_per_epoch:
            self.order_static.copy_(order)
            self.epoch_graph.replay()
            self.steps_run["graph-epoch"] += limit
            on_step(limit)
            return self.epoch_losses
        losses = torch.empty(limit, device=self.device)
        for i, idx in enumerate(cuda_graphs.batches(order, self.batch_size, limit)):
            losses[i] = self.step(idx)
            on_step(1)
        return losses

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        if self.step_graph is not None and idx.shape[0] == self.batch_size:
            self.order_static[:self.batch_size].copy_(idx)
            self.step_graph.replay()
            self.steps_run["graph-step"] += 1
            return self.step_loss
        self.steps_run["eager"] += 1
        return self._train_on(idx)


def _make_optimizer(model, config: TrainConfig, device: torch.device, fast: bool, lr_tensor: bool):
    lr = torch.tensor(config.lr, device=device) if lr_tensor else config.lr
    kwargs = {"fused": True} if fast else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)
    return optimizer, scheduler


def _set_lr(optimizer, lr: float, tensors: list[torch.Tensor] | None = None) -> None:
    """Write the epoch's lr. A tensor lr (`tensors`, one per param group; else the groups' own) is written in place,
    since a captured CUDA graph and the Triton step read that very tensor, and put back in its group should
    anything (a scheduler of another torch version, say) have put a number there."""
    for i, group in enumerate(optimizer.param_groups):
        tensor = tensors[i] if tensors is not None else group["lr"]
        if isinstance(tensor, torch.Tensor):
            tensor.fill_(lr)
            group["lr"] = tensor
        else:
            group["lr"] = lr


def _apply_backend_settings(config: TrainConfig, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
        torch.backends.cudnn.benchmark = not config.deterministic
    torch.use_deterministic_algorithms(config.deterministic, warn_only=False)
    if config.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def train(
    config: TrainConfig,
    *,
    data: mnist.MNISTTensors | None = None,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict, dict], None] | None = None,
    max_steps: int | None = None,
    keep_step_losses: bool = False,
    return_model: bool = False,
    dist_ctx: distributed.Context | None = None,
):
    """Train the paper's CNN and return its record (and the model if `return_model`).

    Everything a user can get wrong is checked before any work: the settings, the device, the data, the
    output paths, the checkpoint to resume from. Per epoch the record gets train loss, training seconds (no
    evaluation, no data loading), test accuracy and evaluation seconds; with `out`, it is rewritten after every
    epoch ("incomplete") and once more at the end ("complete"), so an interrupted run leaves what it did. With
    `checkpoint_dir`, the folder is locked for the run (hdr_lib.checkpoint.FolderLock): a second run on it is
    refused.
    """
    writer = dist_ctx is None or dist_ctx.is_writer  # under torchrun only rank 0 writes, and so locks
    lock = checkpoints.FolderLock(checkpoint_dir) if checkpoint_dir is not None and writer else None
    try:
        return _train(config, data=data, data_root=data_root, out=out, checkpoint_dir=checkpoint_dir, resume=resume,
                      progress=progress, on_epoch=on_epoch, max_steps=max_steps, keep_step_losses=keep_step_losses,
                      return_model=return_model, lock=lock, dist_ctx=dist_ctx)
    finally:
        if lock is not None:
            lock.release()


def _train(
    config: TrainConfig,
    *,
    data: mnist.MNISTTensors | None = None,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict, dict], None] | None = None,
    max_steps: int | None = None,
    keep_step_losses: bool = False,
    return_model: bool = False,
    lock: checkpoints.FolderLock | None = None,
    dist_ctx: distributed.Context | None = None,
):
    """The body of `train`, which holds `lock` (the checkpoint folder's) and lets it go however this ends."""
    config.validate()
    if max_steps is not None:
        max_steps = check("max_steps", max_steps)
    device = resolve_device(config.device)
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 runs on CUDA only (float16 with a gradient scaler); on the CPU use amp bf16")
    if dist_ctx is not None:  # data parallelism: refuse a batch that does not split, before any work; rank 0 writes
        dist_ctx.check(config.batch_size)
        out = out if dist_ctx.is_writer else None
    out = paths.output_file(out, "out") if out is not None else None
    checkpoint_dir = paths.output_folder(checkpoint_dir, "checkpoint_dir") if checkpoint_dir is not None else None
    if resume and checkpoint_dir is None:
        raise ConfigError("resume needs a checkpoint directory (--checkpoint-dir)")
    if lock is not None and checkpoint_dir.is_dir():
        lock.acquire()  # before reading its checkpoint: no other run may be writing it
    checkpoint = None
    if resume:
        checkpoint = _load_checkpoint(checkpoint_dir, config)

    run = Run(config=config, device=device, env=environment(device))
    run.extra["numerics"] = _apply_backend_settings(config, device)

    with Stopwatch() as sw_load:
        if data is None and config.path == "fast":
            data = mnist.load_mnist(data_root)
        elif config.path == "reference":
            train_ds, test_ds = mnist.torchvision_datasets(data_root if data is None else data.root)
    run.setup_seconds["data_load"] = sw_load.seconds
    if dist_ctx is not None:
        with Stopwatch() as sw_join:
            dist_ctx.start(device)
        run.setup_seconds["process_group"] = sw_join.seconds

    model = init_model(config, device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    fast = config.path == "fast"
    # No CUDA graph under float16's gradient scaler (it decides on the host) or data parallelism (a collective a step)
    use_graph = fast and device.type == "cuda" and config.cuda_graph and config.amp != "fp16" and dist_ctx is None
    scaler = grad_scaler(config, device)
    net = distributed.wrap_reference(dist_ctx, model) if dist_ctx is not None and not fast else model
    local_batch = config.batch_size // (dist_ctx.world_size if dist_ctx is not None else 1)
    # On the CUDA fast path lr is a device tensor: a graph and the Triton step read it there at every step.
    lr_tensor = fast and device.type == "cuda"
    optimizer, scheduler = _make_optimizer(model, config, device, fast, lr_tensor=lr_tensor)
    start_epoch = 1
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if lr_tensor:  # the checkpoint holds lr as a CPU value; the step needs a device tensor it can read
                for group in optimizer.param_groups:
                    group["lr"] = torch.tensor(float(group["lr"]), device=device)
            torch.set_rng_state(checkpoint["rng_cpu"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise checkpoints.CheckpointError(
                f"checkpoint {checkpoint_dir / CHECKPOINT_NAME} does not fit this run's model, optimiser or "
                f"scheduler ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); delete it to start "
                f"afresh") from None
        run.epochs = checkpoint["epochs"]
        run.setup_seconds = {**checkpoint["setup_seconds"], **run.setup_seconds}
        start_epoch = checkpoint["epoch"] + 1
        run.resumed_from_epoch = checkpoint["epoch"]
    lr_tensors = [group["lr"] for group in optimizer.param_groups] if lr_tensor else None

    # Test images for evaluation, on the device, in both paths (evaluation is timed apart).
    with Stopwatch(device) as sw_move:
        if fast:
            x_all = mnist.to_float(data.train_images, device).contiguous(memory_format=layout)
            y_all = data.train_labels.to(device)
            x_test = mnist.to_float(data.test_images, device).contiguous(memory_format=layout)
            y_test = data.test_labels.to(device)
        else:
            x_test = mnist.to_float(test_ds.data, device).contiguous(memory_format=layout)
            y_test = test_ds.targets.long().to(device)
    run.setup_seconds["to_device"] = sw_move.seconds

    n_train = x_all.shape[0] if fast else len(train_ds)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    # The steps this call will run, epoch after epoch: max_steps may cut one short (counted, not listed).
    total_steps = (config.epochs - start_epoch + 1) * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    if fast:
        stepper = _FastSteps(model, optimizer, x_all, y_all, local_batch, lambda: autocast(config, device),
                             options_on=config.amp != "off" or config.channels_last, compiled=config.compile,
                             triton=config.triton and device.type == "cuda", tf32=config.tf32,
                             use_graph=use_graph, full_epochs=total_steps >= steps_per_epoch,
                             partial_epochs=total_steps % steps_per_epoch != 0, scaler=scaler, dist_ctx=dist_ctx)
        run.setup_seconds.update(stepper.setup_seconds)
    on_cuda = device.type == "cuda"
    run.extra["execution"] = {"cuda_graph": use_graph, "fused_sgd": fast, "steps_per_epoch": steps_per_epoch,
                              "compiled": config.compile and fast,
                              "cpu_step": stepper.cpu_step if fast else None,
                              "native_unavailable": stepper.native_unavailable if fast else None,
                              # CUDA fast path: how many steps ran each way (cuda_graphs.CUDA_STEPS), and why
                              # no graph was captured where capture failed
                              "cuda_steps": stepper.steps_run if fast and on_cuda else None,
                              "cuda_graph_error": stepper.graph_error if fast and on_cuda else None,
                              "cuda_kernels": stepper.cuda_kernels if fast and on_cuda else None,
                              "triton_unavailable": stepper.triton_unavailable if fast and on_cuda else None,
                              "amp_bfloat16": config.amp == "bf16", "amp": config.amp,
                              "amp_step": _amp_note(config, device, fast), "model": config.model,
                              "channels_last": config.channels_last}
    if dist_ctx is not None:
        run.extra["distributed"] = dist_ctx.record(sum(p.numel() for p in model.parameters()))
        run.extra["distributed"]["batch_per_rank"] = local_batch

    show = _progress_enabled(progress)
    cpu_meter = CpuMeter()
    peak_alloc = peak_reserved = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sampler_cm = NvmlSampler(device) if device.type == "cuda" else None
    step_losses_all: list[torch.Tensor] = []
    model.train()
    if lock is not None:
        lock.acquire()  # now that the run is sure to start: this makes the folder where it did not exist
    if out is not None:
        write_json_atomic(out, run.record())
    epoch_bar = _bar(show, total=config.epochs, initial=start_epoch - 1, desc=f"train {device.type}/{config.path}",
                     unit="epoch")
    try:
        if sampler_cm is not None:
            sampler_cm.__enter__()
        for epoch in range(start_epoch, config.epochs + 1):
            limit = min(steps_per_epoch, total_steps - (epoch - start_epoch) * steps_per_epoch)
            if limit <= 0:
                break
            order = batch_order(config.seed, epoch, n_train)
            if dist_ctx is not None:  # this rank's shard of each global batch
                order = dist_ctx.shard(order, config.batch_size, limit)
            _set_lr(optimizer, lr_at(config, epoch), lr_tensors)
            batch_bar = _bar(show, total=limit, leave=False, desc=f"epoch {epoch}", unit="batch")
            with Stopwatch(device) as sw_train, torch.profiler.record_function(TRAIN_STEPS_LABEL):
                if fast:
                    losses = stepper.run_epoch(order.to(device, non_blocking=True), limit, batch_bar.update)
                    weights = torch.tensor([min(config.batch_size, n_train - i * config.batch_size)
                                            for i in range(limit)], dtype=torch.float32)
                else:
                    sampler = [int(j) for j in order]
                    loader = torch.utils.data.DataLoader(train_ds, batch_size=local_batch, sampler=sampler)
                    values, counts = [], []
                    for i, (x, y) in enumerate(loader):
                        if i >= limit:
                            break
                        x, y = x.to(device).contiguous(memory_format=layout), y.to(device)
                        with autocast(config, device):
                            loss = F.cross_entropy(net(x), y)
                        optimizer.zero_grad()
                        if scaler is not None:
                            scaler.scale(loss).backward()
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            loss.backward()
                            optimizer.step()
                        values.append(loss.item())
                        counts.append(x.shape[0])
                        batch_bar.update()
                    losses, weights = torch.tensor(values), torch.tensor(counts, dtype=torch.float32)
                    if dist_ctx is not None:  # each rank's shard losses -> the global batches' losses
                        losses = dist_ctx.mean_losses(losses)
            batch_bar.close()
            lr_used = lr_at(config, epoch)
            scheduler.step()
            losses_cpu = losses.float().cpu()
            if keep_step_losses:
                step_losses_all.append(losses_cpu)
            with Stopwatch(device) as sw_eval:
                accuracy = evaluate(model, x_test, y_test)
            entry = {
                "epoch": epoch,
                "train_loss": float((losses_cpu * weights).sum() / weights.sum()),
                "train_seconds": sw_train.seconds,
                "test_accuracy": accuracy,
                "eval_seconds": sw_eval.seconds,
                "lr": lr_used,
                "steps": limit,
            }
            if dist_ctx is not None:
                entry.update(dist_ctx.take_epoch_stats())
                run.extra["distributed"]["communication_seconds"] = sum(
                    e.get("communication_seconds", 0.0) for e in run.epochs + [entry])
            run.epochs.append(entry)
            # The record first, then the checkpoint: a run killed between the two resumes from the previous
            # checkpoint and redoes this epoch, but a checkpoint never gets ahead of the record it belongs to.
            if out is not None:
                write_json_atomic(out, run.record())
            if checkpoint_dir is not None and (dist_ctx is None or dist_ctx.is_writer):
                _save_checkpoint(checkpoint_dir, config, epoch, model, optimizer, scheduler, run)
            epoch_bar.update()
            epoch_bar.set_postfix(loss=f"{entry['train_loss']:.4f}", acc=f"{accuracy:.2f}%")
            if on_epoch is not None:
                on_epoch(entry, run.record())
            if not math.isfinite(entry["train_loss"]):
                run.extra["diverged"] = f"train loss became {entry['train_loss']} in epoch {epoch}; lr too high?"
                break
        run.status = "complete" if len(run.epochs) == config.epochs and "diverged" not in run.extra else "incomplete"
    finally:
        epoch_bar.close()
        if sampler_cm is not None:
            sampler_cm.__exit__(None, None, None)
        if device.type == "cuda":
            synchronize(device)
            peak_alloc = torch.cuda.max_memory_allocated(device)
            peak_reserved = torch.cuda.max_memory_reserved(device)
        run.extra["memory"] = {
            "peak_rss_bytes": peak_rss_bytes(),
            "cuda_peak_allocated_bytes": peak_alloc,
            "cuda_peak_reserved_bytes": peak_reserved,
            "cuda_reason": None if device.type == "cuda" else "CPU run: no CUDA allocator",
        }
        run.extra["utilisation"] = {
            "cpu": cpu_meter.read(),
            "gpu": sampler_cm.result() if sampler_cm is not None else {
                "utilisation_mean_percent": None, "reason": "CPU run: no GPU"},
        }
        if max_steps is not None:
            run.extra["max_steps"] = max_steps
            run.status = "incomplete"
        if out is not None:
            write_json_atomic(out, run.record())
    record = run.record()
    if keep_step_losses:
        record["step_losses"] = torch.cat(step_losses_all).tolist() if step_losses_all else []
    return (record, model) if return_model else record


def _checkpoint_config(config: TrainConfig) -> dict:
    return {k: v for k, v in config.as_dict().items()}


def _save_checkpoint(folder: Path, config, epoch, model, optimizer, scheduler, run: Run) -> None:
    checkpoints.save(folder / CHECKPOINT_NAME, {
        "config": _checkpoint_config(config),
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "epochs": copy.deepcopy(run.epochs),
        "setup_seconds": dict(run.setup_seconds),
    })


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _load_checkpoint(folder: Path, config: TrainConfig) -> dict | None:
    """The checkpoint to resume from, checked (digest, structure, settings) before any work; None when the
    folder holds none (the run starts from epoch 1)."""
    path = folder / CHECKPOINT_NAME
    if not os.path.lexists(path):
        return None
    checkpoint = checkpoints.load(path)
    checkpoints.check_train_state(checkpoint, path, LeNet5(config.variant))
    saved = checkpoint["config"]
    mismatched = {k: (saved.get(k), v) for k, v in _checkpoint_config(config).items() if saved.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
        raise ConfigError(f"checkpoint {path} was made with other settings ({detail}); use the same settings "
                          f"to resume, or another --checkpoint-dir")
    return checkpoint
