"""The fast path's native CPU step: `csrc/lenet5_cpu.cpp`, compiled for this machine on first use.

It computes what `hdr_lib.fast.torch_cpu.loss_and_gradients` computes (the loss and every parameter's gradient, without
an autograd graph) in one C++ operator, `torch.ops.hdr_lenet5.gradients_into`:

- a batch is cut into chunks of 16 images, and each chunk runs through the whole step (both convolutions with their
  ReLU and pooling, the fully connected layers, the loss, and back) in one parallel region, with its maps stored
  pixel by pixel and the 16 images side by side, so that a vector register holds one pixel of 16 (or 8) images and
  every product is a weight broadcast to all lanes: no idle lanes at any map size, and no sums across lanes inside
  a loop;
- the batch is read by index from the whole training set (no copy of it is made), and the gradients are written
  into the tensors the optimiser reads; each chunk's gradients are summed over its images in a fixed order, then
  the chunks in order, so a run computes the same numbers whatever the number of threads;
- the operator clocks each part of the step in each thread (`PART_NAMES`; `bench --profile` reports them);
- nothing returns to Python inside a step: after the first step, `TrainStep` has the operator update the weights
  too (`train_step`), on the optimiser's own state, with the arithmetic of the fused SGD kernel that
  optimizer.step() calls, bit for bit; and the fast path runs an epoch's steps in blocks, each one call
  (`TrainStep.steps`, `train_steps`), so that Python runs between blocks, not between steps.

It is built for one of two instruction sets (`ISAS`), chosen at run time from the CPU's flags (`isa()`): AVX-512
(32 vector registers of 16 floats) or AVX2 with FMA (16 of 8: a chunk is two halves of 8 images, and the source
keeps fewer sums in registers at a time; compiled with -mno-avx512f). Both add the same terms in the same order:
the same bits. PyTorch's own switch ATEN_CPU_CAPABILITY=avx2 (or default) is honoured as a limit, so that an AVX2
machine can be imitated on an AVX-512 one; the record names the set used (`execution.isa`).

The build needs a C++ compiler with OpenMP and ninja (torch.utils.cpp_extension); it takes about 15 s once and is
kept under ~/.cache/hdr_lib/native (HDR_NATIVE_CACHE), one build per source, flags, torch version and CPU. Where
it cannot be built (no compiler, another platform) or HDR_NATIVE=0, `load()` says why (`reason()`) and the fast
path runs `torch_cpu.train_step` instead; its records name the step that ran (`execution.cpu_step`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from hdr_lib import settings
from hdr_lib.fast import torch_cpu
from hdr_lib.measure.machine import cpu_model
from hdr_lib.model import LeNet5

SOURCE = Path(__file__).resolve().parent / "csrc" / "lenet5_cpu.cpp"
NAME = "hdr_lenet5_cpu"
CFLAGS = ("-O3", "-march=native", "-fopenmp")  # -march=native: the build is for this CPU, hence cached per CPU
LDFLAGS = ("-fopenmp",)
# Per instruction set: the flags the CPU needs, the extra compiler flags, the operators' namespace (torch.ops.<ns>).
ISAS = {
    "avx512": {"needs": ("avx512f",), "cflags": (), "namespace": "hdr_lenet5", "name": NAME},
    "avx2": {"needs": ("avx2", "fma"), "cflags": ("-mno-avx512f", "-DHDR_AVX2=1"), "namespace": "hdr_lenet5_avx2",
             "name": f"{NAME}_avx2"},
}
# ATEN_CPU_CAPABILITY's values, and the widest of our sets each allows.
CAPABILITY_LIMIT = {"avx512": "avx512", "avx2": "avx2", "default": None}

# The operators that run a step (torch.ops.<ns>.<name>; part_seconds beside them reads the clocks).
OPERATORS = ("loss_and_gradients", "gradients_into", "train_step", "train_steps")
# The parts of the step that the operator clocks (torch.ops.<ns>.part_seconds), in its order (enum Part).
PART_NAMES = ("images into lanes", "conv1 forward", "conv2 forward", "fully connected forward", "loss",
              "fully connected backward", "conv2 backward", "conv1 backward", "sums over lanes and chunks",
              "update (fused SGD)")
_state: dict = {}  # "ok": bool, "reason": str | None, "isa": str; filled by the first load()
_namespaces: dict = {}  # operator namespace -> the library file that registered it
_loaded: dict = {}  # library file -> None (loaded) or the reason it could not be (load_isa)
BUILD_LOCK = "build.flock"  # an flock held while a build runs: it dies with its process


def _flags_line() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""


def _cpu_flags() -> str:
    """The CPU's flags, as the choice of build reads them (the tests put others in)."""
    return _flags_line()


