"""Where a CPU training step's time goes: PyTorch's profiler over a few steps, grouped by kind of operator."""

from __future__ import annotations

import os
import re
from collections import defaultdict

from hdr_lib.fast import native, torch_cpu
from hdr_lib.config import TrainConfig
from hdr_lib.train import TRAIN_STEPS_LABEL, train

# Operator names (as the profiler reports them, lower-cased) -> what they do in LeNet-5's step: each key is a regular
# expression searched for in the name, and the first kind with a match wins.
KINDS = (
    # The fast path on the CPU builds conv1's corner kernels from its weight by padding and stacking (fastcpu). (Its
    # native step is one operator: step_profile splits it by its own clocks, NATIVE_PART_KINDS.)
    ("convolutions (forward and backward)", ("convolution", "constant_pad_nd", "aten::cat", "aten::repeat")),
    ("max pooling (forward and backward)", ("max_pool",)),
    ("ReLU (forward and backward)", ("relu", "clamp_min", "threshold")),
    ("fully connected layers", ("addmm", "aten::mm", "aten::t$", "linear")),  # aten::t, not aten::to
    ("loss (softmax, cross-entropy)", ("softmax", "nll_loss", "cross_entropy")),
    ("optimiser (fused SGD, zeroing gradients)", ("optimizer", "sgd", "zero")),
    ("loading the batch", ("index_select", "dataloader")),
)
OUTSIDE = "between operators (Python, autograd, the loop)"
# Whatever runs inside a span of these names is of that kind, whatever its operators are called: the DataLoader's
# work (ToTensor's copies and divisions, collate's stacking) is loading; the fast CPU path pools conv1 with
# elementwise maxima and masks (CornerMaxReLU, with conv1's ReLU folded in). The first span that holds an operator
# wins.
SPAN_KINDS = (
    ("DataLoader", "loading the batch"),
    ("CornerMaxReLU", "max pooling (forward and backward)"),
)
# The fast CPU path's explicit step marks each layer's part with a span (torch_cpu.SPANS); these name the kind only of
# the operators that their own names leave unsorted (a bias gradient's sum, a transpose's copy), so that a ReLU
# inside a layer's span still counts as ReLU.
SPAN_FALLBACK_KINDS = (
    (torch_cpu.SPANS["conv1"], "convolutions (forward and backward)"),
    (torch_cpu.SPANS["conv2"], "convolutions (forward and backward)"),
    (torch_cpu.SPANS["fc"], "fully connected layers"),
    (torch_cpu.SPANS["loss"], "loss (softmax, cross-entropy)"),
)
UNSORTED = "other operators"
# Spans that only mark: their own time is the Python between their operators, so it stays with OUTSIDE.
# The native operator's own time is its C++ between the operators it calls.
MARKS = {TRAIN_STEPS_LABEL, *torch_cpu.SPANS.values(), "hdr_lenet5::chunks",
         *(f"{isa['namespace']}::{op}" for isa in native.ISAS.values() for op in native.OPERATORS)}


# The native step's parts (hdr_lib.fast.native.PART_NAMES), by kind.
NATIVE_PART_KINDS = {"images into lanes": "loading the batch", "conv1 forward": "convolutions (forward and backward)",
                     "conv2 forward": "convolutions (forward and backward)",
                     "fully connected forward": "fully connected layers", "loss": "loss (softmax, cross-entropy)",
                     "fully connected backward": "fully connected layers",
                     "conv2 backward": "convolutions (forward and backward)",
                     "conv1 backward": "convolutions (forward and backward)",
                     "sums over lanes and chunks": UNSORTED,
                     "update (fused SGD)": "optimiser (fused SGD, zeroing gradients)"}


def _native_clocks():
    """The loaded native build's operators (with its part clocks), or None."""
    return native.ops() if native.loaded_isa() else None


def _native_parts(clocks, threads: float, steps: int) -> dict[str, float]:
    """Milliseconds per step of each part of the native step since its clocks were last reset (resetting them):
    each part's thread time over the thread count."""
    return dict(zip(native.PART_NAMES, (s * 1e3 / threads / steps for s in clocks.part_seconds(True).tolist())))


def kind_of(op: str) -> str:
    name = op.lower()
    return next((kind for kind, keys in KINDS if any(re.search(key, name) for key in keys)), UNSORTED)


