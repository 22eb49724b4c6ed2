"""The native CPU step's source (hdr_lib/fast/csrc/lenet5_cpu.cpp) against an earlier version of it, part by part.

Builds both versions (the earlier one read with `git show REV:hdr_lib/fast/csrc/lenet5_cpu.cpp`) under their own
operator namespaces, checks that they give the same loss and gradients on a real MNIST batch (bit for bit, or
says by how much they differ), then times, alternating between the two in every round: conv1 forward, conv1
backward, conv2 forward, conv2 backward, and the whole loss_and_gradients call. On a shared 2-core VM single timings
move by tens of percent from minute to minute; the per-round ratio's median is the number to quote.

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
# Each part as an operator of its own, appended to the source (the functions are in its anonymous namespace).
PARTS = r"""
namespace {
std::vector<at::Tensor> ab_c1f(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return conv1_pool_forward(x, w, b);
}
std::vector<at::Tensor> ab_c1b(const at::Tensor& g, const at::Tensor& o, const at::Tensor& c, const at::Tensor& x) {
  return conv1_pool_backward(g, o, c, x);
}
std::vector<at::Tensor> ab_c2f(const at::Tensor& a, const at::Tensor& t, const at::Tensor& b) {
  return conv2_pool_forward(a, t, b);
}
std::vector<at::Tensor> ab_c2b(const at::Tensor& g, const at::Tensor& o, const at::Tensor& c, const at::Tensor& a,
                               const at::Tensor& t) {
  return conv2_pool_backward(g, o, c, a, t);
}
}  // namespace
TORCH_LIBRARY(NS_parts, m) {
  m.def("c1f(Tensor x, Tensor w, Tensor b) -> Tensor[]");
  m.def("c1b(Tensor g, Tensor o, Tensor c, Tensor x) -> Tensor[]");
  m.def("c2f(Tensor a, Tensor t, Tensor b) -> Tensor[]");
  m.def("c2b(Tensor g, Tensor o, Tensor c, Tensor a, Tensor t) -> Tensor[]");
}
TORCH_LIBRARY_IMPL(NS_parts, CPU, m) {
  m.impl("c1f", &ab_c1f);
  m.impl("c1b", &ab_c1b);
  m.impl("c2f", &ab_c2f);
  m.impl("c2b", &ab_c2b);
}
"""


def build(source: str, name: str, folder: Path):
    """Compile one version under the namespace `name` (and `name`_parts); returns the two op namespaces."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.cpp"
    path.write_text(source.replace("hdr_lenet5", name) + PARTS.replace("NS", name))
    cpp_extension.load(name=name, sources=[str(path)], extra_cflags=list(native.CFLAGS),
                       extra_ldflags=list(native.LDFLAGS), build_directory=str(folder), is_python_module=False)
    return getattr(torch.ops, name), getattr(torch.ops, f"{name}_parts")


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
    results = {label: whole.loss_and_gradients(x, y, *params) for label, (whole, _) in ops.items()}
    differ = [(n, (a - b).abs().max().item()) for n, a, b in zip(names, results["base"], results["new"])
              if not torch.equal(a, b)]
    print("loss and gradients: " + ("bit for bit the same" if not differ else
                                    "differ: " + ", ".join(f"{n} by {d:.3g}" for n, d in differ)))
    # The parts' inputs, from the base version's forward pass (the same for both); gradients are random.
    parts = ops["base"][1]
    a1, c1 = parts.c1f(x, params[0], params[1])
    taps = params[2].permute(1, 2, 3, 0).contiguous().view(150, 16)
    h0, c2 = parts.c2f(a1, taps, params[3])
    g1, g2 = torch.randn_like(a1), torch.randn_like(h0)
    calls = {
        "conv1 forward": lambda p: p.c1f(x, params[0], params[1]),
        "conv1 backward": lambda p: p.c1b(g1, a1, c1, x),
        "conv2 forward": lambda p: p.c2f(a1, taps, params[3]),
        "conv2 backward": lambda p: p.c2b(g2, h0, c2, a1, taps),
    }
    print(f"{'part':<16} {'base':>10} {'new':>10}  base/new, median of {args.rounds} rounds (range)")
    for part in list(calls) + ["whole step"]:
        if part == "whole step":
            fns = {label: (lambda w=whole: w.loss_and_gradients(x, y, *params)) for label, (whole, _) in ops.items()}
            n_calls = 100
        else:
            fns = {label: (lambda p=p, f=calls[part]: f(p)) for label, (_, p) in ops.items()}
            n_calls = 300
        times = {"base": [], "new": []}
        for r in range(args.rounds):
            for label in (("base", "new") if r % 2 == 0 else ("new", "base")):
                times[label].append(per_call_microseconds(fns[label], n_calls))
        ratios = [b / n for b, n in zip(times["base"], times["new"])]
        print(f"{part:<16} {statistics.median(times['base']):>8.1f}us {statistics.median(times['new']):>8.1f}us  "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
