"""The scorecard: every number the paper claims beside ours from the run records, with a verdict by fixed rules.

The rules, in one place (each `Claim` names its rule; `verdict_for` applies it):

- Only complete training records of the paper's configuration count (§3.4: 20 epochs, batch 64, lr 0.01
  with our documented step decay, momentum 0.9; `deviations_from_paper` empty). Runs of the "fast" and the
  "reference" training path are scored apart, and a comparison of CPU and GPU uses one path for both.
- No record, or no value in the records (a GPU never measured, NVML unreadable): "not yet measured".
  Nothing is filled in or estimated.
- "time" (§4.1, 3600 s CPU and 300 s GPU): the paper's times belong to its 2017-era hardware (a 4-core
  Core i7 at 3.4 GHz, a GTX 1080 Ti, TensorFlow 2.x), which we do not have. So only the order of magnitude
  is testable: "reproduced" when our mean lies within a factor TIME_FACTOR (2) of the claim, else "not
  reproduced". "not reproduced" here says the paper's number does not carry over to our hardware and
  software; the note says by how much and in which direction.
- "speedup" (§4.1, 12x): speedup = mean CPU time / mean GPU time. "reproduced" when the GPU is faster
  than the CPU by at least the claimed factor on our hardware: the lower end of the speedup's interval
  (the single value when either device has one run) is >= 12.
- "accuracy" (§4.2, 98.2 % CPU, 98.3 % GPU): "reproduced" when our mean test accuracy is within
  ACCURACY_MARGIN_PP (0.3 percentage points, about three seed-to-seed standard deviations of this
  network) of the claim. Higher accuracy than claimed also counts as "not reproduced": the number differs.
- "accuracy_gap" (§4.2, "comparable" accuracy on both devices): "reproduced" when |GPU - CPU| mean
  accuracy is within ACCURACY_MARGIN_PP; the paper's +0.1 pp for the GPU is one run each, within noise.
- "utilisation" (§4.3, "consistently above 90 %"): mean over runs of the NVML mean GPU utilisation
  sampled during training (`utilisation.gpu.utilisation_mean_percent`); "reproduced" when above 90.
- "memory" (§4.3, "around 6 GB"): the peak GPU memory in use as NVML (and so nvidia-smi) reports it,
  CUDA context included (`utilisation.gpu.memory_used_max_bytes`); "reproduced" within a factor
  MEMORY_FACTOR (1.5) of 6 GB. PyTorch's own peak reservation is given in the note.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

from hdr_lib import records
from hdr_lib.records import is_finite, is_headline_run, one_machine
from hdr_lib.stats import summarize, welch

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not yet measured"
TIME_FACTOR = 2.0  # an absolute time on other hardware: same order of magnitude (claim / 2 .. claim * 2)
ACCURACY_MARGIN_PP = 0.3  # percentage points between our mean accuracy and the claim
MEMORY_FACTOR = 1.5  # "around 6 GB": 4 GB .. 9 GB
GB = 1e9

PAPER_CPU = "Intel Core i7, 4 cores / 8 threads, 3.4 GHz"  # §3.4
PAPER_GPU = "NVIDIA GeForce GTX 1080 Ti, 11 GB"  # §3.4


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the claim in the paper's words
    section: str  # where the paper says it
    value: float  # the paper's number, in `unit`
    unit: str
    rule: str  # time, speedup, accuracy, accuracy_gap, utilisation, memory (see the module docstring)
    device: str  # cpu, cuda, or both


CLAIMS = (
    Claim("cpu_time", "CPU training time, 20 epochs", "§4.1", 3600.0, "s", "time", "cpu"),
    Claim("gpu_time", "GPU training time, 20 epochs", "§4.1", 300.0, "s", "time", "cuda"),
    Claim("speedup", "Speedup, CPU time / GPU time", "§4.1", 12.0, "x", "speedup", "both"),
    Claim("cpu_accuracy", "CPU test accuracy", "§4.2", 98.2, "%", "accuracy", "cpu"),
    Claim("gpu_accuracy", "GPU test accuracy", "§4.2", 98.3, "%", "accuracy", "cuda"),
    Claim("accuracy_gap", "GPU minus CPU accuracy (\"comparable\")", "§4.2", 0.1, "pp", "accuracy_gap", "both"),
    Claim("gpu_utilisation", "GPU utilisation during training (above)", "§4.3", 90.0, "%", "utilisation", "cuda"),
    Claim("gpu_memory", "GPU memory in use (around)", "§4.3", 6.0, "GB", "memory", "cuda"),
)


@dataclass
class Row:
    claim: Claim
    path: str  # training path the runs used, "-" when there are none
    measured: dict | None  # summarize() of our values (mean, ci95_low/high, n ...), None when not measured
    hardware: str
    verdict: str
    note: str


def results_dir() -> Path:
    """The committed records: <repo>/results, or $HDR_RESULTS_DIR (for development builds)."""
    return Path(os.environ.get("HDR_RESULTS_DIR") or Path(__file__).resolve().parent.parent / "results")


def paper_runs(folder: str | os.PathLike | None = None) -> list[dict]:
    """Complete training records of the paper's configuration under `folder` (default `results_dir()`)."""
    return records.paper_runs(folder if folder is not None else results_dir())


