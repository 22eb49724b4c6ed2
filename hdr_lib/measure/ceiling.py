"""What the device itself reaches: the float32 rate of a large matrix product, measured in the process that times
training, as the ceiling a training path's sustained rate is compared with.

A LeNet-5 step at batch 64 is small matrices and short loops, which run below this rate; the fraction of it that
a path reaches says how much of the hardware the path uses. The product is IEEE float32 (TF32 off on CUDA), as the
paper's configuration is, and its rate is the best of a few timed trials: the ceiling, not an average.
"""

from __future__ import annotations

import torch

from hdr_lib.measure.timing import Stopwatch

SIZES = {"cpu": 1024, "cuda": 4096}  # large enough to run at the library's full speed, small enough to be quick


def matmul_rate(device: torch.device | str, *, n: int | None = None, seconds: float = 0.3, trials: int = 3) -> dict:
    """GFLOP/s of `torch.mm` on two n x n float32 matrices: each trial repeats the product for about `seconds`."""
    device = torch.device(device)
    n = SIZES.get(device.type, 1024) if n is None else n
    if n < 1 or seconds <= 0 or trials < 1:
        raise ValueError(f"matmul_rate needs n >= 1, seconds > 0 and trials >= 1 (got {n}, {seconds}, {trials})")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    out = torch.empty(n, n, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with Stopwatch(device) as first:  # the first product also loads the library's kernels
            torch.mm(a, b, out=out)
        repeats = max(1, round(seconds / max(first.seconds, 1e-6)))
        with Stopwatch(device) as calibrate:
            for _ in range(repeats):
                torch.mm(a, b, out=out)
        repeats = max(1, round(repeats * seconds / max(calibrate.seconds, 1e-6)))
        rates = []
        for _ in range(trials):
            with Stopwatch(device) as sw:
                for _ in range(repeats):
                    torch.mm(a, b, out=out)
            rates.append(2 * n ** 3 * repeats / sw.seconds / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"op": "torch.mm", "n": n, "dtype": "float32", "tf32": False, "repeats": repeats, "trials": trials,
            "gflops_per_trial": rates, "gflops": max(rates)}
