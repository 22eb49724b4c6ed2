"""What the chapters print beside their prose: MNIST's facts as chapter 02 checks them, the memory readings as a
table, and a summary with its interval."""

from __future__ import annotations

import html
import statistics

import torch

from hdr_lib import data as mnist
from hdr_lib.measure.queries import machine
from hdr_lib.measure.records import is_finite


def interval(s: dict, digits: int = 2, unit: str = "") -> str:
    """A `stats.summarize` summary as "mean [low, high]" (its 95 % interval), "mean (1 run)", or "no record"."""
    if not s or not s.get("n"):
        return "no record"
    if s.get("ci95_low") is None:
        return f"{s['mean']:.{digits}f}{unit} (1 run)"
    return f"{s['mean']:.{digits}f}{unit} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"


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


def readings(runs: list[dict], get) -> list[float]:
    """`get(record)` of each run where the record holds it as a finite number (a missing key or None is skipped)."""
    out = []
    for record in runs:
        try:
            value = get(record)
        except (KeyError, TypeError):
            continue
        if is_finite(value):
            out.append(float(value))
    return out


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
            values = sorted(readings(group, get))
            if wanted not in ("any", device):
                cells.append("-")
            elif not values:
                cells.append("not recorded")
            else:
                spread = f" ({values[0]:,.0f}-{values[-1]:,.0f})" if values[-1] - values[0] >= 1 else ""
                cells.append(f"{statistics.median(values):,.0f}{spread}")
        lines.append(f"| {device} | {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)



def html_table(columns, rows, css_class: str, attributes=None) -> str:
    """A plain HTML table whose every cell carries its column's name (data-label): on a narrow screen hdr.css stacks a
    row into a card. `attributes(column, text)` gives a cell's extra attributes (a class, a style)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-label="{html.escape(name)}"{attributes(name, text) if attributes else ""}>'
                                    f"{html.escape(text)}</td>" for name, text in zip(columns, row)) + "</tr>"
                   for row in rows)
    return (f'<div class="hdr-table-wrap"><table class="table {css_class}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")
