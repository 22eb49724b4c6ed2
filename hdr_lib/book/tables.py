"""What the chapters print: the paper's claims, the data, the network and the configuration, and the records'
measurements, as Markdown or fixed-width text; "not yet measured" where the records hold nothing."""

from __future__ import annotations

import math
import statistics

import torch

from hdr_lib import data as mnist, paper
from hdr_lib.config import PAPER, TrainConfig
from hdr_lib.measure import queries
from hdr_lib.measure.queries import NOT_MEASURED, machine, provenance
from hdr_lib.measure.stats import summarize
from hdr_lib.measure.flops import layer_table
from hdr_lib.model import LeNet5, count_parameters


def _fmt(value, unit="", digits=1) -> str:
    return NOT_MEASURED if value is None else f"{value:,.{digits}f}{unit}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def paper_claims_markdown() -> str:
    """The paper's headline numbers (§4.1-§4.3) and hardware (§3.4) as a Markdown table, from hdr_lib.paper."""
    framework = paper.FRAMEWORK.split(" with ")[0]
    return "\n".join([
        "| | CPU | GPU |", "|---|---|---|",
        f"| hardware (§3.4) | {paper.CPU.short} | {paper.GPU.short} |",
        f"| training time, {paper.EPOCHS} epochs (§4.1) | {_seconds(paper.CPU_SECONDS)} | "
        f"{_seconds(paper.GPU_SECONDS)} ({paper.SPEEDUP:g}x faster) |",
        f"| test accuracy (§4.2) | {paper.CPU_ACCURACY:g} % | {paper.GPU_ACCURACY:g} % |",
        f"| utilisation, memory (§4.3) | - | > {paper.GPU_UTILISATION:g} %, ~{paper.GPU_MEMORY_GB:g} GB of "
        f"{paper.GPU.memory_gb:g} GB |",
        f"| framework (§3.4) | {framework} | {paper.FRAMEWORK.replace(' with ', ', ').replace(' and ', ', ')} |"])


def cuda_statement(results_dir=None) -> str:
    """A Markdown line: which CUDA runs are recorded (hardware and dates), or plainly that none is."""
    runs = queries.recorded_runs(results_dir, "cuda")
    if not runs:
        return (f"**No GPU run is recorded yet** (no complete CUDA record under "
                f"`{queries.shown(queries.results_folder(results_dir))}`): every GPU number on this page is the paper's.")
    gpus = sorted({machine(r) for r in runs})
    dates = sorted(r["environment"]["created_at"][:10] for r in runs)
    return (f"**GPU measurement: {len(runs)} recorded CUDA run(s)** on {', '.join(gpus)}, made "
            f"{dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''} (torch "
            f"{runs[0]['environment']['torch']}). They were recorded, not run while this page was built.")


def dataset_summary(data: mnist.MNISTTensors) -> dict:
    """Shapes, dtypes, value range and images per digit: the deterministic facts chapter 02 checks."""
    return {
        "train_images": f"{tuple(data.train_images.shape)} {data.train_images.dtype}",
        "test_images": f"{tuple(data.test_images.shape)} {data.test_images.dtype}",
        "pixel_range": (int(data.train_images.min()), int(data.train_images.max())),
        "train_per_digit": torch.bincount(data.train_labels, minlength=10).tolist(),
        "test_per_digit": torch.bincount(data.test_labels, minlength=10).tolist(),
    }


def pixel_stats(data: mnist.MNISTTensors) -> str:
    """Mean and standard deviation of the scaled training pixels, and the share that is pure background."""
    x = data.train_images.float() / 255
    background = (data.train_images == 0).float().mean().item()
    return (f"scaled to [0, 1] as in §3.2: mean {x.mean().item():.4f}, std {x.std().item():.4f}; "
            f"{100 * background:.1f} % of pixels are exactly 0 (background)")


