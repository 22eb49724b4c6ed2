"""Which runs count, stated once. Every page, the scorecard and `python -m hdr_lib scorecard` select runs here.

The records (every hdr-run/2 file under the results folder, each checked on read) load once into one pandas table
(`load`); the rules below pick rows of it. Statistics come from scipy.stats (hdr_lib.measure.stats).

Terms
- A **machine** is what ran: the CPU model, its widest vector instructions (`environment.cpu_flags`) and the threads
  the run used; on CUDA the GPU's name and its host CPU (`hdr_lib.measure.machine.machine_label`: one label, the same
  on every page). A record without flags is its own machine, "instructions not recorded", never merged with one
  that has them. `environment.hostname_hash` does not tell machines apart (it is the same on every VM here).
- A **session** is one invocation that made records (`environment.session`). Every session is kept and shown.

Rules
- **Headline runs** (`is_headline`): complete PyTorch training records of exactly the paper's configuration
  (`deviations_from_paper` empty: 20 epochs, batch 64, lr 0.01 with our step decay, momentum 0.9, float32, LeNet-5),
  run the default way (one process, not compiled; on CUDA with its graphs and Triton step). Only these are scored.
  Keras runs (chapter 10) and browser runs (`config.framework` "tfjs-*") never fill a scorecard claim.
- **The CPU machine** (`scored_cpu_machine`): every CPU figure of the scorecard, of chapter 05's path ratio, chapter
  06's seed spread and chapter 11's CPU rows comes from this one machine. It is chosen among the machines that ran
  headline runs of both paths (reference and fast; among all CPU machines if none did): the machine of chapter 10's
  comparison session first (so the Keras/TensorFlow time beside the CPU time is the same CPU's), then one whose
  vector instructions are recorded before one whose are not, then the most headline runs, then the latest run.
- **The GPU machine** (`scored_gpu_machine`): the GPU machine with the most headline runs (then the latest).
- **Accuracy** counts one run per seed (`one_per_seed`: the latest record of a seed, per machine and path): a
  seed rerun trains the same network on the same batches again, so it is a timing sample, not another seed.
  **Times** count every run.
- **Speedup and the GPU-CPU accuracy gap** divide or subtract runs of one host only (`same_host_pair`): CPU and
  GPU runs whose records name the same host hash and the same CPU model, with at least MIN_RUNS of each.
- **Chapter 10** (`comparison_runs`, `comparison_session`): complete one-process CPU records of the paper's
  configuration of every framework except the browser's; it compares within the session that ran the most
  frameworks and ways (the latest of equals). The Keras/TensorFlow time shown beside the scorecard's CPU time is
  that session's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hdr_lib.measure import queries
from hdr_lib.measure.machine import UNRECORDED, machine_label
from hdr_lib.measure.records import load_records

PATHS = ("reference", "fast")
MIN_RUNS = 2  # runs per device on one host before a speedup or a gap is given


@dataclass(frozen=True)
class Evidence:
    """Every record of one results folder: `records` (all kinds and statuses, each once) and `table` (one row per
    training record, with the columns the rules read and `record`, the record itself)."""

    folder: Path
    records: tuple
    table: pd.DataFrame

    def runs(self, mask) -> list[dict]:
        return list(self.table.loc[mask, "record"])


_CACHE: dict = {}


def load(results_dir=None) -> Evidence:
    """The records under `queries.results_folder(results_dir)`, read once per state of the folder (a changed,
    added or removed file reads them again). A folder that does not exist holds no records."""
    folder = queries.results_folder(results_dir)
    files = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    key = (str(folder.resolve()), tuple((str(p), *_stamp(p)) for p in files))
    if key not in _CACHE:
        records = tuple(load_records(folder, status=None)) if folder.is_dir() else ()
        _CACHE.clear()
        _CACHE[key] = Evidence(folder, records, _table(records))
    return _CACHE[key]


def of(runs: list[dict] | None = None, results_dir=None) -> Evidence:
    """`runs` (records already read, e.g. built by a test) as Evidence, else `load(results_dir)`."""
    if runs is None:
        return load(results_dir)
    return Evidence(None, tuple(runs), _table(runs))


def _stamp(path: Path) -> tuple:
    try:
        info = path.stat()
    except OSError:
        return (None, None)
    return (info.st_mtime_ns, info.st_size)


COLUMNS = ("file", "kind", "status", "framework", "device", "path", "seed", "amp", "machine", "isa_recorded",
           "session", "created_at", "host", "seconds", "accuracy", "headline", "record")


def _table(records) -> pd.DataFrame:
    rows = []
    for r in records:
        if r["kind"] != "train":
            continue
        config, env = r["config"], r["environment"]
        rows.append({"file": r.get("_path"), "kind": r["kind"], "status": r["status"],
                     "framework": config.get("framework"), "device": config.get("device"), "path": config.get("path"),
                     "seed": config.get("seed"), "amp": config.get("amp", "off"), "machine": machine_label(r),
                     "isa_recorded": bool(env.get("cpu_flags")), "session": env["session"],
                     "created_at": str(env.get("created_at", "")), "host": host(r),
                     "seconds": r.get("total_train_seconds"), "accuracy": r.get("test_accuracy"),
                     "headline": is_headline(r), "record": r})
    return pd.DataFrame(rows, columns=list(COLUMNS))


# --- what a record is --------------------------------------------------------------------------------------------

def session(record: dict) -> str:
    return record["environment"]["session"]


def machine(record: dict) -> str:
    return machine_label(record)


def host(record: dict) -> str:
    """The host of a record for a speedup: its host hash and CPU model (the hash alone is the same on every VM)."""
    env = record["environment"]
    return f"{env.get('hostname_hash') or '?'} / {env.get('cpu') or '?'}"


def world_size(record: dict) -> int | None:
    """The number of processes of a run under torchrun; None for a one-process run."""
    return (record.get("distributed") or {}).get("world_size")


def is_browser(record: dict) -> bool:
    return str(record["config"].get("framework", "")).startswith("tfjs")


def deviations(record: dict) -> set:
    value = record.get("deviations_from_paper") or {}
    return set(value)


def is_default_way(record: dict) -> bool:
    """PyTorch, one process (not under torchrun), not compiled, and on CUDA with its graphs and Triton step."""
    config = record["config"]
    on_cuda = config.get("device") == "cuda"
    return (config.get("framework") == "pytorch" and world_size(record) is None and not config.get("compile")
            and not (on_cuda and (config.get("cuda_graph") is False or config.get("triton") is False)))


def is_headline(record: dict) -> bool:
    """A run the paper's numbers are compared with (module docstring, "Headline runs")."""
    return (record["kind"] == "train" and record["status"] == "complete" and not deviations(record)
            and is_default_way(record))


