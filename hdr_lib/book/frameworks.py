"""Chapter 10's numbers: the recorded CPU runs of each framework and way (PyTorch's paths, Keras on TensorFlow, JAX
and PyTorch) side by side, from results/ only; nothing is trained here."""

from __future__ import annotations

from hdr_lib import paper
from hdr_lib.measure import queries
from hdr_lib.measure.queries import NOT_MEASURED, machine
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import session as session_of
from hdr_lib.measure.stats import summarize
from hdr_lib.measure.flops import training_flops

PAPER_CPU = f"{paper.CPU.name} with {paper.FRAMEWORK.split(' with ')[0]}"  # §3.4: the machine of the paper's CPU time

_NAMES = {"pytorch": "PyTorch", "keras-tensorflow": "Keras/TensorFlow", "keras-jax": "Keras/JAX",
          "keras-torch": "Keras/PyTorch"}
_WAYS = {"fit": "model.fit", "loop": "own loop", "fast": "fast path", "reference": "reference path"}
_ORDER = ["keras-tensorflow fit", "keras-tensorflow loop", "keras-jax fit", "keras-jax loop", "keras-torch fit",
          "keras-torch loop", "pytorch reference", "pytorch fast"]


def framework_of(record: dict) -> tuple[str, str]:
    """(framework, way) of a training record (`evidence.framework_way`)."""
    return evidence.framework_way(record)


def label(framework: str, way: str) -> str:
    return f"{_NAMES.get(framework, framework)} ({_WAYS.get(way, way)})"


def cpu_runs(results_dir=None) -> list[dict]:
    """Complete CPU records of the paper's configuration (every framework, PyTorch runs the default way). They may
    come from several machines: the chapter compares within one timing session (`comparison_session`), which ran
    on one machine, and shows the sessions apart."""
    return evidence.comparison_runs(evidence.load(results_dir))


def comparison_session(results_dir=None) -> str | None:
    """`evidence.comparison_session`: the session that ran the most frameworks and ways, the latest of equals."""
    return evidence.comparison_session(cpu_runs(results_dir))


def sessions(results_dir=None) -> list[str]:
    """The timing sessions of the CPU records, oldest first."""
    return evidence.sessions(cpu_runs(results_dir))


def rows_by_session(results_dir=None) -> list[dict]:
    """`rows` of each timing session in turn, oldest first: every session apart, none pooled (the records are
    read once)."""
    runs = cpu_runs(results_dir)
    return [row for name in evidence.sessions(runs) for row in _rows([r for r in runs if session_of(r) == name])]


def rows(results_dir=None, session: str | None = None) -> list[dict]:
    """One row per framework and way: seconds per epoch (each run's 20-epoch total / 20) and test accuracy, each
    with its mean and 95 % interval over runs (seeds); the sustained GFLOP/s of the mean epoch; the mean 1-minute
    load average when the runs began (other work on the shared cores). With `session`, the runs of that timing
    session only; without, every session pooled (each row names its sessions)."""
    return _rows([r for r in cpu_runs(results_dir) if session is None or session_of(r) == session])


def _rows(runs_in: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in runs_in:
        framework, way = framework_of(r)
        groups.setdefault(f"{framework} {way}", []).append(r)
    flops = training_flops()["train_flops_per_epoch"]
    out = []
    for key in sorted(groups, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k)):
        runs = groups[key]
        framework, way = key.split(" ", 1)
        per_epoch = summarize([r["total_train_seconds"] / len(r["epochs"]) for r in runs])
        loads = [r["environment"]["load_average"][0] for r in runs if r["environment"].get("load_average")]
        env = runs[0]["environment"]
        version = (f"keras {env.get('keras')}, {env.get('keras_backend')} {env.get('backend_version')}"
                   if framework != "pytorch" else f"torch {env.get('torch')}")
        out.append({"key": key, "framework": framework, "way": way, "label": label(framework, way), "n": len(runs),
                    "seconds_per_epoch": per_epoch,
                    "total_seconds": summarize([r["total_train_seconds"] for r in runs]),
                    "accuracy": summarize([r["test_accuracy"] for r in runs]),
                    "gflops": flops / per_epoch["mean"] / 1e9, "versions": version,
                    "load_average": sum(loads) / len(loads) if loads else None,
                    "machine": machine(runs[0]), "seeds": sorted(r["config"]["seed"] for r in runs),
                    "sessions": sorted({session_of(r) for r in runs}),
                    "dates": sorted({r["environment"]["created_at"][:10] for r in runs})})
    return out


