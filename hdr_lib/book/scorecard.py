"""The scorecard: every number the paper claims beside ours from the run records, with a verdict by fixed rules.

This one table is what the scorecard page, chapter 08 and `python -m hdr_lib scorecard` show.
The rules, in one place (each `Claim` names its rule; `verdict_for` applies it):

- Which runs count (the headline runs, the one CPU machine, one run per seed for accuracy, one host for a speedup)
  is decided in one place, hdr_lib.measure.evidence; its docstring states the rules.
- The headline column is the **reference path** (the plain PyTorch loop: a DataLoader, one operator at a
  time), because the paper's comparison is the same software on both devices, run the way its framework
  runs. The **fast path** (our own training step) is a second column of the same row, scored by the same
  rule; a CPU-GPU comparison never mixes the two paths.
- No record, or no value in the records (a GPU never measured, NVML unreadable): "not yet measured".
  Nothing is filled in or estimated.
- Verdicts: "reproduced"; "differs: ours higher" or "differs: ours lower" (outside the rule's margin, and
  which way); "not comparable" (an absolute time on other hardware; the note says how far and which way);
  "not yet measured".
- "time" (§4.1, the CPU's and the GPU's 20 epochs): the paper's times belong to its hardware and software
  (`hdr_lib.paper.CPU`, `GPU`, `FRAMEWORK`), which we do not have: "not comparable", with our time as a
  multiple of the paper's.
- "speedup" (§4.1): mean CPU time / mean GPU time of **one host** (`evidence.same_host_pair`) that
  has at least MIN_RUNS (2) runs on each device; its interval is the conservative ratio of the two
  means' 95 % intervals. "reproduced" when that interval contains the paper's speedup, else "differs" (above or below).
  CPU and GPU runs of different hosts are never divided.
- "accuracy" (§4.2, CPU and GPU): "reproduced" when our mean test accuracy is within
  ACCURACY_MARGIN_PP (0.3 percentage points) of the claim, else "differs" (higher or lower). The margin
  is fixed; the page beside the table gives it in units of our measured seed-to-seed standard deviation.
- "accuracy_gap" (§4.2, "comparable" accuracy, the GPU slightly higher): "reproduced" when our GPU minus CPU
  mean accuracy is within ACCURACY_MARGIN_PP of zero, else "differs".
- Accuracies count once per seed (`evidence.one_per_seed`); times count every run.
- "utilisation" (§4.3, "consistently above" the paper's percentage): "consistently" is read as "in nine samples of ten":
  the 10th percentile of the NVML utilisation samples taken every 50 ms during training
  (`utilisation.gpu.utilisation_p10_percent`, averaged over runs) must be above the paper's percentage.
- "memory" (§4.3, "averaged around" the paper's gigabytes): like with like, an average: the mean over training of the
  device memory in use as NVML (and so nvidia-smi) reports it, CUDA context included
  (`utilisation.gpu.memory_used_mean_bytes`); "reproduced" within a factor MEMORY_FACTOR (1.5) of the paper's,
  else "differs". The peak and PyTorch's own reservation are in the note.
- Runs are pooled over the sessions (`environment.session`) of the same machine; each cell says how many
  sessions, and an interval from one session is labelled "within one session".
- Every CPU cell (time and accuracy, both paths) comes from one machine (`evidence.scored_cpu_machine`), every GPU
  cell from one GPU machine (`evidence.scored_gpu_machine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hdr_lib import paper
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import MIN_RUNS, one_per_seed
from hdr_lib.measure import queries
from hdr_lib.measure.queries import NOT_MEASURED
from hdr_lib.measure.stats import summarize, welch
from hdr_lib.paper import CLAIMS, Claim
from hdr_lib.book.tables import html_table, readings

REPRODUCED = "reproduced"
HIGHER, LOWER = "differs: ours higher", "differs: ours lower"
NOT_COMPARABLE = "not comparable"
VERDICTS = (REPRODUCED, HIGHER, LOWER, NOT_COMPARABLE, NOT_MEASURED)
HEADLINE_PATH, SECOND_PATH = "reference", "fast"
PATHS = (HEADLINE_PATH, SECOND_PATH)
ACCURACY_MARGIN_PP = 0.3  # percentage points between our mean accuracy and the claim
UTILISATION_PERCENTILE = 10  # "consistently above": nine samples in ten
MEMORY_FACTOR = 1.5  # "around": within a factor 1.5 of the paper's memory, either way
GB = 1e9
PAPER_GAP = paper.CLAIM["accuracy_gap"].value  # §4.2: GPU minus CPU accuracy, percentage points

CHAPTER_CLAIMS = {"05": ("cpu_time", "gpu_time", "speedup"),
                  "06": ("cpu_accuracy", "gpu_accuracy", "accuracy_gap"),
                  "07": ("gpu_utilisation", "gpu_memory"),
                  "08": tuple(c.key for c in CLAIMS)}


@dataclass
class Cell:
    """Our measurement of one claim on one training path."""
    path: str
    measured: dict | None  # summarize() of our values (mean, ci95_low/high, n ...), None when not measured
    verdict: str
    note: str
    hardware: str = "-"
    sessions: int = 0  # timing sessions the runs came from


@dataclass
class Row:
    claim: Claim
    cells: dict = field(default_factory=dict)  # path -> Cell
    beside: dict | None = None  # CPU time: the paper's framework (Keras/TensorFlow) on the same CPU, not scored
    source: str = "results/"  # the folder the records came from, as a page shows it

    @property
    def headline(self) -> Cell:
        return self.cells[HEADLINE_PATH]

    @property
    def verdict(self) -> str:
        return self.headline.verdict


def _hardware(runs) -> str:
    return queries.machines(runs, versions=True)


def _differs(value: float, low: float, high: float) -> str:
    """REPRODUCED when `value` lies in [low, high], else which way it differs."""
    if value < low:
        return LOWER
    if value > high:
        return HIGHER
    return REPRODUCED


def verdict_for(claim: Claim, measured: dict | None) -> str:
    """Apply the claim's rule (module docstring) to our summary; NOT_MEASURED without a value."""
    if not measured or measured.get("mean") is None:
        return NOT_MEASURED
    mean = measured["mean"]
    if claim.rule == "time":
        return NOT_COMPARABLE
    if claim.rule == "speedup":
        low, high = measured.get("ci95_low"), measured.get("ci95_high")
        if low is None or high is None:
            low = high = mean
        if low <= claim.value <= high:
            return REPRODUCED
        return HIGHER if low > claim.value else LOWER
    if claim.rule == "accuracy":
        return _differs(mean, claim.value - ACCURACY_MARGIN_PP, claim.value + ACCURACY_MARGIN_PP)
    if claim.rule == "accuracy_gap":
        return _differs(mean, -ACCURACY_MARGIN_PP, ACCURACY_MARGIN_PP)
    if claim.rule == "utilisation":
        return REPRODUCED if mean > claim.value else LOWER
    if claim.rule == "memory":
        return _differs(mean, claim.value / MEMORY_FACTOR, claim.value * MEMORY_FACTOR)
    raise ValueError(f"unknown rule {claim.rule!r} for claim {claim.key}")


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


