"""What a training run's JSON record holds beyond its epochs, and the instruments that fill it: the run's state
(`Run`), the numerics settings, how each step ran (`execution`), memory and utilisation (`Meters`), progress bars."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from hdr_lib import settings
from hdr_lib.measure.machine import CpuMeter, NvmlSampler, peak_rss_bytes
from hdr_lib.measure.records import SCHEMA
from hdr_lib.measure.timing import synchronize


@dataclass
class Run:
    """The state of one training run as it goes; `record()` turns it into the JSON record."""

    config: object  # hdr_lib.config.TrainConfig
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
        config.setdefault("framework", "pytorch")  # hdr-run/2 names every run's framework; Keras runs set theirs
        done = bool(self.epochs)
        return {
            "schema": SCHEMA,
            "kind": "train",
            "config": config,
            "deviations_from_paper": self.config.deviations(),
            "environment": self.env,
            "epochs": self.epochs,
            "total_train_seconds": sum(e["train_seconds"] for e in self.epochs) if done else None,
            "total_eval_seconds": sum(e["eval_seconds"] for e in self.epochs) if done else None,
            "setup_seconds": self.setup_seconds,
            "test_accuracy": self.epochs[-1]["test_accuracy"] if done else None,
            "status": self.status,
            "resumed_from_epoch": self.resumed_from_epoch,
            **self.extra,
        }


def numerics(config, device: torch.device) -> dict:
    """Set the backend's numerics for the run (IEEE float32 on CUDA, as the paper; deterministic algorithms when
    asked) and return them for the record's `numerics`."""
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = not config.deterministic
    torch.use_deterministic_algorithms(config.deterministic, warn_only=False)
    if config.deterministic and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if cuda else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def amp_note(config, device: torch.device) -> str | None:
    """What mixed precision ran as, and why there: the record's `execution.amp_step`."""
    if config.amp == "off":
        return None
    if config.path == "reference":
        return f"the module with autograd under {config.amp} autocast (the reference path)"
    if device.type == "cpu":
        return (f"the module's forward pass with autograd under {config.amp} autocast: the native C++ step and the "
                "explicit step compute in float32 only")
    return (f"PyTorch's kernels under {config.amp} autocast: the Triton step computes in float32 only"
            + ("; no CUDA graph, since the gradient scaler decides on the host whether to step" if config.amp == "fp16"
               else ""))


def execution(config, device: torch.device, step, reason: str | None, steps_per_epoch: int) -> dict:
    """How the run's steps ran: the record's `execution`, with the step's own short keys (`step.how`)."""
    fast, cuda = config.path == "fast", device.type == "cuda"
    how = step.how if fast else {}
    return {"cuda_graph": how.get("cuda_graph", False), "fused_sgd": fast, "steps_per_epoch": steps_per_epoch,
            "compiled": config.compile and fast, "cpu_step": how.get("cpu_step"), "step_reason": reason,
            "native_unavailable": how.get("native_unavailable"),
            # CUDA fast path: how many steps ran each way (cuda_graphs.CUDA_STEPS), why no graph was captured
            "cuda_steps": how.get("cuda_steps") if cuda else None,
            "cuda_graph_error": how.get("cuda_graph_error") if cuda else None,
            "cuda_kernels": how.get("cuda_kernels"), "triton_unavailable": how.get("triton_unavailable"),
            "amp_bfloat16": config.amp == "bf16", "amp": config.amp, "amp_step": amp_note(config, device),
            "model": config.model,
            # The CPU fast path: the native step's instruction set, and the thread counts per epoch and why
            # (hdr_lib.fast.threads; the lists are the step's own, filled as epochs end).
            "isa": how.get("isa"), "threads_per_epoch": how.get("threads_per_epoch"),
            "thread_reason": how.get("thread_reason"), "thread_steps_per_epoch": how.get("thread_steps_per_epoch")}


class Meters:
    """CPU time, peak memory and (on CUDA) GPU utilisation over the training loop; `into(run)` writes them."""

    def __init__(self, device: torch.device):
        self.device, self.cpu = device, CpuMeter()
        self.gpu = NvmlSampler(device) if device.type == "cuda" else None
        if self.gpu is not None:
            torch.cuda.reset_peak_memory_stats(device)

    def __enter__(self):
        if self.gpu is not None:
            self.gpu.__enter__()
        return self

    def __exit__(self, *exc):
        if self.gpu is not None:
            self.gpu.__exit__(None, None, None)

    def into(self, run: Run) -> None:
        cuda = self.gpu is not None
        if cuda:
            synchronize(self.device)
        run.extra["memory"] = {
            "peak_rss_bytes": peak_rss_bytes(),
            "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None,
            "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device) if cuda else None,
            "cuda_reason": None if cuda else "CPU run: no CUDA allocator",
        }
        run.extra["utilisation"] = {"cpu": self.cpu.read(), "gpu": self.gpu.result() if cuda else {
            "utilisation_mean_percent": None, "reason": "CPU run: no GPU"}}


def progress_enabled(progress: bool | None) -> bool:
    """Bars where asked; else not with HDR_PROGRESS=0, and only on a terminal or in a notebook."""
    if progress is not None:
        return progress
    if settings.switch("HDR_PROGRESS") is False:
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


def bar(enabled: bool, **kwargs):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)