def _ci(s: dict, digits: int, unit: str = "") -> str:
    if s["ci95_low"] is None:
        return f"{s['mean']:.{digits}f}{unit} (one run)"
    return f"{s['mean']:.{digits}f}{unit} ({s['ci95_low']:.{digits}f} to {s['ci95_high']:.{digits}f})"


def table_markdown(table: list[dict], by_session: bool = False) -> str:
    """The rows as a Markdown table; `by_session`: a first column names each row's timing session."""
    if not table:
        return f"**{NOT_MEASURED}**: no CPU record of the paper's configuration under results/."
    lines = [("| session " if by_session else "") + "| Framework (way) | runs | s per epoch, mean (95 % CI) | 20 epochs, "
             "s | test accuracy, % (95 % CI) | GFLOP/s | load (1 min) at start | versions |",
             ("|---" if by_session else "") + "|---|---|---|---|---|---|---|---|"]
    for row in table:
        load = "-" if row["load_average"] is None else f"{row['load_average']:.1f}"
        first = f"| {', '.join(row['sessions'])} " if by_session else ""
        lines.append(f"{first}| {row['label']} | {row['n']} | {_ci(row['seconds_per_epoch'], 2)} | "
                     f"{row['total_seconds']['mean']:.0f} | {_ci(row['accuracy'], 2)} | {row['gflops']:.1f} | {load} "
                     f"| {row['versions']} |")
    machines = sorted({row["machine"] for row in table})
    dates = sorted({d for row in table for d in row["dates"]})
    sessions = sorted({name for row in table for name in row["sessions"]})
    lines.append(f"\nAll on {', '.join(machines)}; recorded {dates[0]} to {dates[-1]} in {len(sessions)} timing "
                 f"session(s): {', '.join(sessions)}. GFLOP/s: one epoch's "
                 f"{training_flops()['train_flops_per_epoch'] / 1e9:.0f} GFLOP (chapter 03) over the mean epoch.")
    return "\n".join(lines)


