"""What the chapters print beside their prose: MNIST's facts as chapter 02 checks them, the memory readings as a
table, a summary with its interval, and the one line on which GPU runs are recorded."""

from __future__ import annotations

import math
import statistics

import torch

from hdr_lib import data as mnist
from hdr_lib.measure import queries
from hdr_lib.measure.queries import machine


def interval(s: dict, digits: int = 2, unit: str = "") -> str:
    """A `stats.summarize` summary as "mean [low, high]" (its 95 % interval), "mean (1 run)", or "no record"."""
    if not s or not s.get("n"):
        return "no record"
    if s.get("ci95_low") is None:
        return f"{s['mean']:.{digits}f}{unit} (1 run)"
    return f"{s['mean']:.{digits}f}{unit} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"


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