def is_future_work_base(record: dict, device: str, path: str = "fast") -> bool:
    """Chapter 11's runs: complete, one process, the paper's LeNet-5 and settings apart from mixed precision, run
    the default way, on `device` and `path`."""
    return (record["kind"] == "train" and record["status"] == "complete" and record["config"].get("device") == device
            and record["config"].get("path") == path and not (deviations(record) - {"amp"})
            and is_default_way(record))


# --- which runs count ----------------------------------------------------------------------------------------------

def headline_runs(ev: Evidence, device: str | None = None, path: str | None = None) -> list[dict]:
    t = ev.table
    mask = t["headline"].astype(bool) if len(t) else t["headline"]
    if device is not None:
        mask &= t["device"] == device
    if path is not None:
        mask &= t["path"] == path
    return ev.runs(mask)


def _latest(runs: list[dict]) -> str:
    return max((str(r["environment"].get("created_at", "")) for r in runs), default="")


def scored_cpu_machine(ev: Evidence) -> str | None:
    """The one CPU machine of every scored CPU figure (module docstring, "The CPU machine"); None without one."""
    runs = headline_runs(ev, "cpu")
    by_machine: dict[str, list[dict]] = {}
    for r in runs:
        by_machine.setdefault(machine(r), []).append(r)
    both = {name: rs for name, rs in by_machine.items() if {r["config"]["path"] for r in rs} >= set(PATHS)}
    pool = both or by_machine
    if not pool:
        return None
    compared = comparison_runs(ev)
    chapter10 = {machine(r) for r in compared if session(r) == comparison_session(compared)}
    return max(pool, key=lambda name: (name in chapter10, UNRECORDED not in name, len(pool[name]),
                                       _latest(pool[name]), name))


def scored_gpu_machine(ev: Evidence) -> str | None:
    by_machine: dict[str, list[dict]] = {}
    for r in headline_runs(ev, "cuda"):
        by_machine.setdefault(machine(r), []).append(r)
    if not by_machine:
        return None
    return max(by_machine, key=lambda name: (len(by_machine[name]), _latest(by_machine[name]), name))


def scored_runs(ev: Evidence, device: str, path: str) -> list[dict]:
    """The headline runs of `device` and `path` on the scored machine of that device (every run: times)."""
    name = scored_cpu_machine(ev) if device == "cpu" else scored_gpu_machine(ev)
    return [r for r in headline_runs(ev, device, path) if machine(r) == name]


