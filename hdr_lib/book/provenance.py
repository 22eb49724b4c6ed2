"""Provenance of the records: the hardware, software and commit behind each run, as table rows."""

from __future__ import annotations

from pathlib import Path

from hdr_lib.book.tables import html_table


# The commit and the date come right after the record's name, where a narrow screen still shows them.
COLUMNS = ("Record", "Commit", "Created (UTC)", "Session", "Kind", "Status", "Device", "Path", "Epochs", "Seed",
           "CPU (threads)", "GPU", "Driver / CUDA / cuDNN", "Python", "torch / torchvision")


def _browser_columns(env: dict, config: dict) -> tuple[str, str, str, str, str]:
    """A record the page "On your machine" made (path "tfjs"): the browser and its logical CPUs, the GPU's renderer
    string where the browser gave it, and TensorFlow.js's version and backend in place of Python's and torch's."""
    tfjs = (env.get("tfjs") or {}).get("@tensorflow/tfjs") or (env.get("tfjs") or {}).get("tfjs", "?")
    return (f"{env.get('browser', '?')} ({env.get('hardware_concurrency', '?')} logical CPUs)",
            str(env.get("gpu_renderer") or "not given by the browser"), "-", "-",
            f"TensorFlow.js {tfjs} ({config.get('backend', config.get('framework', '?'))})")


def provenance_rows(records: list[dict], root: str | Path | None = None) -> list[tuple[str, ...]]:
    """One row per record: where and with what it was made (from its `environment` and `config`)."""
    rows = []
    for r in records:
        env, config = r.get("environment", {}), r.get("config", {})
        name = Path(r.get("_path", "?"))
        if root is not None:
            try:
                name = name.relative_to(root)
            except ValueError:
                pass
        g = env.get("gpu") or {}
        gpu, stack = (str(g.get("name", "?")), " / ".join(str(g.get(k) or "?") for k in ("driver", "cuda", "cudnn"))) \
            if g else ("none", "-")
        cpu, python, software = f"{env.get('cpu', '?')} ({env.get('threads', '?')})", str(env.get("python", "?")), \
            f"{env.get('torch', '?')} / {env.get('torchvision', '?')}"
        if config.get("path") == "tfjs":
            cpu, gpu, stack, python, software = _browser_columns(env, config)
        commit = str(env.get("git_commit") or "?")
        rows.append((str(name), commit[:12] + ("+dirty" if commit.endswith("+dirty") else ""),
                     str(env.get("created_at", "?")), str(env.get("session", "?")), str(r.get("kind", "train")),
                     str(r.get("status", "?")), str(config.get("device", "?")),
                     str(config.get("path", "-")), str(config.get("epochs", "-")), str(config.get("seed", "-")),
                     cpu, gpu, stack, python, software))
    return rows


def to_html(rows: list[tuple[str, ...]]) -> str:
    return html_table(COLUMNS, rows, "hdr-provenance")