def _values(records, get) -> list[float]:
    out = []
    for record in records:
        try:
            value = get(record)
        except (KeyError, TypeError):
            value = None
        if is_finite(value):
            out.append(float(value))
    return out


def _hardware(records, device: str) -> str:
    names = set()
    for r in records:
        env = r.get("environment", {})
        if device == "cuda":
            gpu = env.get("gpu") or {}
            names.add(f"{gpu.get('name', '?')} (CUDA {gpu.get('cuda', '?')}, torch {env.get('torch', '?')})")
        else:
            names.add(f"{env.get('cpu', '?')}, {env.get('threads', '?')} threads (torch {env.get('torch', '?')})")
    return "; ".join(sorted(names)) or "-"


def verdict_for(claim: Claim, measured: dict | None) -> str:
    """Apply the claim's rule (module docstring) to our summary; NOT_MEASURED without a value."""
    if not measured or measured.get("mean") is None:
        return NOT_MEASURED
    mean = measured["mean"]
    if claim.rule == "time":
        ok = claim.value / TIME_FACTOR <= mean <= claim.value * TIME_FACTOR
    elif claim.rule == "speedup":
        low = measured.get("ci95_low")
        ok = (low if low is not None else mean) >= claim.value
    elif claim.rule == "accuracy":
        ok = abs(mean - claim.value) <= ACCURACY_MARGIN_PP
    elif claim.rule == "accuracy_gap":
        ok = abs(mean) <= ACCURACY_MARGIN_PP
    elif claim.rule == "utilisation":
        ok = mean > claim.value
    elif claim.rule == "memory":
        ok = claim.value / MEMORY_FACTOR <= mean <= claim.value * MEMORY_FACTOR
    else:
        raise ValueError(f"unknown rule {claim.rule!r} for claim {claim.key}")
    return REPRODUCED if ok else NOT_REPRODUCED


def _speedup(cpu_times: list[float], gpu_times: list[float]) -> dict | None:
    """Ratio of the mean times; its interval the conservative ratio of the interval ends (n >= 2 each)."""
    if not cpu_times or not gpu_times:
        return None
    cpu, gpu = summarize(cpu_times), summarize(gpu_times)
    out = {"n": min(cpu["n"], gpu["n"]), "n_cpu": cpu["n"], "n_gpu": gpu["n"], "mean": cpu["mean"] / gpu["mean"],
           "ci95_low": None, "ci95_high": None}
    if cpu["ci95_low"] is not None and gpu["ci95_low"] is not None and gpu["ci95_low"] > 0:
        out["ci95_low"] = cpu["ci95_low"] / gpu["ci95_high"]
        out["ci95_high"] = cpu["ci95_high"] / gpu["ci95_low"]
    return out