def step_profile(config: TrainConfig, data, steps: int = 60) -> dict:
    """Profile `steps` optimiser steps of `config` (after a short warm-up) and split a step's wall time by kind.

    Returns {"ms_per_step", "kinds": {kind: ms per step}, "ops": {kind: {operator: ms per step}}, "steps",
    "path", "device"}. Each operator counts its self time only (time inside the operators it calls goes to those),
    so the kinds add up to the time spent in operators; the rest of the step is `OUTSIDE`. Only the optimiser
    steps (with the reference path's DataLoader) are counted: evaluation and the one-time data set-up lie outside
    the profiled span. An epoch with fewer than `steps` steps (a large batch) is profiled whole.
    """
    from torch.profiler import ProfilerActivity, profile

    # Kineto, the profiler's backend, logs its stages to stderr (and, without a GPU, an "ERROR" that it found
    # none), which a notebook would show as output. Level 6 silences it; read when the profiler first starts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    config = config.replace(epochs=1).validate()
    train(config, data=data, progress=False, max_steps=min(10, steps))  # warm-up: allocator, kernel choices
    clocks = _native_clocks()
    if clocks is not None:
        clocks.part_seconds(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        record = train(config, data=data, progress=False, max_steps=steps)
    events = prof.events()
    spans = [e.time_range for e in events if e.name == TRAIN_STEPS_LABEL]
    if not spans:
        raise RuntimeError(f"the profile holds no {TRAIN_STEPS_LABEL!r} span: hdr_lib.train no longer marks its steps")
    start, end = spans[0].start, spans[0].end
    steps = record["epochs"][0]["steps"]  # fewer than asked when one epoch has fewer

    def spans_of(table):
        return [([e.time_range for e in events if name in e.name], kind) for name, kind in table]

    def span_kind(t, table) -> str | None:
        return next((kind for ranges, kind in table if any(r.start <= t.start and t.end <= r.end for r in ranges)),
                    None)

    overriding, filling = spans_of(SPAN_KINDS), spans_of(SPAN_FALLBACK_KINDS)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        t = e.time_range
        if e.name in MARKS or not (start <= t.start and t.end <= end):
            continue
        kind = span_kind(t, overriding) or kind_of(e.name)
        if kind == UNSORTED:
            kind = span_kind(t, filling) or UNSORTED
        ops[kind][e.name] += e.self_cpu_time_total / 1e3 / steps
    # The native step is one operator: its parts come from its own clocks (thread time over the threads the steps
    # used), by what they compute.
    if clocks is not None and record["execution"].get("cpu_step") == "native":
        used = record["execution"].get("thread_steps_per_epoch", [{}])[0]
        threads = sum(int(t) * n for t, n in used.items()) / max(sum(used.values()), 1) or 1
        for part, ms in _native_parts(clocks, threads, steps).items():
            ops[NATIVE_PART_KINDS[part]][f"hdr_lenet5: {part}"] += ms
    step_ms = record["epochs"][0]["train_seconds"] * 1e3 / steps
    kinds = {kind: sum(by_op.values()) for kind, by_op in ops.items()}
    kinds[OUTSIDE] = max(step_ms - sum(kinds.values()), 0.0)
    order = sorted(kinds, key=kinds.get, reverse=True)
    return {"ms_per_step": step_ms, "steps": steps, "path": config.path, "device": record["config"]["device"],
            "kinds": {k: kinds[k] for k in order}, "ops": {k: dict(ops[k]) for k in order if k in ops}}


def native_step_profile(x_all, y_all, *, batch_size: int = 64, steps: int = 300, seed: int = 0) -> dict | None:
    """Where the native CPU step's time goes, part by part (`hdr_lib.fast.native.PART_NAMES`): `steps` steps of
    `native.TrainStep` on random batches of x_all/y_all (after 20 not counted), run as the fast path runs them (in
    blocks of the thread governor's size, one call of the operator each: `TrainStep.steps`), with the thread count
    the process has. The operator clocks each part in each thread (`part_seconds`); a part's milliseconds per step
    are its thread time over the thread count (the fused SGD update is one of them). Beside them: the time of the
    steps, as the operator clocks each, not in any part (threads waiting for the slowest, starting a step) and the
    rest (the calls and the loop around them). The parts add up to `ms_per_step`, the steps' wall time. None where
    the native step does not run here."""
    import time

    import torch

    from hdr_lib.fast import native, threads as thread_counts
    from hdr_lib.model import LeNet5

    if not native.use():
        return None
    torch.manual_seed(seed)
    model = LeNet5()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    step = native.TrainStep(model, optimizer)
    x_all, y_all = x_all.contiguous(), y_all.long().contiguous()
    warm, total = 20, steps + 20
    order = torch.randint(0, x_all.shape[0], (total * batch_size,))
    losses, seconds = torch.empty(total), torch.empty(total, dtype=torch.float64)
    threads = torch.get_num_threads()
    done, start = 0, 0.0
    while done < total:
        if done == warm:
            step.ops.part_seconds(True)
            start = time.perf_counter()
        count = min(thread_counts.BLOCK, (warm if done < warm else total) - done)
        done += step.steps(x_all, y_all, order[done * batch_size:(done + count) * batch_size], batch_size,
                           losses[done:], seconds[done:])
    wall = time.perf_counter() - start
    operator = float(seconds[warm:].sum())
    parts = _native_parts(step.ops, threads, steps)
    ms = {"operator": operator * 1e3 / steps, "step": wall * 1e3 / steps}
    parts["waiting, in the operator (threads for the slowest)"] = max(ms["operator"] - sum(parts.values()), 0.0)
    parts["calls and the loop (Python)"] = max(ms["step"] - ms["operator"], 0.0)
    return {"path": "fast", "step": "native", "isa": native.loaded_isa(), "threads": threads, "steps": steps,
            "batch_size": batch_size, "ms_per_step": sum(parts.values()), "parts": parts,
            "how": "thread time per part (the operator's own clocks) over the thread count; waiting: the operator's "
                   "clock of each step less its parts; calls and loop: the wall time less the steps; random batches, "
                   f"in calls of {thread_counts.BLOCK} steps, one process, after {warm} steps not counted"}