def layer_comparison() -> str:
    """Our traced layers for the paper's reading and for LeNet-5 of 1998, side by side, as fixed-width text."""
    ours, lenet = layer_table("paper"), layer_table("lenet1998")
    lines = [f"{'layer':<8} {'paper: output':<14} {'params':>7}   {'1998: output':<14} {'params':>7}"]
    for a, b in zip(ours, lenet):
        lines.append(f"{a['layer']:<8} {str(a['output_shape']):<14} {a['parameters']:>7,}   "
                     f"{str(b['output_shape']):<14} {b['parameters']:>7,}")
    lines.append(f"{'total':<8} {'':<14} {count_parameters(LeNet5('paper')):>7,}   {'':<14} "
                 f"{count_parameters(LeNet5('lenet1998')):>7,}")
    return "\n".join(lines)


def config_table(config: TrainConfig) -> str:
    """The configuration as run, one field a line, with where each value comes from."""
    origin = {"epochs": "§3.4", "batch_size": "§3.4", "lr": "§3.4", "momentum": "§3.4", "loss": "§3.4",
              "pixel_scale": "§3.2", "variant": "§3.3 (no padding)", "lr_step_epochs": "our reading of §3.4",
              "lr_gamma": "our reading of §3.4", "model": "§3.3 (resnet: the paper's future work)",
              "amp": "beyond the paper"}
    lines = []
    for name, value in config.as_dict().items():
        source = origin.get(name, "how we run it")
        differs = "" if value == getattr(PAPER, name) else "   <- differs from the paper's setting"
        lines.append(f"{name:<15} {value!s:<14} {source}{differs}")
    return "\n".join(lines)


def memory_estimate(batch_size: int = paper.BATCH_SIZE, variant: str = "paper") -> dict:
    """Bytes LeNet-5 needs in float32: weights, gradients, momentum, one batch's activations, and MNIST itself."""
    params = count_parameters(LeNet5(variant))
    activations = sum(math.prod(row["output_shape"]) for row in layer_table(variant)) * batch_size
    images = paper.TRAIN_IMAGES + paper.TEST_IMAGES
    return {
        "weights, gradients and momentum": 3 * params * 4,
        f"activations of one batch of {batch_size} (forward, kept for backward)": activations * 4,
        "all of MNIST as float32 on the device (fast path)": images * paper.IMAGE_SIDE ** 2 * 4,
    }


MEMORY_COLUMNS = {  # column: (device, where the reading is in a record, unit); medians over a machine's runs
    "peak RSS, MiB": ("any", lambda r: r["memory"]["peak_rss_bytes"] / 2**20),
    "CPU utilisation, % of all cores": ("cpu", lambda r: r["utilisation"]["cpu"]["utilisation_percent"]),
    "CUDA allocated (peak), MiB": ("cuda", lambda r: r["memory"]["cuda_peak_allocated_bytes"] / 2**20),
    "CUDA reserved (peak), MiB": ("cuda", lambda r: r["memory"]["cuda_peak_reserved_bytes"] / 2**20),
    "NVML used (peak), MiB": ("cuda", lambda r: r["utilisation"]["gpu"]["memory_used_max_bytes"] / 2**20),
    "NVML used (mean), MiB": ("cuda", lambda r: r["utilisation"]["gpu"]["memory_used_mean_bytes"] / 2**20),
    "GPU utilisation (mean), %": ("cuda", lambda r: r["utilisation"]["gpu"]["utilisation_mean_percent"]),
    "GPU utilisation (10th percentile), %": ("cuda", lambda r: r["utilisation"]["gpu"]["utilisation_p10_percent"]),
}


