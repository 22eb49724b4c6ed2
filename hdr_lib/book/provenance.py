"""Provenance of the records: the hardware, software and commit behind each run, as table rows."""

from __future__ import annotations

import html
from pathlib import Path


# The commit and the date come right after the record's name, where a narrow screen still shows them.
COLUMNS = ("Record", "Commit", "Created (UTC)", "Session", "Kind", "Status", "Device", "Path", "Epochs", "Seed",
           "CPU (threads)", "GPU", "Driver / CUDA / cuDNN", "Python", "torch / torchvision")


def _gpu(env: dict) -> tuple[str, str]:
    gpu = env.get("gpu")
    if not gpu:
        return "none", "-"
    return str(gpu.get("name", "?")), f"{gpu.get('driver') or '?'} / {gpu.get('cuda') or '?'} / {gpu.get('cudnn') or '?'}"


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
        gpu, stack = _gpu(env)
        commit = str(env.get("git_commit") or "?")
        rows.append((str(name), commit[:12] + ("+dirty" if commit.endswith("+dirty") else ""),
                     str(env.get("created_at", "?")), str(env.get("session", "?")), str(r.get("kind", "train")),
                     str(r.get("status", "?")), str(config.get("device", "?")),
                     str(config.get("path", "-")), str(config.get("epochs", "-")), str(config.get("seed", "-")),
                     f"{env.get('cpu', '?')} ({env.get('threads', '?')})", gpu, stack, str(env.get("python", "?")),
                     f"{env.get('torch', '?')} / {env.get('torchvision', '?')}"))
    return rows


def to_html(rows: list[tuple[str, ...]], columns=COLUMNS) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-label="{html.escape(name)}">{html.escape(c)}</td>'
                                    for name, c in zip(columns, row)) + "</tr>" for row in rows)
    return (f'<div class="hdr-table-wrap"><table class="table hdr-provenance"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')
