"""The paper's settings as one frozen dataclass, each field tied to its section, plus validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

DEVICES = ("cpu", "cuda", "auto")
PATHS = ("fast", "reference")
VARIANTS = ("paper", "lenet1998")
MODELS = ("lenet5", "resnet")  # lenet5: the paper's network; resnet: hdr_lib.model.ResNet, the paper's future work
AMP_MODES = ("off", "bf16", "fp16")  # mixed precision: off (the paper's float32), bfloat16, float16 (CUDA only)


class ConfigError(ValueError):
    """A setting a user chose that cannot be run; the message says what to do instead."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the paper's configuration (`PAPER`)."""

    # --- the paper ---
    epochs: int = 20  # §3.4 "Epochs: 20"
    batch_size: int = 64  # §3.4 "Batch size: 64"
    lr: float = 0.01  # §3.4 "Learning Rate: 0.01 with step decay"
    momentum: float = 0.9  # §3.4 "SGD with momentum = 0.9"
    loss: str = "cross_entropy"  # §3.4 "Cross-entropy loss"
    pixel_scale: str = "[0,1]"  # §3.2 pixels scaled to [0, 1], no other normalisation
    variant: str = "paper"  # §3.3 table: 28x28 input, no padding (44,426 parameters)
    model: str = "lenet5"  # §3.3's LeNet-5; "resnet" is the deeper network of the paper's future work (§5)
    # --- our reading: the paper names "step decay" but gives no schedule ---
    lr_step_epochs: int = 10  # our reading of §3.4: decay every 10 epochs
    lr_gamma: float = 0.1  # our reading of §3.4: multiply lr by 0.1 at each step
    # --- not in the paper: how we run it ---
    device: str = "auto"  # cpu, cuda, or auto (cuda when available)
    seed: int = 0  # initial weights and batch order
    path: str = "fast"  # "fast" (data on device, no DataLoader) or "reference" (plain PyTorch loop)
    # --- options beyond the paper, all off by default and named in the record when on ---
    channels_last: bool = False  # NHWC memory layout for images and weights: same arithmetic, other kernels
    amp: str = "off"  # mixed precision, the paper's future work (§5): "bf16" autocast, or "fp16" with a gradient
    # scaler (CUDA only); "off" is the paper's float32. Records made before it was a string hold false.
    tf32: bool = False  # CUDA only: allow TF32 matmuls/convolutions (paper-faithful is IEEE float32)
    cuda_graph: bool = True  # CUDA fast path only: capture each epoch's training steps in a CUDA graph
    compile: bool = False  # fast path: torch.compile the model (Inductor), compilation timed apart
    triton: bool = True  # CUDA fast path: the step as two Triton kernels (hdr_lib.tritonstep); off: PyTorch's kernels
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def __post_init__(self):
        # amp was a boolean (bfloat16 on or off) before float16 came: True and False still mean what they meant.
        if isinstance(self.amp, bool):
            object.__setattr__(self, "amp", "bf16" if self.amp else "off")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError on a setting that cannot be run; return self so calls chain."""
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("lr_step_epochs", self.lr_step_epochs)
        _positive_float("lr", self.lr)
        _positive_float("lr_gamma", self.lr_gamma)
        if not isinstance(self.momentum, (int, float)) or isinstance(self.momentum, bool) or not (
            math.isfinite(self.momentum) and 0 <= self.momentum < 1
        ):
            raise ConfigError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        _choice("device", self.device, DEVICES)
        _choice("path", self.path, PATHS)
        _choice("variant", self.variant, VARIANTS)
        _choice("model", self.model, MODELS)
        _choice("amp", self.amp, AMP_MODES)
        if self.model != "lenet5" and self.variant != "paper":
            raise ConfigError(f"variant {self.variant!r} is a LeNet-5 variant; with model {self.model!r} leave it "
                              "at 'paper'")
        if self.batch_size > 60000:
            raise ConfigError(f"batch_size must be at most 60000 (the training set), got {self.batch_size}")
        return self

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def deviations(self) -> dict:
        """Fields that differ from the paper's configuration (how-we-run fields excluded)."""
        run_fields = {"device", "seed", "path", "cuda_graph", "compile", "triton"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in run_fields and getattr(self, f.name) != getattr(PAPER, f.name)
        }


PAPER = TrainConfig()


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