def one_per_seed(runs: list[dict]) -> list[dict]:
    """The latest record of each seed, per device, path and machine (accuracy counts once per seed)."""
    latest: dict = {}
    for r in sorted(runs, key=lambda r: str(r["environment"].get("created_at", ""))):
        config = r["config"]
        latest[(config.get("device"), config.get("path"), machine(r), config.get("seed"))] = r
    return sorted(latest.values(), key=lambda r: r.get("_path", ""))


def accuracy_runs(ev: Evidence) -> list[dict]:
    """The runs chapter 06 and the scorecard take an accuracy from: the scored machine's headline runs of each
    device and path, one per seed."""
    return [r for device in ("cpu", "cuda") for path in PATHS for r in one_per_seed(scored_runs(ev, device, path))]


def same_host_pair(cpu_runs: list[dict], gpu_runs: list[dict], min_runs: int = MIN_RUNS):
    """(host, its CPU runs, its GPU runs) of the host (`host`) with at least `min_runs` runs on each device, each of
    one machine (the most runs wins, then the first host in order), or None."""
    best = None
    for name in sorted({host(r) for r in cpu_runs}):
        cpu = _most(r for r in cpu_runs if host(r) == name)
        gpu = _most(r for r in gpu_runs if host(r) == name)
        if len(cpu) >= min_runs and len(gpu) >= min_runs:
            if best is None or min(len(cpu), len(gpu)) > min(len(best[1]), len(best[2])):
                best = (name, cpu, gpu)
    return best


def _most(runs) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(machine(r), []).append(r)
    return max(sorted(groups.items()), key=lambda item: len(item[1]))[1] if groups else []


def on_machine(runs: list[dict], name: str | None) -> list[dict]:
    """The runs of machine `name`; without a name, those of the machine with the most runs."""
    return [r for r in runs if machine(r) == name] if name else _most(runs)


def processor(record: dict) -> str:
    """A machine without its thread count (the CPU model and its vector instructions; on CUDA the GPU): a run under
    torchrun uses fewer threads per rank on the same processor."""
    return machine(record).rsplit(" (", 1)[0] if record["config"].get("device") != "cuda" else machine(record)


def scored_cpu_processor(ev: Evidence) -> str | None:
    """The processor of the scored CPU machine: chapter 11's CPU rows (runs under torchrun included)."""
    name = scored_cpu_machine(ev)
    return name.rsplit(" (", 1)[0] if name else None


def on_processor(runs: list[dict], name: str | None) -> list[dict]:
    """The runs of processor `name` with the thread count most of them ran (a mean of 1-thread and 2-thread runs is
    neither's time); without a name, the runs of the machine with the most."""
    return _most([r for r in runs if processor(r) == name] if name else runs)


def sessions(runs: list[dict]) -> list[str]:
    """The sessions of `runs`, oldest first: every one kept."""
    first: dict[str, str] = {}
    for r in runs:
        created = str(r["environment"].get("created_at", ""))
        first[session(r)] = min(first.get(session(r), created), created)
    return sorted(first, key=lambda name: (first[name], name))


# --- chapter 10: the frameworks ----------------------------------------------------------------------------------

def comparison_runs(ev: Evidence) -> list[dict]:
    """Complete one-process CPU runs of the paper's configuration, every framework but the browser's."""
    return [r for r in ev.table["record"] if r["status"] == "complete" and r["config"].get("device") == "cpu"
            and not deviations(r) and not r["config"].get("compile") and world_size(r) is None
            and not is_browser(r)]


def framework_way(record: dict) -> tuple[str, str]:
    """(framework, way): ("pytorch", "fast"|"reference"), or a Keras backend and its way ("keras-jax", "fit")."""
    config = record["config"]
    framework = config.get("framework")
    return framework, config.get("keras_way") if framework != "pytorch" else config.get("path", "?")


def comparison_session(runs: list[dict]) -> str | None:
    """The session among `runs` that ran the most frameworks and ways, the latest of equals."""
    covered: dict[str, set] = {}
    for r in runs:
        covered.setdefault(session(r), set()).add(framework_way(r))
    if not covered:
        return None
    latest = {name: _latest([r for r in runs if session(r) == name]) for name in covered}
    return max(covered, key=lambda name: (len(covered[name]), latest[name]))


def shown_folder(ev: Evidence) -> str:
    """The folder the records came from, as a page shows it (never `results/` for another folder)."""
    return queries.shown(ev.folder) if ev.folder is not None else "the records given"
