"""The fast path's CPU training step (hdr_lib.fast.native) against the plainer ways to write it, in one process.

- "module + autograd": the module's forward, loss.backward(), optimizer.step();
- "torch_cpu.forward + autograd": conv1 per pooling corner and pooling as elementwise maxima, then autograd;
- "torch_cpu.train_step": the same forward with the gradients written out, no autograd graph (the fast path's step
  where the native one cannot be built);
- "native.TrainStep": the loss and gradients in one C++ operator (the fast path's step where it builds).

All four train the paper's network from the same seed on the same real batches, with everything else of the fast
path equal (data held as one tensor, batches by index, fused SGD). They alternate in chunks of 50 steps, the
order flipping every round, so that all see the same machine state: on a shared 2-core VM the same code varies
by tens of percent from minute to minute, and only an alternating comparison is worth quoting.

    python scripts/ab_cpu_step.py --rounds 40 --out results/ab-cpu-step.json

Which of the last two is faster depends on the CPU's vector registers: the record names them
(`environment.cpu_flags`), and hdr_lib.fast.native.use() chooses by them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hdr_lib import PAPER, settings
from hdr_lib.fast import torch_cpu, native  # noqa: E402
from hdr_lib.data import load_mnist, to_float  # noqa: E402
from hdr_lib.measure.machine import environment  # noqa: E402
from hdr_lib.model import LeNet5  # noqa: E402
from hdr_lib.measure.records import SCHEMA, write_json_atomic  # noqa: E402
from hdr_lib.train import batch_order  # noqa: E402


def _autograd_step(forward):
    def step(model, optimizer, x, y):
        loss = F.cross_entropy(forward(model, x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


VARIANTS = {
    "module + autograd": _autograd_step(lambda model, x: model(x)),
    "torch_cpu.forward + autograd": _autograd_step(torch_cpu.forward),
    "torch_cpu.train_step": torch_cpu.train_step,
    "native.TrainStep": lambda model, optimizer, x, y: _native_step(model, optimizer)(x, y),
}
_NATIVE_STEPS: dict = {}


def _native_step(model, optimizer) -> native.TrainStep:
    """The fast path's step for this model, made once (it keeps the model's parameter and gradient lists)."""
    return _NATIVE_STEPS.setdefault(id(model), native.TrainStep(model, optimizer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=50, help="steps per variant per round")
    parser.add_argument("--out", default=None, help="also write the times as a JSON record here")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 1000 and 1 <= args.chunk <= 10000):
        parser.exit(2, "error: --rounds must be 1..1000 and --chunk 1..10000\n")
    try:
        settings.check_environment()  # HDR_SESSION and HDR_GIT_COMMIT go into the record: checked before any work
    except settings.SettingError as error:
        parser.exit(2, f"error: {error}\n")
    if not native.load():
        parser.exit(2, f"error: the native step is not available here: {native.reason()}\n")
    data = load_mnist()
    x_all, y_all = to_float(data.train_images), data.train_labels
    order = batch_order(0, 1, x_all.shape[0])
    batch = PAPER.batch_size
    steps_per_epoch = x_all.shape[0] // batch
    state = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        model = LeNet5()
        state[name] = (model, torch.optim.SGD(model.parameters(), lr=PAPER.lr, momentum=PAPER.momentum, fused=True))

    def chunk(name: str, start: int, steps: int) -> float:
        model, optimizer = state[name]
        step = VARIANTS[name]
        began = time.perf_counter()
        for i in range(start, start + steps):
            idx = order[(i % steps_per_epoch) * batch:(i % steps_per_epoch + 1) * batch]
            step(model, optimizer, x_all.index_select(0, idx), y_all.index_select(0, idx))
        return (time.perf_counter() - began) / steps * 1e3

    names = list(VARIANTS)
    for name in names:
        chunk(name, 0, 20)  # warm-up
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(chunk(name, r * args.chunk, args.chunk))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of {args.chunk} steps")
    for name, values in times.items():
        print(f"{name:>26}: median {statistics.median(values):.3f} ms/step (min {min(values):.3f}, "
              f"max {max(values):.3f})")
    base = times[names[0]]
    ratios = {}
    for name in names[1:]:
        ratios[name] = statistics.median([t / b for t, b in zip(times[name], base)])
        print(f"{name} takes {ratios[name]:.2f} of {names[0]}'s time per step, median of the rounds' ratios "
              f"({abs(1 - ratios[name]) * 100:.0f} % {'less' if ratios[name] <= 1 else 'more'})")
    if args.out:
        write_json_atomic(args.out, {
            "schema": SCHEMA, "kind": "ab-cpu-step", "environment": environment(None),
            "config": {"rounds": args.rounds, "chunk_steps": args.chunk, "batch_size": batch,
                       "threads": torch.get_num_threads()},
            "epochs": [], "ms_per_step": times, "median_ms_per_step": {n: statistics.median(v) for n, v in times.items()},
            "median_ratio_to_first": ratios, "status": "complete"})
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
