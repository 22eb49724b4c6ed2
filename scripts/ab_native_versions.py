"""The native CPU step's source (hdr_lib/fast/csrc/lenet5_cpu.cpp) against an earlier version of it.

Builds both versions (the earlier one read with `git show REV:hdr_lib/fast/csrc/lenet5_cpu.cpp`) under their own
operator namespaces, checks that they give the same loss and gradients on a real MNIST batch (bit for bit, or
says by how much they differ), then times the whole loss_and_gradients call, alternating between the two in every
round. (Where the time goes inside a step, part by part, is the benchmark's profile: `python -m hdr_lib bench
--profile`.) On a shared 2-core VM single timings move by tens of percent from minute to minute; the per-round
ratio's median is the number to quote.

    python scripts/ab_native_versions.py --base HEAD~1 --rounds 9 [--new path/to/lenet5_cpu.cpp]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hdr_lib.fast import native  # noqa: E402
from hdr_lib.data import load_mnist, to_float  # noqa: E402
from hdr_lib.model import LeNet5  # noqa: E402

SOURCE = "hdr_lib/fast/csrc/lenet5_cpu.cpp"
def build(source: str, name: str, folder: Path):
    """Compile one version under the namespace `name`; returns its operators."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.cpp"
    path.write_text(source.replace("hdr_lenet5", name))
    cpp_extension.load(name=name, sources=[str(path)], extra_cflags=list(native.CFLAGS),
                       extra_ldflags=list(native.LDFLAGS), build_directory=str(folder), is_python_module=False)
    return getattr(torch.ops, name)


def per_call_microseconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="the git revision to compare the working tree's source with")
    parser.add_argument("--new", type=Path, default=REPO / SOURCE, help=f"the newer source (default: {SOURCE})")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (default 9)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per call (default 64, §3.4)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1:
        print("ab_native_versions: --rounds and --batch-size must be positive", file=sys.stderr)
        return 2
    shown = subprocess.run(["git", "show", f"{args.base}:{SOURCE}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode != 0:
        print(f"ab_native_versions: cannot read {SOURCE} at {args.base!r}: {shown.stderr.strip()}", file=sys.stderr)
        return 2
    if not args.new.is_file():
        print(f"ab_native_versions: no source file {args.new}", file=sys.stderr)
        return 2
    sources = {"base": shown.stdout, "new": args.new.read_text()}
    with tempfile.TemporaryDirectory() as tmp:
        ops = {label: build(text, f"hdr_ab_{label}", Path(tmp) / label) for label, text in sources.items()}
    data = load_mnist()
    x = to_float(data.train_images[:args.batch_size]).contiguous()
    y = data.train_labels[:args.batch_size].long()
    torch.manual_seed(0)
    model = LeNet5()
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    results = {label: whole.loss_and_gradients(x, y, *params) for label, whole in ops.items()}
    differ = [(n, (a - b).abs().max().item()) for n, a, b in zip(names, results["base"], results["new"])
              if not torch.equal(a, b)]
    print("loss and gradients: " + ("bit for bit the same" if not differ else
                                    "differ: " + ", ".join(f"{n} by {d:.3g}" for n, d in differ)))
    fns = {label: (lambda w=whole: w.loss_and_gradients(x, y, *params)) for label, whole in ops.items()}
    times = {"base": [], "new": []}
    for r in range(args.rounds):
        for label in (("base", "new") if r % 2 == 0 else ("new", "base")):
            times[label].append(per_call_microseconds(fns[label], 100))
    ratios = [b / n for b, n in zip(times["base"], times["new"])]
    print(f"{'':<16} {'base':>10} {'new':>10}  base/new, median of {args.rounds} rounds (range)")
    print(f"{'whole step':<16} {statistics.median(times['base']):>8.1f}us {statistics.median(times['new']):>8.1f}us  "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
