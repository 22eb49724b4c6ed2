"""What the chapter notebooks call: parameter checks, one shared cached live run, recorded runs and claims."""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import math
import os
from pathlib import Path

import torch

from hdr_lib import checkpoint, data as mnist, paths
from hdr_lib.config import PAPER, ConfigError, TrainConfig, check
from hdr_lib.measure.machine import resolve_device
from hdr_lib.model import LeNet5, count_parameters, layer_table
from hdr_lib.book.figures import PAPER_CLAIMS
from hdr_lib.measure import records
from hdr_lib.measure.records import RecordError, load_records
from hdr_lib.measure.stats import summarize

ROOT = Path(__file__).resolve().parents[2]  # the repository: results/ and _build/ live here
NOT_MEASURED = "not yet measured"


def _number(name: str, value, range_name: str | None = None):
    """A number parameter in its range (hdr_lib.config.RANGES); a typo papermill passes through (`-p lr abc` arrives
    as the string 'abc') is named with the way to pass it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        example = {"epochs": 20, "batch_size": 64, "lr": 0.01, "seed": 0}.get(name, 1)
        raise ConfigError(f"parameter {name} must be a number, got {value!r} ({type(value).__name__}); "
                          f"pass it unquoted, e.g. `-p {name} {example}`")
    return check(name, value, f"parameter {name}", range_name=range_name, whole_floats=True)


def _folder(value, default: Path, name: str = "folder") -> Path:
    if value is None:
        return default
    return paths.input_path(value, f"parameter {name}")


PARAMETERS = ("device", "epochs", "batch_size", "lr", "seed", "data_dir", "results_dir", "cache_dir")
INJECTED_COMMENT = "# Parameters\n"  # how papermill's Python translator opens the cell it injects


def injected_parameters() -> list[str] | None:
    """The names papermill injected into this kernel (its "# Parameters" cell, the last one run), or None when the
    kernel ran none (JupyterLab, a plain import). papermill only warns about a name the notebook does not declare;
    the check cell reads them here so that a typo stops the chapter instead of running its default."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    source = next((cell for cell in reversed(history) if cell.startswith(INJECTED_COMMENT)), None)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return [target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)]