def figure(table: list[dict]):
    """Seconds per epoch and test accuracy per framework and way, means with 95 % intervals, in one figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("seconds per training epoch (CPU)", "test accuracy after "
                                                        "20 epochs (%)"), horizontal_spacing=0.28)
    labels = [row["label"] for row in table]
    for col, key in ((1, "seconds_per_epoch"), (2, "accuracy")):
        stats = [row[key] for row in table]
        hi = [(s["ci95_high"] - s["mean"]) if s["ci95_high"] is not None else 0 for s in stats]
        lo = [(s["mean"] - s["ci95_low"]) if s["ci95_low"] is not None else 0 for s in stats]
        fig.add_bar(x=[s["mean"] for s in stats], y=labels, orientation="h", showlegend=False,
                    text=[f"n = {row['n']}" for row in table], textposition="inside",
                    marker_color=["#1f77b4" if row["framework"] != "pytorch" else "#7f7f7f" for row in table],
                    error_x=dict(type="data", array=hi, arrayminus=lo, visible=True), row=1, col=col)
    if table:
        accs = [row["accuracy"] for row in table]
        low = min(s["ci95_low"] if s["ci95_low"] is not None else s["mean"] for s in accs)
        fig.update_xaxes(range=[low - 0.3, 100.0], row=1, col=2)
    fig.update_layout(height=120 + 45 * max(len(table), 1), margin=dict(l=10, r=10, t=60, b=40),
                      title="The same experiment in each framework, on one CPU (bars: mean; lines: 95 % interval)")
    return fig


def _load_text(row: dict) -> str:
    if row["load_average"] is None:
        return "load not recorded"
    return f"1-minute load average {row['load_average']:.1f} at the start"


def paper_time_markdown(table: list[dict]) -> str:
    """What the paper's framework on our CPU says about the paper's CPU time, with the load the runs were made under."""
    tf = next((row for row in table if row["key"] == "keras-tensorflow fit"), None)
    if tf is None:
        return (f"The paper's framework on our CPU: **{NOT_MEASURED}** (no complete Keras/TensorFlow `model.fit` "
                f"record under results/).")
    total = tf["total_seconds"]
    factor = paper.CPU_SECONDS / total["mean"]
    text = (f"Keras on TensorFlow, trained the way the paper's authors most likely trained it (`model.fit`), takes "
            f"**{total['mean']:.0f} s** for the 20 epochs on our CPU ({tf['machine']}, {tf['n']} seed(s)")
    if total["ci95_low"] is not None:
        text += (f", 95 % interval {total['ci95_low']:.0f} to {total['ci95_high']:.0f} s): **{factor:.1f} times "
                 f"faster** than the paper's {paper.CPU_SECONDS:g} s on {PAPER_CPU} (interval {paper.CPU_SECONDS / total['ci95_high']:.1f}"
                 f" to {paper.CPU_SECONDS / total['ci95_low']:.1f} times).")
    else:
        text += f"): **{factor:.1f} times faster** than the paper's {paper.CPU_SECONDS:g} s on {PAPER_CPU}."
    if tf["load_average"] is not None and tf["load_average"] > 2:
        text += (f" These runs shared the 2 cores with other work ({_load_text(tf)}, mean over runs): they had a "
                 f"fraction of the machine, so the factor is a lower bound for our CPU, not its measure.")
    others = [row for row in table if row["key"] in ("pytorch fast", "pytorch reference")]
    if others:
        one_session = len({name for row in table for name in row["sessions"]}) == 1
        text += (" In the same session, on the same CPU: " if one_session else " On the same CPU: ") + "; ".join(
            f"{row['label']} {row['seconds_per_epoch']['mean']:.2f} s per epoch ({row['n']} run(s))"
            for row in others) + "."
        if not one_session:
            text += (" These times come from more than one timing session, and times made under different loads "
                     "do not compare as frameworks; the table gives each group's load.")
    return text


def equivalence_markdown(results_dir=None) -> str:
    """What the recorded step-by-step check (hdr_lib.keras_lenet.equivalence_record) measured, per backend."""
    found = queries.recorded(results_dir, "keras-equivalence")
    if not found:
        return f"The step-by-step comparison: **{NOT_MEASURED}** (no keras-equivalence record under results/)."
    record = max(found, key=lambda r: r["environment"]["created_at"])
    steps = record["config"]["steps"]
    lines = [f"Recorded {record['environment']['created_at'][:10]} on {machine(record)} (commit "
             f"{(record['environment'].get('git_commit') or '?')[:12]}), seed {record['config']['seed']}: the "
             f"first forward pass on {record['config']['forward_images']} test images, and the first {steps} "
             f"losses of each backend's own loop against our plain PyTorch loop (the reference path).", "",
             "| Keras backend | parameters | forward pass, largest difference | loss, largest difference over "
             f"{steps} steps | first step differing by more than 1e-6 |", "|---|---|---|---|---|"]
    for framework, result in record["backends"].items():
        if "error" in result:
            lines.append(f"| {_NAMES.get(framework, framework)} | - | could not run: {result['error']} | - | - |")
            continue
        first = result["first_step_differing_by_more_than_1e-6"]
        lines.append(f"| {_NAMES.get(framework, framework)} | {result['parameters']:,} | "
                     f"{result['forward_max_abs_diff']:.1e} (logits up to {result['forward_logit_scale']:.2f}) | "
                     f"{result['loss_max_abs_diff']:.1e} | {first if first is not None else 'none'} |")
    return "\n".join(lines)