def _cflags(isa_name: str) -> tuple[str, ...]:
    return CFLAGS + ISAS[isa_name]["cflags"]


def build_directory(isa_name: str | None = None) -> Path:
    """Where this source, built with these flags against this torch for this CPU, is kept (for the instruction set
    `isa_name`, by default this process's, `isa()`)."""
    flags = _cflags(isa_name or isa() or "avx512")
    key = hashlib.sha256(b"\0".join(s.encode() for s in [
        SOURCE.read_text(), " ".join(flags + LDFLAGS), torch.__version__, cpu_model(), _flags_line()])).hexdigest()
    base = settings.path("HDR_NATIVE_CACHE") or Path.home() / ".cache" / "hdr_lib" / "native"
    return base / key[:16]


def _disabled() -> bool:
    return settings.switch("HDR_NATIVE") is False


def _forced() -> bool:
    return settings.switch("HDR_NATIVE") is True


# The AVX2 build is chosen wherever AVX-512 is not: under AVX2 limits on the project's 2-core Xeon, even its first
# version (16-lane sums split in two) took 2.60 and 2.72 s per epoch against the explicit step's 3.29 and 3.51
# (quiet, one round each, in turn: results/session-cpu-quiet-2026-12-06a/bench-cpu-avx2-{native,explicit}-run*.json).


def capability_limit() -> str | None:
    """The widest instruction set ATEN_CPU_CAPABILITY allows (None: no limit set, or an unknown value)."""
    value = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    return CAPABILITY_LIMIT.get(value, "avx512") if value else "avx512"


def isa() -> str | None:
    """The instruction set the native step is built for in this process: the widest of `ISAS` that this CPU has
    (its flags) and ATEN_CPU_CAPABILITY allows; None where none fits (then the step is not used)."""
    flags = set(_cpu_flags().split())
    limit = capability_limit()
    order = list(ISAS)  # widest first
    allowed = order[order.index(limit):] if limit in order else []
    return next((name for name in allowed if all(f in flags for f in ISAS[name]["needs"])), None)


def loaded_isa() -> str | None:
    """The instruction set of the build `load()` loaded (None before, or where it failed)."""
    return _state.get("isa") if _state.get("ok") else None


def ops(isa_name: str | None = None):
    """The operators of the build for `isa_name` (by default this process's): torch.ops.<namespace>."""
    return getattr(torch.ops, ISAS[isa_name or _state.get("isa") or isa() or "avx512"]["namespace"])


def use() -> bool:
    """Whether the CPU fast path should run the native step here: this CPU has AVX-512 or AVX2 with FMA (`isa()`)
    and the build for it loads (`load()`); else `reason()` says why not. HDR_NATIVE=1 uses it on any CPU that
    builds it (the AVX-512 source, compiled for the CPU), HDR_NATIVE=0 on none."""
    if _disabled() or _forced():
        return load()
    if isa() is None:
        _state.update(ok=False, reason="this CPU has neither AVX-512 nor AVX2 with FMA (or ATEN_CPU_CAPABILITY="
                      f"{os.environ.get('ATEN_CPU_CAPABILITY')} allows neither), which the native step is written for")
        return False
    return load()