def _measure(claim: Claim, ev: evidence.Evidence, path: str) -> Cell:
    """Our cell for one claim on one path, with a note on what was measured (or why nothing was). The CPU and GPU
    cells take the scored machine's runs (`evidence.scored_runs`); a speedup pairs the runs of one host."""
    time = lambda r: r["total_train_seconds"]  # noqa: E731
    accuracy = lambda r: r["test_accuracy"]  # noqa: E731
    cpu, gpu = evidence.scored_runs(ev, "cpu", path), evidence.scored_runs(ev, "cuda", path)
    cpu_all, gpu_all = evidence.headline_runs(ev, "cpu", path), evidence.headline_runs(ev, "cuda", path)

    def cell(measured, note, runs, device):
        hardware = _hardware(runs) if device in ("cpu", "cuda") else "-"
        return Cell(path, measured, verdict_for(claim, measured), note, hardware, len(evidence.sessions(runs)))

    if claim.key in ("cpu_time", "gpu_time", "cpu_accuracy", "gpu_accuracy"):
        runs = cpu if claim.device == "cpu" else gpu
        if claim.rule == "accuracy":
            runs = one_per_seed(runs)
        values = readings(runs, time if claim.rule == "time" else accuracy)
        if not values:
            return cell(None, f"no complete {claim.device.upper().replace('CUDA', 'GPU')} run of the {path} path "
                              "in the records", runs, claim.device)
        measured = summarize(values)
        ratio = measured["mean"] / claim.value
        note = ((f"{1 / ratio:.1f}x less time than the paper's" if ratio < 1 else f"{ratio:.1f}x the paper's time")
                + "; training only, other hardware and software" if claim.rule == "time" else
                f"{measured['mean'] - claim.value:+.2f} pp from the paper's")
        return cell(measured, note, runs, claim.device)
    if claim.key in ("speedup", "accuracy_gap"):
        pair = evidence.same_host_pair(cpu_all, gpu_all, MIN_RUNS)
        if pair is None:
            return cell(None, f"needs {MIN_RUNS} CPU and {MIN_RUNS} GPU runs on one machine; the records have "
                              f"{len(gpu_all)} GPU run(s)", [], "both")
        host, cpu_pair, gpu_pair = pair
        if claim.key == "speedup":
            measured = _speedup(readings(cpu_pair, time), readings(gpu_pair, time))
        else:
            measured = _gap(readings(one_per_seed(cpu_pair), accuracy), readings(one_per_seed(gpu_pair), accuracy))
        hardware = f"{_hardware(cpu_pair)} and {_hardware(gpu_pair)}, one host ({host})"
        note = f"{measured['n_cpu']} CPU and {measured['n_gpu']} GPU runs on host {host}"
        return Cell(path, measured, verdict_for(claim, measured), note, hardware,
                    len(evidence.sessions(cpu_pair + gpu_pair)))
    if claim.key == "gpu_utilisation":
        p10 = readings(gpu, lambda r: r["utilisation"]["gpu"][f"utilisation_p{UTILISATION_PERCENTILE}_percent"])
        means = readings(gpu, lambda r: r["utilisation"]["gpu"]["utilisation_mean_percent"])
        if not p10:
            if not gpu:
                return cell(None, f"no GPU run of the {path} path in the records", gpu, "cuda")
            reasons = {str((r.get("utilisation", {}).get("gpu") or {}).get("reason")) for r in gpu}
            return cell(None, "NVML gave no samples: " + "; ".join(sorted(reasons)), gpu, "cuda")
        note = f"{UTILISATION_PERCENTILE}th percentile of NVML samples every 50 ms during training"
        if means:
            note += f"; their mean {summarize(means)['mean']:.1f} %"
        return cell(summarize(p10), note, gpu, "cuda")
    if claim.key == "gpu_memory":
        values = readings(gpu, lambda r: r["utilisation"]["gpu"]["memory_used_mean_bytes"] / GB)
        if not values:
            if not gpu:
                return cell(None, f"no GPU run of the {path} path in the records", gpu, "cuda")
            return cell(None, "the records keep no mean of NVML's memory samples", gpu, "cuda")
        note = "NVML mean in use during training, CUDA context included"
        peak = readings(gpu, lambda r: r["utilisation"]["gpu"]["memory_used_max_bytes"] / GB)
        reserved = readings(gpu, lambda r: r["memory"]["cuda_peak_reserved_bytes"] / GB)
        if peak:
            note += f"; peak {max(peak):.2f} GB"
        if reserved:
            note += f"; PyTorch reserved at most {max(reserved) * 1000:.0f} MB"
        return cell(summarize(values), note, gpu, "cuda")
    raise ValueError(f"no measurement defined for claim {claim.key}")


