"""The paper's settings as one frozen dataclass, each field tied to its section (checked by hdr_lib.validation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hdr_lib import paper
from hdr_lib.validation import ConfigError, check, choice

DEVICES = ("cpu", "cuda", "auto")
PATHS = ("fast", "reference")
VARIANTS = ("paper", "lenet1998")
MODELS = ("lenet5", "resnet")  # lenet5: the paper's network; resnet: hdr_lib.model.ResNet, the paper's future work
AMP_MODES = ("off", "bf16", "fp16")  # mixed precision: off (the paper's float32), bfloat16, float16 (CUDA only)


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
    # scaler (CUDA only); "off" is the paper's float32.
    cuda_graph: bool = True  # CUDA fast path only: capture each epoch's training steps in a CUDA graph
    compile: bool = False  # fast path: torch.compile the model (Inductor), compilation timed apart
    triton: bool = True  # CUDA fast path: the step as two Triton kernels (hdr_lib.fast.triton_step); off: PyTorch's kernels
    deterministic: bool = False  # torch.use_deterministic_algorithms

    def validate(self) -> "TrainConfig":
        """Raise ConfigError on a setting that cannot be run; return self so calls chain."""
        for name in ("epochs", "batch_size", "lr", "momentum", "lr_step_epochs", "lr_gamma", "seed"):
            check(name, getattr(self, name))
        choice("device", self.device, DEVICES)
        choice("path", self.path, PATHS)
        choice("variant", self.variant, VARIANTS)
        choice("model", self.model, MODELS)
        choice("amp", self.amp, AMP_MODES)
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

