"""The paper's settings as one frozen dataclass, each field tied to its section, plus validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hdr_lib import paper

DEVICES = ("cpu", "cuda", "auto")
PATHS = ("fast", "reference")
VARIANTS = ("paper", "lenet1998")
MODELS = ("lenet5", "resnet")  # lenet5: the paper's network; resnet: hdr_lib.model.ResNet, the paper's future work
AMP_MODES = ("off", "bf16", "fp16")  # mixed precision: off (the paper's float32), bfloat16, float16 (CUDA only)


class ConfigError(ValueError):
    """A setting a user chose that cannot be run; the message says what to do instead."""


@dataclass(frozen=True)
class Range:
    """The values a number may take: from `low` to `high`, ends included unless marked open."""

    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    why: str = ""  # where the bound comes from, shown in the error

    def describe(self) -> str:
        if self.kind is int:
            text = f"an integer from {self.low:,} to {self.high:,}"
        else:
            low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            high = f"below {self.high:g}" if self.high_open else f"at most {self.high:g}"
            text = f"a number {low} and {high}"
        return f"{text} ({self.why})" if self.why else text

    def holds(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


SEED_MAX = 2**32 - 1  # seeds are drawn by torch.manual_seed; batch_order needs seed * 1_000_003 + epoch < 2**63

# Every number a user can set, from the command line, a notebook parameter or the API, with its range: one table,
# checked before any work. The upper bounds keep every run finite and every derived number inside 64 bits.
RANGES = {
    "epochs": Range(int, 1, 1000, why=f"the paper trains {paper.EPOCHS}"),
    "batch_size": Range(int, 1, paper.TRAIN_IMAGES, why="at most the training set"),
    "lr": Range(float, 0, 1e6, low_open=True, why="large enough to watch a run diverge"),
    "momentum": Range(float, 0, 1, high_open=True),
    "lr_step_epochs": Range(int, 1, 1000),
    "lr_gamma": Range(float, 0, 1, low_open=True),
    "seed": Range(int, 0, SEED_MAX),
    "first_seed": Range(int, 0, SEED_MAX),
    "seeds": Range(int, 1, 1000),
    "rounds": Range(int, 1, 1000),
    "max_steps": Range(int, 1, 100_000_000),
    "steps": Range(int, 1, 100_000, why="optimiser steps of a short measurement in a chapter"),
}


def check(name: str, value, label: str | None = None, *, range_name: str | None = None, whole_floats: bool = False):
    """`value` as an int or float if it lies in RANGES[range_name or name]; else ConfigError naming `label`.

    Booleans, strings and non-finite numbers are refused; a whole float (3.0) stands for an integer only with
    `whole_floats` (papermill may pass one)."""
    rule = RANGES[range_name or name]
    label = label or name
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if number and rule.kind is int and isinstance(value, float):
        number = whole_floats and math.isfinite(value) and value.is_integer()
        value = int(value) if number else value
    if not number or (isinstance(value, float) and not math.isfinite(value)) or not rule.holds(value):
        raise ConfigError(f"{label} must be {rule.describe()}, got {shown}")
    return rule.kind(value)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the paper's configuration (`PAPER`)."""

    # --- the paper ---
    epochs: int = paper.EPOCHS  # §3.4
    batch_size: int = paper.BATCH_SIZE  # §3.4
    lr: float = paper.LR  # §3.4 "with step decay"
    momentum: float = paper.MOMENTUM  # §3.4 "SGD with momentum"
    loss: str = paper.LOSS  # §3.4 "Cross-entropy loss"
    pixel_scale: str = paper.PIXEL_SCALE  # §3.2 pixels scaled to [0, 1], no other normalisation
    variant: str = "paper"  # §3.3 table: 28x28 input, no padding (paper.PARAMETERS parameters)
    model: str = "lenet5"  # §3.3's LeNet-5; "resnet" is the deeper network of the paper's future work (§5)
    # --- our reading: the paper names "step decay" but gives no schedule ---
    lr_step_epochs: int = 10  # our reading of §3.4: decay every 10 epochs
    lr_gamma: float = 0.1  # our reading of §3.4: multiply lr by 0.1 at each step
    # --- not in the paper: how we run it ---
    device: str = "auto"  # cpu, cuda, or auto (cuda when available)
    seed: int = 0  # initial weights and batch order
    path: str = "fast"  # "fast" (data on device, no DataLoader) or "reference" (plain PyTorch loop)
    # --- options beyond the paper, all off by default and named in the record when on ---
    amp: str = "off"  # mixed precision, the paper's future work (§5): "bf16" autocast, or "fp16" with a gradient
    # scaler (CUDA only); "off" is the paper's float32. Records made before it was a string hold false.
    cuda_graph: bool = True  # CUDA fast path only: capture each epoch's training steps in a CUDA graph
    compile: bool = False  # fast path: torch.compile the model (Inductor), compilation timed apart
    triton: bool = True  # CUDA fast path: the step as two Triton kernels (hdr_lib.fast.triton_step); off: PyTorch's kernels
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def __post_init__(self):
        # amp was a boolean (bfloat16 on or off) before float16 came: True and False still mean what they meant.
        if isinstance(self.amp, bool):
            object.__setattr__(self, "amp", "bf16" if self.amp else "off")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError on a setting that cannot be run; return self so calls chain."""
        for name in ("epochs", "batch_size", "lr", "momentum", "lr_step_epochs", "lr_gamma", "seed"):
            check(name, getattr(self, name))
        _choice("device", self.device, DEVICES)
        _choice("path", self.path, PATHS)
        _choice("variant", self.variant, VARIANTS)
        _choice("model", self.model, MODELS)
        _choice("amp", self.amp, AMP_MODES)
        if self.model != "lenet5" and self.variant != "paper":
            raise ConfigError(f"variant {self.variant!r} is a LeNet-5 variant; with model {self.model!r} leave it "
                              "at 'paper'")
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


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