def _reading(record: dict, get) -> float | None:
    try:
        value = get(record)
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def memory_markdown(runs: list[dict]) -> str:
    """A labelled Markdown table, one row per device and machine: how many runs, and the median of each memory and
    utilisation reading (its range where the runs differ); a column only for the devices that have it."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["config"]["device"], machine(r)), []).append(r)
    devices = {device for device, _ in groups}
    columns = [c for c, (device, _) in MEMORY_COLUMNS.items() if device == "any" or device in devices]
    lines = ["| device | machine | runs | " + " | ".join(columns) + " |", "|---|---|---:|" + "---:|" * len(columns)]
    for (device, name), group in sorted(groups.items()):
        cells = []
        for column in columns:
            wanted, get = MEMORY_COLUMNS[column]
            values = sorted(v for v in (_reading(r, get) for r in group) if v is not None)
            if wanted not in ("any", device):
                cells.append("-")
            elif not values:
                cells.append("not recorded")
            else:
                spread = f" ({values[0]:,.0f}-{values[-1]:,.0f})" if values[-1] - values[0] >= 1 else ""
                cells.append(f"{statistics.median(values):,.0f}{spread}")
        lines.append(f"| {device} | {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling_markdown(results_dir=None) -> str:
    """Per bench record: how much of its device each way used, its sustained GFLOP/s (the epoch's FLOPs over its
    median epoch) against a large float32 matrix product's on the same device in the same process (`ceiling`)."""
    found = queries.recorded(results_dir, "bench")
    if not found:
        return f"**{NOT_MEASURED}:** no benchmark record under `{queries.shown(queries.results_folder(results_dir))}`."
    parts = []
    for r in found:
        c = r["ceiling"]
        n, per_round = c["matmul"]["n"], c["matmul"]["gflops_per_round"]
        lines = [f"{provenance(r)}: a {n} x {n} float32 matrix product (`torch.mm`) runs at "
                 f"**{c['matmul']['gflops']:,.0f} GFLOP/s** (the median of {len(per_round)} rounds, "
                 f"{min(per_round):,.0f} to {max(per_round):,.0f}; each round's the best of {c['matmul']['trials']} "
                 "trials).", "",
                 "| way | sustained GFLOP/s | share of the matrix product's |", "|---|---|---|"]
        for name, rate in c["gflops"].items():
            lines.append(f"| {name} | {rate:,.1f} | {100 * c['fraction_of_matmul'][name]:.1f} % |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def cuda_ways_markdown(results_dir=None) -> str:
    """`queries.cuda_ways` as a Markdown table, or a line saying plainly that no such run is recorded."""
    rows = queries.cuda_ways(results_dir)
    if not rows:
        return (f"**{NOT_MEASURED}:** no CUDA fast-path record of the paper's configuration under "
                f"`{queries.shown(queries.results_folder(results_dir))}`.")
    lines = [f"| how the step ran | GPU | runs | training, {paper.EPOCHS} epochs (mean) | one-time setup (mean) | "
             "accuracy (mean) |", "|---|---|---|---|---|---|"]
    for row in rows:
        seconds, setup, accuracy = (summarize(row[key])["mean"] for key in ("seconds", "setup_seconds", "accuracy"))
        lines.append(f"| {row['way']} | {row['hardware']} | {len(row['seconds'])} | {seconds:.2f} s | "
                     f"{setup:.1f} s | {accuracy:.2f} % |")
    return "\n".join(lines)


def kernel_times_markdown(results_dir=None) -> str:
    """The Triton step's kernels timed alone (scripts/cuda_kernel_times.py, kind "kernel-times"), one table per
    record, or a line saying plainly that none is recorded."""
    found = queries.recorded(results_dir, "kernel-times")
    if not found:
        return (f"**{NOT_MEASURED}:** no timing of the Triton step's kernels under "
                f"`{queries.shown(queries.results_folder(results_dir))}` (`scripts/cuda_kernel_times.py` makes one "
                "on a GPU).")
    parts = []
    for r in found:
        lines = [f"{provenance(r)}:", "", "| kernel | median | min | max |", "|---|---|---|---|"]
        for name, t in r["microseconds_per_launch"].items():
            lines.append(f"| {name} | {t['median']:.1f} µs | {t['min']:.1f} µs | {t['max']:.1f} µs |")
        lines += ["", f"{paper.EPOCHS} epochs of such steps ({r['projected_steps']:,}, kernels only): "
                      f"{r['projected_seconds_20_epochs']:.2f} s."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