def _gap(cpu_acc: list[float], gpu_acc: list[float]) -> dict | None:
    if not cpu_acc or not gpu_acc:
        return None
    test = welch(cpu_acc, gpu_acc)
    diff = summarize(gpu_acc)["mean"] - summarize(cpu_acc)["mean"]
    return {"n": min(len(cpu_acc), len(gpu_acc)), "n_cpu": len(cpu_acc), "n_gpu": len(gpu_acc), "mean": diff,
            "ci95_low": test["ci95_low"], "ci95_high": test["ci95_high"]}


def _measure(claim: Claim, cpu: list[dict], gpu: list[dict]) -> tuple[dict | None, str]:
    """Our summary for one claim, and a note on what was measured (or why nothing was)."""
    time = lambda r: r["total_train_seconds"]  # noqa: E731
    accuracy = lambda r: r["test_accuracy"]  # noqa: E731
    if claim.key in ("cpu_time", "gpu_time"):
        runs = cpu if claim.device == "cpu" else gpu
        values = _values(runs, time)
        measured = summarize(values) if values else None
        if measured is None:
            return None, f"no complete {claim.device} run of the paper's configuration in the records"
        ratio = measured["mean"] / claim.value
        return measured, (f"ours is {1 / ratio:.1f}x faster than the paper's" if ratio < 1 else
                          f"ours is {ratio:.1f}x slower than the paper's") + " (training only, evaluation apart)"
    if claim.key == "speedup":
        measured = _speedup(_values(cpu, time), _values(gpu, time))
        if measured is None:
            missing = " and ".join(d for d, runs in (("CPU", cpu), ("GPU", gpu)) if not runs) or "timed"
            return None, f"needs CPU and GPU runs of one path; {missing} runs missing"
        return measured, f"{measured['n_cpu']} CPU and {measured['n_gpu']} GPU runs"
    if claim.key in ("cpu_accuracy", "gpu_accuracy"):
        runs = cpu if claim.device == "cpu" else gpu
        values = _values(runs, accuracy)
        if not values:
            return None, f"no complete {claim.device} run of the paper's configuration in the records"
        measured = summarize(values)
        return measured, f"{measured['mean'] - claim.value:+.2f} pp from the paper's"
    if claim.key == "accuracy_gap":
        measured = _gap(_values(cpu, accuracy), _values(gpu, accuracy))
        if measured is None:
            return None, "needs CPU and GPU runs of one path"
        return measured, "Welch 95 % interval" if measured["ci95_low"] is not None else "one run per device or fewer"
    if claim.key == "gpu_utilisation":
        values = _values(gpu, lambda r: r["utilisation"]["gpu"]["utilisation_mean_percent"])
        if not values:
            reasons = {str((r.get("utilisation", {}).get("gpu") or {}).get("reason")) for r in gpu}
            return None, ("no GPU run in the records" if not gpu else
                          "NVML gave no samples: " + "; ".join(sorted(reasons)))
        return summarize(values), "NVML, sampled every 50 ms during training epochs"
    if claim.key == "gpu_memory":
        values = _values(gpu, lambda r: r["utilisation"]["gpu"]["memory_used_max_bytes"] / GB)
        if not values:
            return None, "no GPU run in the records" if not gpu else "NVML gave no memory samples"
        reserved = _values(gpu, lambda r: r["memory"]["cuda_peak_reserved_bytes"] / GB)
        note = "NVML peak in use, CUDA context included"
        if reserved:
            note += f"; PyTorch reserved at most {max(reserved) * 1000:.0f} MB"
        return summarize(values), note
    raise ValueError(f"no measurement defined for claim {claim.key}")


