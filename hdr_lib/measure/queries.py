"""Questions the book asks of the run records: where they are, which runs count, what machine and way each ran on."""

from __future__ import annotations

import os
from pathlib import Path

from hdr_lib import paths, settings
from hdr_lib.paths import REPOSITORY
from hdr_lib.measure.machine import machine_label
from hdr_lib.measure.records import RecordError, load_records

NOT_MEASURED = "not yet measured"  # what every page and table says where the records hold nothing
RESULTS_ENV_VAR = "HDR_RESULTS_DIR"  # another folder of records, for development builds



def results_folder(results_dir=None, label: str = "parameter results_dir") -> Path:
    """The folder of run records: `results_dir` when given (an error names it by `label`), else $HDR_RESULTS_DIR,
    else results/ of the repository."""
    if results_dir is not None:
        return paths.input_path(results_dir, label)
    return settings.results_dir()  # the one rule, shared with the writers


def checked_results_folder(results_dir=None, label: str = "parameter results_dir") -> Path:
    """`results_folder`, refused (one RecordError line naming where the folder came from: `label`, or
    $HDR_RESULTS_DIR) when it is not an existing folder: a missing folder or a file is a mistake, never "no
    records". The check cells of the chapters and `python -m hdr_lib scorecard` call this before any work."""
    folder = results_folder(results_dir, label)
    where = label if results_dir is not None else (f"${RESULTS_ENV_VAR}" if os.environ.get(RESULTS_ENV_VAR)
                                                   else "the repository's results folder")
    if not folder.is_dir():
        what = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise RecordError(f"{where} {folder} {what}; give a folder of run records")
    return folder


def shown(folder: str | os.PathLike) -> str:
    """A folder as a page shows it: relative to the repository where it lies inside it (no build-machine paths)."""
    try:
        return f"{Path(folder).resolve().relative_to(REPOSITORY)}/"
    except ValueError:
        return f"{os.fspath(folder).rstrip('/')}/"


def recorded(results_dir=None, kind: str = "train", status: str | None = "complete", **config_filters) -> list[dict]:
    """Records of one kind ("train", "bench", "kernel-times", ...) under the results folder; [] when it is absent."""
    folder = results_folder(results_dir)
    if not folder.is_dir():
        return []
    return load_records(folder, kind=kind, status=status, **config_filters)


def recorded_runs(results_dir=None, device: str | None = None, **config_filters) -> list[dict]:
    """Complete training records (optionally of one device, e.g. "cuda"), whatever their configuration."""
    if device is not None:
        config_filters["device"] = device
    return recorded(results_dir, "train", **config_filters)


def paper_runs(results_dir=None, device: str | None = None, path: str | None = None) -> list[dict]:
    """The headline runs (hdr_lib.measure.evidence.is_headline: the paper's configuration, run the default way) of
    every machine, optionally of one device ("cpu", "cuda") and one path ("fast", "reference")."""
    from hdr_lib.measure import evidence

    return evidence.headline_runs(evidence.load(results_dir), device, path)


def machine(record: dict, versions: bool = False) -> str:
    """The machine a record ran on (`machine_label`: one label, the same on every page); with `versions`, also the
    torch (and CUDA) it ran with."""
    name = machine_label(record)
    if not versions:
        return name
    env = record.get("environment", {})
    if record.get("config", {}).get("device") == "cuda":
        return f"{name} (CUDA {(env.get('gpu') or {}).get('cuda', '?')}, torch {env.get('torch', '?')})"
    return f"{name}, torch {env.get('torch', '?')}"


def machines(runs: list[dict], versions: bool = True) -> str:
    """The machines of several runs, each once, in order; "-" for none."""
    return "; ".join(sorted({machine(r, versions) for r in runs})) or "-"


def provenance(record: dict) -> str:
    """One line saying where, when and with what a record was made."""
    env = record["environment"]
    commit = (env.get("git_commit") or "unknown commit")[:12]
    return (f"{machine(record)}, torch {env['torch']}, {env['created_at'][:10]}, seed "
            f"{record['config']['seed']}, commit {commit}")


def step_key(record: dict, device: str) -> str | None:
    """Which step the fast path ran, as a short key: on "cpu" `execution.cpu_step` (native, explicit, forward,
    compiled, module), on "cuda" `execution.cuda_kernels` (triton, aten); None when the record names none."""
    return (record.get("execution") or {}).get("cpu_step" if device == "cpu" else "cuda_kernels")


def cuda_way(record: dict) -> str:
    """How a CUDA fast-path record ran, in words: its kernels and how they were launched (`execution`)."""
    execution = record.get("execution", {})
    if step_key(record, "cuda") == "triton":
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
        if not r["deviations_from_paper"]:
            groups.setdefault((cuda_way(r), machine(r)), []).append(r)
    return [{"way": way, "hardware": gpu, "seconds": [r["total_train_seconds"] for r in runs],
             "accuracy": [r["test_accuracy"] for r in runs],
             "setup_seconds": [sum(v for v in r["setup_seconds"].values() if isinstance(v, (int, float)))
                               for r in runs]}
            for (way, gpu), runs in sorted(groups.items())]


def bench_rows(results_dir=None) -> list[dict]:
    """Per-epoch seconds of each path from bench records (`hdr_lib.measure.bench`): rows of device, path, seconds,
    images per second and hardware (the schema requires a bench record's `runs`, `summary` and `ceiling`)."""
    rows = []
    for r in recorded(results_dir, "bench"):
        for name, items in r["runs"].items():
            summary = r["summary"][name]
            rows.append({"device": r["config"]["device"], "path": name,
                         "seconds": [item["train_seconds"] for item in items],
                         "median_seconds": summary["seconds_per_epoch_median"],
                         "images_per_second": summary["images_per_second"], "hardware": machine(r)})
    return rows