def _build(folder: Path, isa_name: str = "avx512") -> None:
    # torch.utils.cpp_extension logs, on import, that it found no CUDA; this build needs none.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    # cpp_extension waits, without end, while another build's lock file ("lock") exists; one that a killed build
    # left behind would hang every later run. Builds here take an flock first, which dies with its process: while
    # another live process holds it, wait for that build (and say so); once held, no build of ours is running, so
    # a "lock" file still there was left by a dead one and is removed.
    with open(folder / BUILD_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            print(f"hdr_lib: waiting for another process (pid {owner}) that is compiling the native CPU step in "
                  f"{folder}; it ends when that build does", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        if (folder / f"{ISAS[isa_name]['name']}.so").exists():
            return  # the process waited for built it
        (folder / "lock").unlink(missing_ok=True)
        _compile(folder, cpp_extension, isa_name)


def _compile(folder: Path, cpp_extension, isa_name: str) -> None:
    # Copies of the flags: cpp_extension appends its own to the lists it is given.
    cpp_extension.load(ISAS[isa_name]["name"], [str(SOURCE)], extra_cflags=list(_cflags(isa_name)),
                       extra_ldflags=list(LDFLAGS),
                       build_directory=str(folder), is_python_module=False, verbose=False)


def load(verbose: bool = True) -> bool:
    """Build (once per machine) and load the operator for this process's instruction set (`isa()`; AVX-512 where
    none fits, for HDR_NATIVE=1 or a direct call); False, with `reason()`, where that is not possible. Loads at
    most once per process; a later call returns the first answer."""
    if _disabled():  # read on every call, so that a test or a notebook can switch it off for a while
        return False
    if _state:
        return _state["ok"]
    name = isa() or "avx512"
    why = load_isa(name, verbose)
    _state.update(ok=why is None, reason=why, isa=name)
    return why is None


def load_isa(isa_name: str, verbose: bool = True) -> str | None:
    """Build (once per machine) and load the build for `isa_name` (a key of `ISAS`), beside any other; None when its
    operators are ready (`ops(isa_name)`), else why not. The tests load both builds to compare them."""
    folder = build_directory(isa_name)
    library = folder / f"{ISAS[isa_name]['name']}.so"
    if str(library) in _loaded:
        return _loaded[str(library)]
    must_build = not library.exists()
    try:
        if must_build:
            if verbose:
                print(f"hdr_lib: compiling the native CPU training step ({isa_name}) for this machine (once, about "
                      f"15 s) in {folder}", file=sys.stderr, flush=True)
            _build(folder, isa_name)
        # A second library with the same operators would abort the process: one per namespace (a test that
        # points the cache elsewhere builds another copy of the same source).
        if _namespaces.setdefault(ISAS[isa_name]["namespace"], str(library)) == str(library):
            torch.ops.load_library(str(library))
        ops(isa_name).loss_and_gradients  # noqa: B018 (raises if the library registered nothing)
    except Exception as error:  # a compiler, ninja or OpenMP missing, a read-only cache: say why, fall back
        lines = str(error).strip().splitlines()
        first = lines[0] if lines else type(error).__name__
        what = "build" if must_build else "load"
        _loaded[str(library)] = f"could not {what} {SOURCE.name}: {first[:300]}"
        return _loaded[str(library)]
    _loaded[str(library)] = None
    return None


def reason() -> str | None:
    """Why the native step is not available (None when it is, or before `load()`)."""
    return "switched off with HDR_NATIVE=0" if _disabled() else _state.get("reason")


def applies(model: LeNet5, x: torch.Tensor) -> bool:
    """Whether the operator fits: where torch_cpu's arrangement does (the paper's variant, 28x28 input, on the CPU),
    for one-channel float32 images."""
    return torch_cpu.applies(model, x) and x.dtype == torch.float32 and x.shape[1] == 1


def loss_and_gradients(model: LeNet5, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What `torch_cpu.loss_and_gradients` returns, from the native operator (`load()` first)."""
    out = ops().loss_and_gradients(x.contiguous(), y, *[p.detach() for p in model.parameters()])
    return out[0], list(out[1:])


class TrainStep:
    """`train_step` for one model and its optimiser, with what every step would otherwise rebuild made once: the
    list of parameters, and the gradient tensors that the operator writes into and the optimiser reads.

    For SGD(fused=True) with momentum, in one parameter group and with no step hooks (the fast path's optimiser),
    the update after the first step runs inside the operator's call (`train_step`) on the optimiser's own momentum
    buffers, lr and momentum, with the arithmetic of the kernel optimizer.step() calls (torch._fused_sgd_): the same
    numbers and the same state (so checkpoints hold what step() would leave), without step()'s Python around the
    kernel. The first step, which creates the buffers, is optimizer.step() itself. `direct_update=False` always
    calls it; `_update` (the all-reduced path of hdr_lib.distributed) calls the kernel directly."""

    def __init__(self, model: LeNet5, optimizer: torch.optim.Optimizer, direct_update: bool = True):
        self.params = list(model.parameters())
        self.weights = [p.detach() for p in self.params]  # views: the optimiser's in-place updates show in them
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.optimizer = optimizer
        self.direct = direct_update and _plain_fused_sgd(optimizer, self.params)
        self.ops = ops()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """One step on images x and labels y, or on their rows `idx` (gathered inside the operator, no copy)."""
        buffers = self._buffers()
        if buffers is not None:  # gradients and update in one call
            group = self.optimizer.param_groups[0]
            loss = self.ops.train_step(x, y, idx, self.weights, self.grads, buffers, float(group["lr"]),
                                       float(group["momentum"]))
            self._attach()
            return loss
        loss = self.ops.gradients_into(x, y, idx, self.weights, self.grads)
        self._attach()
        self._update()
        return loss

    def steps(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int, losses: torch.Tensor,
              seconds: torch.Tensor, stop_after: float = math.inf) -> int:
        """Steps on consecutive batches of `batch_size` of the rows `order` names (the last batch what is left), in one
        call of the operator (`train_steps`) where the update runs in it, else one step: each step's loss into
        `losses` (float32) and its seconds into `seconds` (float64), from their first element; a step slower than
        `stop_after` seconds is the last. Returns the number of steps run."""
        buffers = self._buffers()
        if buffers is None:  # the first step (optimizer.step() makes the buffers), or an update the operator can't do
            start = time.perf_counter()
            losses[0] = self(x, y, order[:batch_size])
            seconds[0] = time.perf_counter() - start
            return 1
        group = self.optimizer.param_groups[0]
        ran = self.ops.train_steps(x, y, order, batch_size, self.weights, self.grads, buffers, float(group["lr"]),
                                   float(group["momentum"]), stop_after, losses, seconds)
        self._attach()
        return ran

    def _attach(self) -> None:
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:  # the first step, or after something set the gradients to None
                p.grad = g

    def _buffers(self) -> list[torch.Tensor] | None:
        """The optimiser's momentum buffers, where the update may bypass optimizer.step() (`direct`, no hooks, after
        the first step); read each step: load_state_dict replaces them."""
        if not self.direct or _has_step_hooks(self.optimizer):
            return None
        state = self.optimizer.state
        if "momentum_buffer" not in state[self.params[0]]:
            return None
        return [state[p]["momentum_buffer"] for p in self.params]

    def _update(self) -> None:
        buffers = self._buffers()
        if buffers is None:
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        torch._fused_sgd_(self.weights, self.grads, buffers, weight_decay=0.0, momentum=group["momentum"],
                          lr=group["lr"], dampening=0.0, nesterov=False, maximize=False, is_first_step=False)


def _plain_fused_sgd(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Whether optimizer.step() would be exactly one torch._fused_sgd_ call with momentum over `params`."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return (group.get("fused") is True and group["momentum"] > 0 and group["weight_decay"] == 0
            and group["dampening"] == 0 and not group["nesterov"] and not group["maximize"]
            and len(group["params"]) == len(params) and all(a is b for a, b in zip(group["params"], params))
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params))


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Hooks that optimizer.step() would run (its own, and those registered for all optimisers)."""
    from torch.optim import optimizer as module

    return bool(getattr(optimizer, "_optimizer_step_pre_hooks", None) or
                getattr(optimizer, "_optimizer_step_post_hooks", None) or
                getattr(module, "_global_optimizer_pre_hooks", None) or
                getattr(module, "_global_optimizer_post_hooks", None))


def train_step(model: LeNet5, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step with the native gradients and optimizer.step(); returns the loss (before the step). A
    loop of steps should use one `TrainStep`, which keeps its lists from step to step."""
    return TrainStep(model, optimizer, direct_update=False)(x, y)