def check_parameters(device="auto", epochs=PAPER.epochs, batch_size=PAPER.batch_size, lr=PAPER.lr,
                     seed=PAPER.seed, data_dir=None, results_dir=None, cache_dir=None, needs_data=True,
                     injected: list[str] | None = None, **extra) -> TrainConfig:
    """Check a notebook's parameters before any work; return the TrainConfig they describe.

    Raises ConfigError (a ValueError) naming the bad parameter and what to pass instead: a name the chapter does
    not take (from `injected`, else `injected_parameters()`), a number outside hdr_lib.config.RANGES, a folder that
    is empty or, for `cache_dir`, cannot be written. Side effects: sets $HDR_DATA_DIR to the absolute folder when
    `data_dir` is given or $HDR_DATA_DIR is relative, so every later call finds the same MNIST, and checks that
    MNIST is there when `needs_data` (a given `data_dir` is read, never created).
    """
    known = set(PARAMETERS) | set(extra)
    unknown = [name for name in (injected if injected is not None else injected_parameters() or [])
               if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"unknown parameter {unknown[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"this chapter takes {', '.join(sorted(known))}")
    if not isinstance(device, str):
        raise ConfigError(f"parameter device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    config = PAPER.replace(device=device, epochs=_number("epochs", epochs),
                           batch_size=_number("batch_size", batch_size), lr=_number("lr", lr),
                           seed=_number("seed", seed)).validate()
    resolve_device(config.device)  # 'cuda' on a machine without one fails here, not after the data loads
    for name, value in extra.items():
        if name.endswith("_steps") and value is not None:
            _number(name, value, "steps")
    _folder(results_dir, ROOT / "results", "results_dir")
    if cache_dir is not None:
        paths.output_folder(paths.input_path(cache_dir, "parameter cache_dir"), "parameter cache_dir")
    if data_dir is not None:
        _folder(data_dir, ROOT / "data", "data_dir")  # a path, not a number
    # One rule for where MNIST is (hdr_lib.data.locate); a folder the chapter was given, or a relative
    # $HDR_DATA_DIR, is made absolute once here, so every later call in this kernel finds the same MNIST.
    location = mnist.locate(data_dir)
    if location.source != "../shared/data" and location.source != "default":
        os.environ[mnist.ENV_VAR] = str(location.root)
    if needs_data:
        mnist.ensure_mnist(data_dir, download=True)  # a data_dir given is named as such in an error
    return config


def results_folder(results_dir=None) -> Path:
    return _folder(results_dir, ROOT / "results", "results_dir")


def _shown(folder: Path) -> str:
    """A folder as a page shows it: relative to the repository where it lies inside it (no build-machine paths)."""
    try:
        return f"{folder.resolve().relative_to(ROOT)}/"
    except ValueError:
        return str(folder)


def cache_folder(cache_dir=None) -> Path:
    return _folder(cache_dir, ROOT / "_build" / "run-cache", "cache_dir")


# ---------------------------------------------------------------- one live run, shared by chapters 05-08

def _run_key(config: TrainConfig) -> dict:
    key = config.as_dict()
    key["device"] = resolve_device(config.device).type
    return key


def _cache_name(key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{key['device']}-{key['path']}-e{key['epochs']}-b{key['batch_size']}-seed{key['seed']}-{digest}"


def cached_run(config: TrainConfig, cache_dir=None, *, data=None, verbose: bool = True):
    """(record, model) of `config`: reused from `cache_dir` when a complete record with the identical
    configuration (device resolved) and its weights are there, else trained now and written there.

    This is how chapters 05-08 of a book build share one live run instead of training four times. With
    `verbose`, training prints one line per epoch and, in a live kernel (JupyterLab) or a terminal, shows
    tqdm's progress bars: the run's epochs and the batches inside each epoch. Where $HDR_PROGRESS=0 (the book
    build sets it) there are no bars, only the lines (hdr_lib.train._progress_enabled decides).
    """
    key = _run_key(config)
    folder = cache_folder(cache_dir)
    stem = folder / _cache_name(key)
    weights = stem.with_suffix(".pt")
    if stem.with_suffix(".json").is_file() and weights.is_file():
        for record in load_records(folder, kind="train", status="complete"):
            saved = {k: v for k, v in record["config"].items() if k != "device_requested"}
            if saved == key and Path(record["_path"]) == stem.with_suffix(".json"):
                model = LeNet5(config.variant)
                try:  # its digest checked, read without running code (hdr_lib.checkpoint)
                    model.load_state_dict(checkpoint.load(weights))
                except (checkpoint.CheckpointError, RuntimeError, TypeError) as exc:
                    print(f"the cached weights {_shown(folder)}{weights.name} cannot be used ({exc}); training "
                          f"again")
                    break
                if verbose:
                    print(f"reusing the live run recorded {record['environment']['created_at']} in "
                          f"{_shown(folder)}{stem.name}.json")
                return record, model.to(key["device"])
    from hdr_lib.train import train

    def report(entry, _record):
        if verbose:
            print(f"epoch {entry['epoch']:>2}/{config.epochs}: loss {entry['train_loss']:.4f}, test accuracy "
                  f"{entry['test_accuracy']:.2f} %, {entry['train_seconds']:.1f} s training", flush=True)

    record, model = train(config, data=data, out=stem.with_suffix(".json"), progress=None if verbose else False,
                          on_epoch=report, return_model=True)
    checkpoint.save(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    record["_path"] = str(stem.with_suffix(".json"))
    return record, model


# ---------------------------------------------------------------- recorded runs from results/

def recorded_runs(results_dir=None, device: str | None = None, **config_filters) -> list[dict]:
    """Complete train records under results/ (optionally one device, e.g. "cuda"); [] when there are none."""
    folder = results_folder(results_dir)
    if not folder.is_dir():
        return []
    filters = dict(config_filters)
    if device is not None:
        filters["device"] = device
    return load_records(folder, kind="train", status="complete", **filters)


def paper_runs(results_dir=None, device: str | None = None, path: str | None = "fast") -> list[dict]:
    """Recorded runs of exactly the paper's configuration; by default of the fast path only, so that times
    of the two paths are never pooled (`path=None` gives both)."""
    return records.paper_runs(results_folder(results_dir), device, path)


def hardware(record: dict) -> str:
    """The processor a record ran on: the GPU's name for CUDA runs, the CPU model and threads otherwise."""
    return records.machine(record)


def provenance(record: dict) -> str:
    """One line saying where, when and with what a record was made."""
    env = record["environment"]
    commit = (env.get("git_commit") or "unknown commit")[:12]
    return (f"{hardware(record)}, torch {env['torch']}, {env['created_at'][:10]}, seed "
            f"{record['config']['seed']}, commit {commit}")


def cuda_statement(results_dir=None) -> str:
    """A Markdown line: which CUDA runs are recorded (hardware and dates), or plainly that none is."""
    runs = recorded_runs(results_dir, "cuda")
    if not runs:
        return (f"**GPU measurement: {NOT_MEASURED}.** There is no complete CUDA record under "
                f"`{_shown(results_folder(results_dir))}`; nothing about the GPU below is ours.")
    gpus = sorted({hardware(r) for r in runs})
    dates = sorted(r["environment"]["created_at"][:10] for r in runs)
    return (f"**GPU measurement: {len(runs)} recorded CUDA run(s)** on {', '.join(gpus)}, made "
            f"{dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''} (torch "
            f"{runs[0]['environment']['torch']}). They were recorded, not run while this page was built.")


def device_summary(records: list[dict]) -> dict | None:
    """{"seconds", "accuracy", "hardware", "epochs"} for a list of runs of one device, or None if empty."""
    if not records:
        return None
    return {"seconds": [r["total_train_seconds"] for r in records],
            "accuracy": [r["test_accuracy"] for r in records],
            "hardware": " / ".join(sorted({hardware(r) for r in records})),
            "epochs": records[0]["config"]["epochs"]}


def _fmt(value, unit="", digits=1) -> str:
    return NOT_MEASURED if value is None else f"{value:,.{digits}f}{unit}"


# ---------------------------------------------------------------- chapter-specific helpers

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
    paper, lenet = layer_table("paper"), layer_table("lenet1998")
    lines = [f"{'layer':<8} {'paper: output':<14} {'params':>7}   {'1998: output':<14} {'params':>7}"]
    for a, b in zip(paper, lenet):
        lines.append(f"{a['layer']:<8} {str(a['output_shape']):<14} {a['parameters']:>7,}   "
                     f"{str(b['output_shape']):<14} {b['parameters']:>7,}")
    lines.append(f"{'total':<8} {'':<14} {count_parameters(LeNet5('paper')):>7,}   {'':<14} "
                 f"{count_parameters(LeNet5('lenet1998')):>7,}")
    return "\n".join(lines)


def config_table(config: TrainConfig) -> str:
    """The configuration as run, one field a line, with where each value comes from."""
    origin = {"epochs": "§3.4", "batch_size": "§3.4", "lr": "§3.4", "momentum": "§3.4", "loss": "§3.4",
              "pixel_scale": "§3.2", "variant": "§3.3 (no padding)", "lr_step_epochs": "our reading of §3.4",
              "lr_gamma": "our reading of §3.4", "channels_last": "beyond the paper", "amp": "beyond the paper",
              "tf32": "beyond the paper"}
    lines = []
    for name, value in config.as_dict().items():
        source = origin.get(name, "how we run it")
        differs = "" if value == getattr(PAPER, name) else "   <- differs from the paper's setting"
        lines.append(f"{name:<15} {value!s:<14} {source}{differs}")
    return "\n".join(lines)


def memory_estimate(batch_size: int = PAPER.batch_size, variant: str = "paper") -> dict:
    """Bytes LeNet-5 needs in float32: weights, gradients, momentum, one batch's activations, and MNIST itself."""
    params = count_parameters(LeNet5(variant))
    activations = sum(math.prod(row["output_shape"]) for row in layer_table(variant)) * batch_size
    return {
        "weights, gradients and momentum": 3 * params * 4,
        f"activations of one batch of {batch_size} (forward, kept for backward)": activations * 4,
        "all of MNIST as float32 on the device (fast path)": 70_000 * 28 * 28 * 4,
    }


def memory_lines(records: list[dict]) -> list[str]:
    """One line per record: peak RSS, and for CUDA the allocator's peak allocated/reserved and NVML's reading."""
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:,.0f} MiB"  # noqa: E731
    lines = []
    for r in records:
        m, u = r.get("memory", {}), r.get("utilisation", {})
        line = f"{r['config']['device']} on {hardware(r)}: peak RSS {mib(m.get('peak_rss_bytes'))}"
        if r["config"]["device"] == "cuda":
            gpu = u.get("gpu", {})
            line += (f"; CUDA allocated {mib(m.get('cuda_peak_allocated_bytes'))}, reserved "
                     f"{mib(m.get('cuda_peak_reserved_bytes'))}; NVML used {mib(gpu.get('memory_used_max_bytes'))}, "
                     f"utilisation mean {_fmt(gpu.get('utilisation_mean_percent'), ' %')}, 10th percentile "
                     f"{_fmt(gpu.get('utilisation_p10_percent'), ' %')}, memory in use mean "
                     f"{mib(gpu.get('memory_used_mean_bytes'))}")
        else:
            line += f"; CPU utilisation {_fmt(u.get('cpu', {}).get('utilisation_percent'), ' % of all cores')}"
        lines.append(line)
    return lines


def bench_rows(results_dir=None) -> list[dict]:
    """Per-epoch seconds of each path from bench records (`hdr_lib.measure.bench`): rows of device, path, seconds,
    images per second and hardware. A bench record without `runs` is reported as damaged, never skipped."""
    folder = results_folder(results_dir)
    records = load_records(folder, kind="bench") if folder.is_dir() else []
    rows = []
    for r in records:
        if not isinstance(r.get("runs"), dict):
            raise RecordError(f"bench record {r['_path']} has no 'runs'; it was not written by hdr_lib.measure.bench")
        for name, items in r["runs"].items():
            seconds = [item["train_seconds"] for item in items]
            summary = r["summary"][name]
            rows.append({"device": r["config"]["device"], "path": name, "seconds": seconds,
                         "median_seconds": summary["seconds_per_epoch_median"],
                         "images_per_second": summary["images_per_second"], "hardware": hardware(r)})
    return rows


def ceiling_markdown(results_dir=None) -> str:
    """Per bench record: how much of its device each way used, its sustained GFLOP/s (the epoch's FLOPs over its
    median epoch) against a large float32 matrix product's on the same device in the same process (`ceiling`)."""
    folder = results_folder(results_dir)
    records = load_records(folder, kind="bench") if folder.is_dir() else []
    if not records:
        return f"**{NOT_MEASURED}:** no benchmark record under `{_shown(folder)}`."
    parts = []
    for r in records:
        c = r.get("ceiling")
        if not c:
            parts.append(f"{provenance(r)}: this record has no matrix-product ceiling (made before `hdr_lib.measure.bench` "
                         "measured one).")
            continue
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


def _cuda_way(record: dict) -> str:
    """How a CUDA fast-path record ran, in words: its kernels and how they were launched (`execution`)."""
    from hdr_lib.train import CUDA_KERNELS

    execution = record.get("execution", {})
    if execution.get("cuda_kernels") == CUDA_KERNELS["triton"]:
        kernels = "Triton step"
    else:
        kernels = "PyTorch's kernels" + (", compiled" if execution.get("compiled") else "")
    steps = execution.get("cuda_steps") or {}
    launch = max(steps, key=steps.get) if any(steps.values()) else "unknown"
    return f"{kernels}; {launch}"


def cuda_ways(results_dir=None) -> list[dict]:
    """The recorded CUDA fast-path runs of the paper's configuration, grouped by how they ran (Triton step or
    PyTorch's kernels, compiled or not; graphs or eager): one row each with the runs' seconds and accuracies."""
    groups: dict[tuple, list[dict]] = {}
    for r in recorded_runs(results_dir, "cuda", path="fast"):
        if records.is_paper_config(r):
            groups.setdefault((_cuda_way(r), hardware(r)), []).append(r)
    return [{"way": way, "hardware": gpu, "seconds": [r["total_train_seconds"] for r in runs],
             "accuracy": [r["test_accuracy"] for r in runs],
             "setup_seconds": [sum(v for v in r["setup_seconds"].values() if isinstance(v, (int, float)))
                               for r in runs]}
            for (way, gpu), runs in sorted(groups.items())]


def cuda_ways_markdown(results_dir=None) -> str:
    """`cuda_ways` as a Markdown table, or a line saying plainly that no such run is recorded."""
    rows = cuda_ways(results_dir)
    if not rows:
        return (f"**{NOT_MEASURED}:** no CUDA fast-path record of the paper's configuration under "
                f"`{_shown(results_folder(results_dir))}`.")
    lines = ["| how the step ran | GPU | runs | training, 20 epochs (mean) | one-time setup (mean) | accuracy (mean) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        seconds, setup, accuracy = (summarize(row[key])["mean"] for key in ("seconds", "setup_seconds", "accuracy"))
        lines.append(f"| {row['way']} | {row['hardware']} | {len(row['seconds'])} | {seconds:.2f} s | "
                     f"{setup:.1f} s | {accuracy:.2f} % |")
    return "\n".join(lines)


def kernel_times_markdown(results_dir=None) -> str:
    """The Triton step's kernels timed alone (scripts/cuda_kernel_times.py, kind "kernel-times"), one table per
    record, or a line saying plainly that none is recorded."""
    folder = results_folder(results_dir)
    found = load_records(folder, kind="kernel-times") if folder.is_dir() else []
    if not found:
        return (f"**{NOT_MEASURED}:** no timing of the Triton step's kernels under `{_shown(folder)}` "
                "(`scripts/cuda_kernel_times.py` makes one on a GPU).")
    parts = []
    for r in found:
        lines = [f"{provenance(r)}:", "", "| kernel | median | min | max |", "|---|---|---|---|"]
        for name, t in r["microseconds_per_launch"].items():
            lines.append(f"| {name} | {t['median']:.1f} µs | {t['min']:.1f} µs | {t['max']:.1f} µs |")
        lines += ["", f"20 epochs of such steps ({r['projected_steps']:,}, kernels only): "
                      f"{r['projected_seconds_20_epochs']:.2f} s."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def paper_claims_markdown() -> str:
    """The paper's headline numbers (§4.1-§4.3) and hardware (§3.4) as a Markdown table."""
    lines = ["| | CPU | GPU |", "|---|---|---|",
             f"| hardware (§3.4) | {PAPER_CLAIMS['cpu']['hardware']} | {PAPER_CLAIMS['cuda']['hardware']} |",
             "| training time, 20 epochs (§4.1) | 3600 s | 300 s (12x faster) |",
             "| test accuracy (§4.2) | 98.2 % | 98.3 % |",
             "| utilisation, memory (§4.3) | - | > 90 %, ~6 GB of 11 GB |",
             "| framework (§3.4) | TensorFlow 2.x | TensorFlow 2.x, CUDA 10.1, cuDNN 7.6 |"]
    return "\n".join(lines)


def quick_path_comparison(config: TrainConfig, data, steps: int = 100, rounds: int = 2) -> list[dict]:
    """A short live timing of the fast and the reference path: `steps` optimiser steps each, alternated
    `rounds` times. Rows for figures.bench_bars (seconds are per `steps` steps here, not per epoch)."""
    from hdr_lib.train import train

    device = resolve_device(config.device).type
    seconds = {"reference": [], "fast": []}
    for _ in range(rounds):
        for path in seconds:
            record = train(config.replace(path=path, epochs=1), data=data, max_steps=steps, progress=False)
            seconds[path].append(record["total_train_seconds"])
    return [{"device": device, "path": path, "seconds": s, "hardware": ""} for path, s in seconds.items()]