def scorecard(records: list[dict] | None = None) -> list[Row]:
    """One row per claim and training path found in `records` (default: `paper_runs()`)."""
    records = paper_runs() if records is None else [r for r in records if is_headline_run(r)]
    paths = sorted({r["config"].get("path", "?") for r in records}) or ["-"]
    rows = []
    for path in paths:
        on_path = [r for r in records if r["config"].get("path") == path]
        cpu = one_machine([r for r in on_path if r["config"].get("device") == "cpu"])
        gpu = one_machine([r for r in on_path if r["config"].get("device") == "cuda"])
        for claim in CLAIMS:
            measured, note = _measure(claim, cpu, gpu)
            hardware = {"cpu": _hardware(cpu, "cpu"), "cuda": _hardware(gpu, "cuda")}.get(
                claim.device, f"{_hardware(cpu, 'cpu')} vs {_hardware(gpu, 'cuda')}")
            rows.append(Row(claim, path, measured, hardware, verdict_for(claim, measured), note))
    return rows


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = {"s": 1, "x": 1, "%": 2, "pp": 2, "GB": 2}.get(unit, 2)
    return f"{value:.{digits}f} {unit}" if unit not in ("%", "x") else f"{value:.{digits}f}{unit}"


def format_measured(row: Row) -> str:
    m, unit = row.measured, row.claim.unit
    if not m or m.get("mean") is None:
        return NOT_MEASURED
    text = format_value(m["mean"], unit)
    if m.get("ci95_low") is not None:
        text += f" ({format_value(m['ci95_low'], unit)} to {format_value(m['ci95_high'], unit)})"
    return text + f", n = {m['n']}"


def paper_value(claim: Claim) -> str:
    prefix = {"utilisation": "> ", "memory": "~ "}.get(claim.rule, "")
    return prefix + (f"{claim.value:g}{claim.unit}" if claim.unit in ("%", "x") else f"{claim.value:g} {claim.unit}")


def paper_hardware(claim: Claim) -> str:
    return {"cpu": PAPER_CPU, "cuda": PAPER_GPU}.get(claim.device, f"{PAPER_CPU} vs {PAPER_GPU}")


COLUMNS = ("Claim", "Paper", "Ours: mean (95 % CI), runs", "Verdict", "Path", "Hardware: paper / ours", "Note")
VERDICT_COLOURS = {REPRODUCED: "#d4edda", NOT_REPRODUCED: "#f8d7da", NOT_MEASURED: "#e2e3e5"}


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    return [(f"{r.claim.text} ({r.claim.section})", paper_value(r.claim), format_measured(r), r.verdict, r.path,
             f"paper: {paper_hardware(r.claim)}; ours: {r.hardware}", r.note) for r in rows]


def to_html(rows: list[Row]) -> str:
    """A plain HTML table; the verdict cell is coloured and carries a class (hdr-reproduced, ...)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for cells in table_rows(rows):
        tds = []
        for name, cell in zip(COLUMNS, cells):
            if name == "Verdict":
                tds.append(f'<td class="hdr-{cell.replace(" ", "-")}" style="background:{VERDICT_COLOURS[cell]}">'
                           f"<strong>{html.escape(cell)}</strong></td>")
            elif name in ("Hardware: paper / ours", "Note"):
                tds.append(f'<td style="font-size:0.85em">{html.escape(cell)}</td>')
            else:
                tds.append(f"<td>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="hdr-table-wrap"><table class="table hdr-scorecard"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def time_figure(rows: list[Row]):
    """Paper's and our training times (log scale), our bars with their 95 % interval where we have one."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = ["CPU", "GPU"]
    fig.add_bar(name="paper (2017-era hardware)", x=labels, y=[3600.0, 300.0])
    for path in sorted({r.path for r in rows}):
        means, err_hi, err_lo, text = [], [], [], []
        for key in ("cpu_time", "gpu_time"):
            row = next(r for r in rows if r.path == path and r.claim.key == key)
            m = row.measured or {}
            mean = m.get("mean")
            means.append(mean)
            err_hi.append((m["ci95_high"] - mean) if m.get("ci95_high") is not None else 0)
            err_lo.append((mean - m["ci95_low"]) if m.get("ci95_low") is not None else 0)
            text.append(NOT_MEASURED if mean is None else f"n = {m['n']}")
        fig.add_bar(name=f"ours ({path} path)", x=labels, y=means, text=text, textposition="outside",
                    error_y=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True))
    fig.update_layout(title="Training time for 20 epochs", barmode="group", yaxis_type="log",
                      yaxis_title="seconds (log scale)", height=420)
    return fig
