"""Sentences of the book rendered from the records, so that what a page says is what `results/` shows.

Each function returns Markdown. Where the records hold nothing for a statement, it says "not yet measured"
(or words the statement as an expectation) rather than a number.
"""

from __future__ import annotations

from hdr_lib.measure import queries
from hdr_lib.measure.queries import NOT_MEASURED, machine
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import session as session_of
from hdr_lib.measure.stats import summarize


def sessions(results_dir=None) -> list[dict]:
    """The timing sessions of the paper-configuration records: one row per device, path, machine and session,
    with its runs' training seconds (every run kept, slow ones too)."""
    groups: dict[tuple, list[dict]] = {}
    for r in queries.paper_runs(results_dir):
        key = (r["config"]["device"], r["config"]["path"], machine(r), session_of(r))
        groups.setdefault(key, []).append(r)
    out = []
    for (device, path, name, session), runs in sorted(groups.items()):
        env = [r.get("environment", {}) for r in runs]
        loads = [e["load_average"][0] for e in env if isinstance(e.get("load_average"), list)]
        out.append({"device": device, "path": path, "machine": name, "session": session,
                    "seconds": [r["total_train_seconds"] for r in runs],
                    "seeds": sorted(r["config"]["seed"] for r in runs),
                    "commits": sorted({str(e.get("git_commit") or "?")[:7] for e in env}),
                    "dates": sorted({str(e.get("created_at", "?"))[:10] for e in env}),
                    "load_1min": loads})
    return out