def _beside(ev: evidence.Evidence) -> dict | None:
    """The paper's own framework on our CPU (hdr_lib.keras_lenet: Keras/TensorFlow, `model.fit`, the paper's
    configuration) in chapter 10's comparison session (`evidence.comparison_session`): summarize() of its 20-epoch
    times with its machine, session and load, or None. Shown beside the CPU-time row, never scored."""
    cpu = evidence.comparison_runs(ev)
    session = evidence.comparison_session(cpu)
    tf = [r for r in cpu if evidence.session(r) == session
          and evidence.framework_way(r) == ("keras-tensorflow", "fit")]
    values = readings(tf, lambda r: r["total_train_seconds"])
    if not values:
        return None
    env = tf[0]["environment"]
    loads = [r["environment"]["load_average"][0] for r in tf if r["environment"].get("load_average")]
    return {**summarize(values), "hardware": evidence.machine(tf[0]), "session": session,
            "versions": f"keras {env.get('keras', '?')}, tensorflow {env.get('backend_version', '?')}",
            "load_average": sum(loads) / len(loads) if loads else None}


def scorecard(runs: list[dict] | None = None, results_dir=None) -> list[Row]:
    """One row per claim of the paper (hdr_lib.paper.CLAIMS), with a cell per training path (reference first: the
    headline), from the records `runs` (default: every record in `queries.results_folder(results_dir)`, read once
    by `evidence.load`). The runs each cell takes are `evidence`'s; the CPU-time row also carries the
    Keras/TensorFlow time in `beside`. Every page that shows verdicts calls this."""
    ev = evidence.of(runs, results_dir)
    rows = [Row(claim, source=evidence.shown_folder(ev)) for claim in CLAIMS]
    for path in PATHS:
        for row in rows:
            row.cells[path] = _measure(row.claim, ev, path)
    for row in rows:
        if row.claim.key == "cpu_time":
            row.beside = _beside(ev)
    return rows


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = {"s": 1, "x": 1, "%": 2, "pp": 2, "GB": 2}.get(unit, 2)
    return f"{value:.{digits}f} {unit}" if unit not in ("%", "x") else f"{value:.{digits}f}{unit}"


