"""Chapter 10's numbers: the recorded CPU runs of each framework and way (PyTorch's paths, Keras on TensorFlow, JAX
and PyTorch) side by side, from results/ only, as rows the chapter tables and words; nothing is trained here."""

from __future__ import annotations

from hdr_lib.measure.queries import machine
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import session as session_of
from hdr_lib.measure.stats import summarize
from hdr_lib.measure.flops import training_flops


NAMES = {"pytorch": "PyTorch", "keras-tensorflow": "Keras/TensorFlow", "keras-jax": "Keras/JAX",
          "keras-torch": "Keras/PyTorch"}
_WAYS = {"fit": "model.fit", "loop": "own loop", "fast": "fast path", "reference": "reference path"}
_ORDER = ["keras-tensorflow fit", "keras-tensorflow loop", "keras-jax fit", "keras-jax loop", "keras-torch fit",
          "keras-torch loop", "pytorch reference", "pytorch fast"]


def label(framework: str, way: str) -> str:
    return f"{NAMES.get(framework, framework)} ({_WAYS.get(way, way)})"


def cpu_runs(results_dir=None) -> list[dict]:
    """Complete CPU records of the paper's configuration (every framework, PyTorch runs the default way). They may
    come from several machines: the chapter compares within one timing session (`comparison_session`), which ran
    on one machine, and shows the sessions apart."""
    return evidence.comparison_runs(evidence.load(results_dir))


def comparison_session(results_dir=None) -> str | None:
    """`evidence.comparison_session`: the session that ran the most frameworks and ways, the latest of equals."""
    return evidence.comparison_session(cpu_runs(results_dir))


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
        framework, way = evidence.framework_way(r)
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
