"""float32 against bfloat16 autocast on the CPU, the same step code both ways, in one process; writes one record.

Two ways to write the step, each in float32 and under bfloat16 autocast: "module + autograd" (the reference
path's step) and "torch_cpu.forward + autograd" (the fast path's step under --amp bf16, since the native C++ step is
float32 only). The four alternate in chunks of steps on the same real batches, the order flipping every round, so
that all see the same machine state (other processes share these cores). Then torch.profiler gives where one step
of the module's time goes in each precision, operator by operator: the "why" of the difference.

    python scripts/ab_amp_cpu.py --rounds 5 --chunk 40 --out results/ab-amp-cpu.json
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

from hdr_lib import settings  # noqa: E402
from hdr_lib.fast import torch_cpu  # noqa: E402
from hdr_lib.config import PAPER  # noqa: E402
from hdr_lib.data import load_mnist, to_float  # noqa: E402
from hdr_lib.measure.machine import environment  # noqa: E402
from hdr_lib.model import LeNet5  # noqa: E402
from hdr_lib.measure.records import SCHEMA, write_json_atomic  # noqa: E402
from hdr_lib.train import batch_order  # noqa: E402

FORWARDS = {"module + autograd": lambda model, x: model(x),
            "torch_cpu.forward + autograd": torch_cpu.forward}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def _stepper(forward, dtype):
    torch.manual_seed(0)
    model = LeNet5()
    optimizer = torch.optim.SGD(model.parameters(), lr=PAPER.lr, momentum=PAPER.momentum, fused=True)

    def step(x, y):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False):
            loss = F.cross_entropy(forward(model, x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=40, help="steps per way per round")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--out", default="results/ab-amp-cpu.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.chunk < 1 or args.profile_steps < 1:
        print("ab_amp_cpu: --rounds, --chunk and --profile-steps must be positive", file=sys.stderr)
        return 2
    try:
        settings.check_environment()  # HDR_SESSION and HDR_GIT_COMMIT go into the record: checked before any work
    except settings.SettingError as error:
        print(f"ab_amp_cpu: {error}", file=sys.stderr)
        return 2
    data = load_mnist(None)
    x_all, y_all = to_float(data.train_images, torch.device("cpu")), data.train_labels
    order = batch_order(0, 1, x_all.shape[0])
    batches = [(x_all[order[i * 64:(i + 1) * 64]], y_all[order[i * 64:(i + 1) * 64]]) for i in range(args.chunk)]
    ways = {(f, d): _stepper(FORWARDS[f], DTYPES[d]) for f in FORWARDS for d in DTYPES}
    times = {key: [] for key in ways}
    for step in ways.values():  # warm: first calls allocate and pick kernels
        for x, y in batches[:3]:
            step(x, y)
    for r in range(args.rounds):
        for key in (list(ways) if r % 2 == 0 else list(reversed(list(ways)))):
            started = time.perf_counter()
            for x, y in batches:
                ways[key](x, y)
            times[key].append(1000 * (time.perf_counter() - started) / len(batches))
    top_ops = {}
    for d in DTYPES:
        step = ways[("module + autograd", d)]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for x, y in batches[:args.profile_steps]:
                step(x, y)
        for event in prof.key_averages():
            top_ops.setdefault(event.key, {})[d] = event.self_cpu_time_total / 1000 / args.profile_steps
    ranked = sorted(top_ops.items(), key=lambda kv: -max(kv[1].values()))[:10]
    record = {
        "schema": SCHEMA, "kind": "ab-amp", "config": {"device": "cpu", "batch_size": 64, "rounds": args.rounds,
                                                     "chunk": args.chunk, "profile_steps": args.profile_steps},
        "environment": environment(None), "epochs": [], "status": "complete",
        "ways": {f: {d: {"median_ms": statistics.median(times[(f, d)]), "ms_per_round": times[(f, d)]}
                     for d in DTYPES} for f in FORWARDS},
        "top_ops": {name: {d: v.get(d, 0.0) for d in DTYPES} for name, v in ranked},
    }
    write_json_atomic(args.out, record)
    for f in FORWARDS:
        a, b = record["ways"][f]["float32"]["median_ms"], record["ways"][f]["bfloat16"]["median_ms"]
        print(f"{f}: float32 {a:.2f} ms/step, bfloat16 {b:.2f} ms/step ({b / a:.2f}x)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