def format_cell(cell: Cell, unit: str) -> str:
    """Mean (95 % interval), n, and whether the runs came from one timing session or several, pooled."""
    m = cell.measured
    if not m or m.get("mean") is None:
        return NOT_MEASURED
    text = format_value(m["mean"], unit)
    if m.get("ci95_low") is not None:
        text += f" (95 % CI {format_value(m['ci95_low'], unit)} to {format_value(m['ci95_high'], unit)}"
        text += ", within one session)" if cell.sessions == 1 else f", {cell.sessions} sessions pooled)"
    return text + f", n = {m['n']}"


def paper_value(claim: Claim) -> str:
    prefix = {"utilisation": "> ", "memory": "~ "}.get(claim.rule, "")
    return prefix + (f"{claim.value:g}{claim.unit}" if claim.unit in ("%", "x") else f"{claim.value:g} {claim.unit}")


def paper_hardware(claim: Claim) -> str:
    if claim.device in paper.HARDWARE:
        return paper.HARDWARE[claim.device].name
    return f"{paper.CPU.name} vs {paper.GPU.name}"


COLUMNS = ("Claim", "Paper", "Ours, reference path", "Verdict", "Ours, fast path", "Hardware: paper / ours", "Note")
VERDICT_COLOURS = {REPRODUCED: "#d4edda", HIGHER: "#fff3cd", LOWER: "#fff3cd", NOT_COMPARABLE: "#d6e4f0",
                   NOT_MEASURED: "#e2e3e5"}


def row_note(row: Row) -> str:
    """Both paths' notes, each thing said once (the Keras time beside the CPU row is a line below the table)."""
    notes = [row.cells[p].note.replace(f"the {p} path", "either path") for p in PATHS]
    if notes[0] == notes[1]:
        return notes[0]
    heads, tails = zip(*(n.partition("; ")[::2] for n in notes))
    if tails[0] == tails[1] and tails[0]:
        return f"reference: {heads[0]}; fast: {heads[1]}; {tails[0]}"
    return f"reference: {notes[0]}; fast: {notes[1]}"


NO_RECORD = "no record"


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    out = []
    for r in rows:  # "not yet measured" once a row, as its verdict; an empty cell says "no record"
        fast = r.cells[SECOND_PATH]
        ours = format_cell(r.headline, r.claim.unit) if r.headline.measured else NO_RECORD
        fast_text = f"{format_cell(fast, r.claim.unit)} [{fast.verdict}]" if fast.measured else NO_RECORD
        ours_hardware = "; ".join(dict.fromkeys(c.hardware for c in r.cells.values() if c.hardware != "-")) or "-"
        out.append((f"{r.claim.text} ({r.claim.section})", paper_value(r.claim), ours, r.verdict, fast_text,
                    f"paper: {paper_hardware(r.claim)}; ours: {ours_hardware}", row_note(r)))
    return out


