"""Chapter 09's robustness benchmark (issue 32) as tables: each way's epoch quiet and with one core busy, under the
CPU's full instruction set and under AVX2 limits, and the fast step's time per part where a bench record profiled
it. Rows and tables from the records (read and checked by hdr_lib.measure.evidence); the chapter words them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hdr_lib.measure import evidence
from hdr_lib.measure.machine import machine_label
from hdr_lib.measure.records import RecordError, is_finite

# The records of the robustness benchmark, by the CPU limits they ran under, found anywhere under the results
# folder (a timing session keeps its records in a folder of its own).
ROBUSTNESS_RECORDS = {"bench-cpu-contention.json": "this CPU's full instruction set",
                      "bench-cpu-avx2.json": "AVX2 limits (ATEN_CPU_CAPABILITY=avx2, oneDNN and MKL likewise)"}
BUSY = " busy"  # a way's contended rounds are recorded as "<way> busy"


def _bench_records(results_dir=None) -> list[dict]:
    """Every bench record under the results folder, in path order (each read and checked once)."""
    ev = evidence.load(results_dir)
    return sorted((r for r in ev.records if r["kind"] == "bench"), key=lambda r: r["_path"])


def _shown(record: dict, results_dir=None) -> str:
    """The record's file, relative to the results folder."""
    return str(Path(record["_path"]).relative_to(evidence.load(results_dir).folder))


def robustness_tables(results_dir=None) -> list[dict]:
    """One entry per robustness record (`ROBUSTNESS_RECORDS`, by name, each file in path order): its `record`,
    `file` (relative to the results folder), `limits`, `machine` (`machine_label`), `matmul_gflops` (the same
    run's torch.mm rate), the fast path's `step` and `isa`, and `table`: per way, the median seconds per epoch quiet,
    its share of torch.mm's rate (%), the median with one core busy and busy over quiet (NaN where the record has
    no busy rounds). [] where no such record exists."""
    benches = _bench_records(results_dir)
    out = []
    for name, limits in ROBUSTNESS_RECORDS.items():
        for record in (r for r in benches if Path(r["_path"]).name == name):
            summary, shares = record["summary"], record["ceiling"]["fraction_of_matmul"]
            rows = []
            for way in (w for w in summary if not w.endswith(BUSY)):
                quiet = summary[way]["seconds_per_epoch_median"]
                busy = (summary.get(way + BUSY) or {}).get("seconds_per_epoch_median")
                rows.append({"way": way, "quiet: s / epoch": quiet, "% of torch.mm": 100 * shares[way],
                             "one core busy: s / epoch": busy, "busy / quiet": busy / quiet if busy else None})
            fast = record["runs"]["fast"][0]["execution"] if record["runs"].get("fast") else {}
            out.append({"record": record, "file": _shown(record, results_dir), "limits": limits,
                        "machine": machine_label(record), "matmul_gflops": record["ceiling"]["matmul"]["gflops"],
                        "step": fast.get("cpu_step"), "isa": fast.get("isa"),
                        "table": pd.DataFrame(rows).set_index("way").astype(float)})
    return out


def slowdowns(table: pd.DataFrame) -> pd.Series:
    """Busy over quiet per way of a `robustness_tables` table, least slowed first; empty without busy rounds."""
    return table["busy / quiet"].dropna().sort_values()


def profile_rows(results_dir=None) -> list[dict]:
    """One entry per bench record that carries a `profile` (the fast step's time per part): its `record`, `file`,
    `machine`, the `profile` itself and `table`, one row per part in the record's order with its ms per step and
    its share of the step (%). A record without `profile` gives none. A profile whose parts are not finite
    milliseconds is a RecordError naming the file."""
    out = []
    for record in _bench_records(results_dir):
        profile = record.get("profile")
        if profile is None:
            continue
        parts = profile.get("parts") if isinstance(profile, dict) else None
        total = profile.get("ms_per_step") if isinstance(profile, dict) else None
        if not (isinstance(parts, dict) and parts and all(is_finite(v) and v >= 0 for v in parts.values())
                and is_finite(total) and total > 0):
            raise RecordError(f"run record {record['_path']}: field profile: needs parts (name: ms per step, each "
                              "finite and >= 0) and ms_per_step (> 0)")
        table = pd.DataFrame({"ms / step": pd.Series(parts, dtype=float)}).rename_axis("part")
        table["share of the step, %"] = 100 * table["ms / step"] / total
        out.append({"record": record, "file": _shown(record, results_dir), "machine": machine_label(record),
                    "profile": profile, "table": table})
    return out


def _made(record: dict) -> tuple[str, str]:
    """When a record was made (`environment.created_at`), then its path: the order that "newest" follows."""
    return record["environment"].get("created_at") or "", str(record["_path"])


def _newest_by(items: list, group, record_of=lambda item: item) -> list:
    """The newest item (by its record's `_made`) of each group (`group(item)`), groups in first-seen order."""
    latest: dict = {}
    for item in items:
        key = group(item)
        if key not in latest or _made(record_of(item)) >= _made(record_of(latest[key])):
            latest[key] = item
    return list(latest.values())


def newest(tables: list[dict]) -> list[dict]:
    """Of `robustness_tables`' entries, the newest record under each set of CPU limits: the one a reader reads in
    full; the others stay in `session_summary`."""
    return _newest_by(tables, lambda t: t["limits"], lambda t: t["record"])


def session_summary(tables: list[dict]) -> pd.DataFrame:
    """One row per robustness record (every session kept, each apart, oldest first), the fast path's figures: its
    quiet epoch, its share of the same run's torch.mm rate, its busy over quiet epoch, and how many times the
    canonical loop's epoch (with one core busy) and the tight loop's (quiet) it is."""
    rows = []
    for t in sorted(tables, key=lambda t: _made(t["record"])):
        table, record = t["table"], t["record"]
        fast = table.loc["fast"] if "fast" in table.index else None
        tight = table["quiet: s / epoch"].get("tight")
        rows.append({"session": record["environment"].get("session"), "CPU limits": t["limits"].split(" (")[0],
                     "torch.mm GFLOP/s": t["matmul_gflops"],
                     "fast: s / epoch": None if fast is None else fast["quiet: s / epoch"],
                     "fast: % of torch.mm": None if fast is None else fast["% of torch.mm"],
                     "fast: busy / quiet": None if fast is None else fast["busy / quiet"],
                     "fast over canonical, busy": (record.get("contention") or {}).get("fast_over_canonical_busy"),
                     "fast over tight, quiet": None if fast is None or tight is None
                     else tight / fast["quiet: s / epoch"]})
    return pd.DataFrame(rows).set_index("session")


def newest_per_machine(records: list[dict]) -> tuple[list[dict], int]:
    """Of bench records, the newest (`_made`) per machine (`machine_label`, which names CPU limits
    too), device and framework, in their first-seen order; and how many older ones that leaves out (each kept in its
    file, and the robustness runs among them in `session_summary`)."""
    latest = _newest_by(records, lambda r: (machine_label(r), r["config"].get("device"), r["config"].get("framework")))
    return latest, len(records) - len(latest)