def sessions_markdown(results_dir=None) -> str:
    """A table of timing sessions, and how the book uses them (pooled per machine, with the count said)."""
    rows = sessions(results_dir)
    if not rows:
        return f"**Timing sessions: {NOT_MEASURED}** (no record of the paper's configuration)."
    lines = ["| device | path | machine | session | seeds | training seconds: mean (min to max) | commit | "
             "load (1 min) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s = summarize(row["seconds"])
        load = (f"{min(row['load_1min']):.1f} to {max(row['load_1min']):.1f}" if row["load_1min"]
                else "not recorded")
        lines.append(f"| {row['device'].upper()} | {row['path']} | {row['machine']} | {row['session']} | "
                     f"{', '.join(map(str, row['seeds']))} | {s['mean']:.1f} ({s['min']:.1f} to {s['max']:.1f}) | "
                     f"{', '.join(row['commits'])} | {load} |")
    per_group: dict[tuple, int] = {}
    for row in rows:
        key = (row["device"], row["path"], row["machine"])
        per_group[key] = per_group.get(key, 0) + 1
    several = [k for k, n in per_group.items() if n > 1]
    how = ("Every group above is one session, so each confidence interval in this book is **within one "
           "session**: it says how much runs vary back to back, not from one day or one machine load to another."
           if not several else
           f"{len(several)} group(s) have several sessions; the scorecard pools them and says how many.")
    lines += ["", "Records without a session of their own are grouped by commit and date. " + how]
    return "\n".join(lines)


def path_ratio_markdown(results_dir=None) -> str:
    """The fast path's speed over the reference path's from the 20-epoch records (one machine), beside the
    one-epoch benchmark's ratio with its per-round range, and what differs between the two measurements."""
    parts = []
    ev = evidence.load(results_dir)
    for device in ("cpu", "cuda"):
        ref, fast = (evidence.scored_runs(ev, device, path) for path in ("reference", "fast"))  # the scorecard's
        if not ref or not fast:
            continue
        mr, mf = (summarize([r["total_train_seconds"] for r in runs])["mean"] for runs in (ref, fast))
        parts.append(f"- 20-epoch records, {device.upper()} ({machine(ref[0])}): reference mean {mr:.1f} s "
                     f"(n = {len(ref)}), fast mean {mf:.1f} s (n = {len(fast)}): the fast path takes "
                     f"**{mr / mf:.1f}x** less time.")
    benches = queries.recorded(results_dir, "bench")
    for b in benches:
        rounds = b.get("speedup_per_round") or []
        parts.append(f"- one-epoch benchmark, {b['config']['device'].upper()} ({machine(b)}): "
                     f"{b['speedup_fast_over_reference']:.1f}x (ratio of the median epochs; {len(rounds)} rounds "
                     f"from {min(rounds):.1f}x to {max(rounds):.1f}x; one process, the paths alternating).")
    if not parts:
        return f"**Fast over reference: {NOT_MEASURED}** (no pair of records of both paths)."
    return "\n".join(parts)


def machines_markdown(results_dir=None, live: dict | None = None) -> str:
    """Which processors the records and the live run come from, so that a reader sees why two CPU names appear."""
    names: dict[str, set] = {}
    for r in queries.paper_runs(results_dir):
        names.setdefault(machine(r), set()).add(f"{r['config']['device']} {r['config']['path']}")
    lines = [f"- recorded: {name} ({', '.join(sorted(kinds))} runs)" for name, kinds in sorted(names.items())]
    if live is not None:
        lines.append(f"- live, this build: {machine(live)}")
    if not lines:
        return f"**Machines: {NOT_MEASURED}.**"
    distinct = {n for n in names} | ({machine(live)} if live is not None else set())
    tail = ("The recorded runs and the live run come from different processors: the records were made on the "
            "machine named in them, the live run on whatever machine builds this page; compare each with its own "
            "kind." if len(distinct) > 1 else "The recorded runs and the live run come from one kind of processor.")
    return "\n".join(lines + ["", tail])


def seed_runs_markdown(seed: int = 0, results_dir=None, live: dict | None = None) -> str:
    """The final test accuracy of every recorded run of one seed, by device, path and machine (and the live run):
    how far runs that start from the same weights and see the same batches end apart."""
    runs = [r for r in queries.paper_runs(results_dir) if r["config"].get("seed") == seed]
    lines = [f"- {r['config']['device'].upper()}, {r['config']['path']} path, {machine(r)}, "
             f"{str(r['environment'].get('created_at'))[:10]}: {r['test_accuracy']:.2f} %" for r in runs]
    if live is not None and live["config"].get("seed") == seed:
        lines.append(f"- live run of this build, {live['config']['device'].upper()}, {live['config']['path']} path, "
                     f"{machine(live)}, {len(live['epochs'])} epoch(s): {live['test_accuracy']:.2f} %")
    if not lines:
        return f"**Seed {seed}: {NOT_MEASURED}** (no recorded run of the paper's configuration with this seed)."
    accuracies = [r["test_accuracy"] for r in runs]
    spread = (f"The recorded runs of seed {seed} end {max(accuracies) - min(accuracies):.2f} percentage points apart."
              if len(accuracies) > 1 else "")
    gpu = "" if any(r["config"]["device"] == "cuda" for r in runs) else f" A GPU run of seed {seed}: {NOT_MEASURED}."
    return "\n".join(lines + ["", (spread + gpu).strip()])


def path_speedups_markdown(rows=None, results_dir=None) -> str:
    """The CPU-over-GPU speedup on each path, from the scorecard's rows: 'not yet measured' until one host has
    both devices' runs."""
    from hdr_lib.book import scorecard

    rows = scorecard.scorecard(results_dir=results_dir) if rows is None else rows
    row = next(r for r in rows if r.claim.key == "speedup")
    if all(cell.measured is None for cell in row.cells.values()):
        return f"Speedup of the GPU over the CPU on one host: **{NOT_MEASURED}** on either path ({row.headline.note})."
    parts = []
    for path in scorecard.PATHS:
        cell = row.cells[path]
        parts.append(f"the {path} path: " + (f"**{NOT_MEASURED}** ({cell.note})" if cell.measured is None else
                                            f"{scorecard.format_cell(cell, 'x')}, {cell.verdict}"))
    return "Speedup of the GPU over the CPU on one host, " + "; ".join(parts) + "."


def pytorch_cpu_step_markdown(results_dir=None) -> str:
    """The book's own PyTorch seconds per training step of 64 on the CPU (each path, the scorecard's CPU machine), for the
    page "On your machine" to set beside TensorFlow.js's JavaScript CPU backend."""
    lines = []
    for path in ("reference", "fast"):
        runs = evidence.scored_runs(evidence.load(results_dir), "cpu", path)
        per_step = [e["train_seconds"] / e["steps"] for r in runs for e in r["epochs"] if e.get("steps")]
        if per_step:
            per_step.sort()
            median = per_step[len(per_step) // 2]
            lines.append(f"- PyTorch, {path} path: **{1000 * median:.1f} ms per step** of 64 (median of {len(per_step)} "
                         f"epochs in {len(runs)} records, on {machine(runs[0])})")
        else:
            lines.append(f"- PyTorch, {path} path on the CPU: {NOT_MEASURED}")
    return "\n".join(lines)