def as_json(rows: list[Row]) -> list[dict]:
    """The table as plain data: one object per claim, with the paper's number and each path's cell."""
    return [{"key": r.claim.key, "claim": r.claim.text, "section": r.claim.section, "paper": r.claim.value,
             "unit": r.claim.unit, "rule": r.claim.rule, "verdict": r.verdict, "headline_path": HEADLINE_PATH,
             "paths": {path: {"measured": c.measured, "verdict": c.verdict, "note": c.note,
                              "hardware": c.hardware, "sessions": c.sessions} for path, c in r.cells.items()},
             **({"beside": r.beside} if r.beside else {})}
            for r in rows]


def to_html(rows: list[Row]) -> str:
    """The table as HTML (`tables.html_table`); the verdict cell is coloured and carries a class (hdr-reproduced,
    hdr-not-yet-measured, ...), the hardware and the note are in smaller type."""
    def attributes(column: str, text: str) -> str:
        if column == "Verdict":
            return f' class="hdr-{text.replace(":", "").replace(" ", "-")}" style="background:{VERDICT_COLOURS[text]}"'
        return ' style="font-size:0.85em"' if column in ("Hardware: paper / ours", "Note") else ""

    return html_table(COLUMNS, table_rows(rows), "hdr-scorecard", attributes)


def status_line(rows: list[Row]) -> str:
    """One Markdown line: how many claims each verdict has on the headline path, and whether the GPU is measured."""
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    gpu_claims = [r for r in rows if r.claim.device in ("cuda", "both")]
    gpu = ("**GPU: not yet measured**" if all(c.verdict == NOT_MEASURED for r in gpu_claims for c in r.cells.values())
           else "**GPU: measured** (see each row)")
    parts = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"{gpu}. Verdicts of the {len(rows)} claims on the reference path: {parts}."


def describe(cell: Cell, unit: str, bold: bool = False) -> str:
    """A cell in words: "not yet measured (why)", or the value, the verdict and the note."""
    mark = "**" if bold else ""
    if cell.verdict == NOT_MEASURED:
        return f"{mark}{NOT_MEASURED}{mark} ({cell.note})"
    return f"{format_cell(cell, unit)}, {mark}{cell.verdict}{mark} ({cell.note})"


def chapter_verdicts(chapter: str, rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """A chapter's claims (CHAPTER_CLAIMS) from the scorecard's rows: those measured on either path, and those on
    neither (the chapter's verdict says "not yet measured" once for all of them)."""
    mine = [r for r in rows if r.claim.key in CHAPTER_CLAIMS[chapter]]
    missing = [r for r in mine if all(c.measured is None for c in r.cells.values())]
    return [r for r in mine if r not in missing], missing


def accuracy_spread(runs: list[dict] | None = None, results_dir=None) -> list[dict]:
    """Seed-to-seed spread of test accuracy per (device, path) group of one machine: n, mean, SD, and the
    accuracy margin and the paper's GPU-CPU gap in units of that SD, the spread of two single runs (`pair_95`) and
    whether the paper's gap lies inside it."""
    ev = evidence.of(runs, results_dir)
    out = []
    for device in ("cpu", "cuda"):
        for path in PATHS:
            group = one_per_seed(evidence.scored_runs(ev, device, path))  # the scorecard's machine, once per seed
            values = readings(group, lambda r: r["test_accuracy"])
            if len(values) < 2:
                continue
            s = summarize(values)
            pair = 1.96 * math.sqrt(2) * s["std"]  # two single runs of different seeds differ by less in 95 % of pairs
            out.append({"device": device, "path": path, "n": s["n"], "mean": s["mean"], "sd": s["std"],
                        "min": s["min"], "max": s["max"], "hardware": _hardware(group),
                        "margin_in_sd": ACCURACY_MARGIN_PP / s["std"] if s["std"] else None,
                        "paper_gap_in_sd": PAPER_GAP / s["std"] if s["std"] else None,
                        "pair_95": pair, "gap_inside": PAPER_GAP <= pair})
    return out
