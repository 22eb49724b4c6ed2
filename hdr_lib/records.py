"""Run records: one JSON file per run, written atomically, read back with a clear error when damaged."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

SCHEMA = "hdr-run/1"
REQUIRED = ("schema", "config", "environment", "epochs", "status")


class RecordError(ValueError):
    """A record file that is unreadable, truncated or not an hdr-run record; the message names the file."""


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=False, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a record is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecordError(f"run record {path} cannot be read: {exc}") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"run record {path} is corrupt or truncated (invalid JSON at line {exc.lineno}, "
                          f"column {exc.colno}); delete it or restore it from git") from exc
    if not isinstance(record, dict):
        raise RecordError(f"run record {path} is not a JSON object")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise RecordError(f"run record {path} lacks {', '.join(missing)}; it is not a complete {SCHEMA} record")
    if record["schema"] != SCHEMA:
        raise RecordError(f"run record {path} has schema {record['schema']!r}, expected {SCHEMA!r}")
    return record


def load_records(folder: str | os.PathLike, *, kind: str | None = None, status: str | None = "complete",
                 **config_filters) -> list[dict]:
    """Every record under `folder` (recursively), each with its `_path`; filtered by kind, status and config.

    A damaged file raises RecordError naming it: nothing is skipped in silence.
    """
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*.json")):
        record = read_record(path)
        if kind is not None and record.get("kind", "train") != kind:
            continue
        if status is not None and record.get("status") != status:
            continue
        config = record.get("config", {})
        if any(config.get(key) != value for key, value in config_filters.items()):
            continue
        record["_path"] = str(path)
        out.append(record)
    return out


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def is_paper_config(record: dict) -> bool:
    """A record of exactly the paper's settings (§3.3, §3.4): nothing in `deviations_from_paper`."""
    return record.get("deviations_from_paper") == {}


def is_default_run(record: dict) -> bool:
    """Run the default way: one process not started by torchrun, not compiled, and on CUDA with its graphs and Triton step (records made before these
    switches existed ran the default way). Runs with another way switched on are comparisons, not the headline."""
    config = record.get("config", {})
    on_cuda = config.get("device") == "cuda"
    if record.get("distributed") is not None:  # under torchrun (hdr_lib.distributed): a comparison, not the headline
        return False
    return (not config.get("compile", False)
            and not (on_cuda and (config.get("cuda_graph", True) is False or config.get("triton", True) is False)))


def is_headline_run(record: dict) -> bool:
    """A run the paper's numbers are compared with: the paper's configuration, run the default way."""
    return is_paper_config(record) and is_default_run(record)


def machine(record: dict) -> str:
    """The processor a record's time belongs to: the GPU's name for CUDA runs, the CPU model and threads else."""
    env = record.get("environment", {})
    if record.get("config", {}).get("device") == "cuda":
        return (env.get("gpu") or {}).get("name", "unknown GPU")
    return f"{env.get('cpu', 'unknown CPU')} ({env.get('threads', '?')} threads)"


def one_machine(runs: list[dict]) -> list[dict]:
    """The runs of the machine with the most of them (ties: the first name in order). A mean of times from two
    machines is neither machine's time: the GPU machine's own CPU run, say, is shown beside, not pooled in."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(machine(r), []).append(r)
    if not groups:
        return []
    return max(sorted(groups.items()), key=lambda item: len(item[1]))[1]


def paper_runs(folder: str | os.PathLike, device: str | None = None, path: str | None = None) -> list[dict]:
    """Complete training records of the paper's configuration, run the default way (`is_default_run`), under
    `folder`, optionally of one device ("cpu", "cuda") and one training path ("fast", "reference"); [] when the
    folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    filters = {key: value for key, value in (("device", device), ("path", path)) if value is not None}
    return [r for r in load_records(folder, kind="train", status="complete", **filters) if is_headline_run(r)]
