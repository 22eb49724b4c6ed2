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
    """Write strict JSON to a temporary file in the same folder, fsync it, then rename it over `path`.

    A non-finite number (a diverged loss) is written as null, with `<key>_not_finite` ("nan", "inf", "-inf") beside
    it: JSON has no NaN, and strict parsers (JavaScript's JSON.parse) refuse a file that has one. An OSError (a full
    disk, no permission) is a RecordError naming the file; the temporary file is removed."""
    path = Path(path)
    text = json.dumps(strict_json(payload), indent=1, sort_keys=False, default=_jsonable, allow_nan=False) + "\n"
    try:
        replace_atomically(path, text.encode())
    except OSError as exc:
        raise RecordError(f"cannot write run record {path}: {exc.strerror or exc}; free disk space or write "
                          f"it elsewhere") from exc
    return path


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a uniquely named temporary file in `path`'s folder, fsync it, then rename it over `path`:
    a reader sees the old file or the new one, never a mix. Any failure removes the temporary file and is
    raised as it came (run records and checkpoints both write this way)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:60]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; what we write is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def strict_json(value):
    """`value` with every non-finite float as None (and, in a dict, `<key>_not_finite` saying which it was)."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _plain(item)
            out[key] = strict_json(item)
            if isinstance(item, float) and not math.isfinite(item):
                out[f"{key}_not_finite"] = str(item)
        return out
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def _plain(value):
    """A 0-d tensor or a numpy scalar as the Python number it holds; anything else as it is."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


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
    """Run the default way: in PyTorch, in one process not started by torchrun, not compiled, and on CUDA with its
    graphs and Triton step (records made before these switches existed ran the default way). Runs with another way
    switched on are comparisons, not the headline."""
    config = record.get("config", {})
    on_cuda = config.get("device") == "cuda"
    if record.get("distributed") is not None:  # under torchrun (hdr_lib.distributed): a comparison, not the headline
        return False
    return (config.get("framework", "torch") == "torch"  # the Keras runs (hdr_lib.keras_lenet) are shown beside
            and not config.get("compile", False)
            and not (on_cuda and (config.get("cuda_graph", True) is False or config.get("triton", True) is False)))


def is_headline_run(record: dict) -> bool:
    """A run the paper's numbers are compared with: the paper's configuration, run the default way."""
    return is_paper_config(record) and is_default_run(record)


def processor(record: dict) -> str:
    """The processor a record ran on, whatever threads it used: the GPU's name for CUDA runs, else the CPU model
    and its widest vector instructions where the record names them (`environment.cpu_flags`: two virtual machines
    that both say "AMD EPYC" ran the fast path 6x apart, one with AVX-512, one with AVX2 only)."""
    env = record.get("environment", {})
    if record.get("config", {}).get("device") == "cuda":
        return (env.get("gpu") or {}).get("name", "unknown GPU")
    flags = env.get("cpu_flags") or {}
    vectors = ", AVX-512" if flags.get("avx512f") else ", AVX2" if flags.get("avx2") else ""
    return f"{env.get('cpu', 'unknown CPU')}{vectors}"


def machine(record: dict) -> str:
    """The processor a record's time belongs to (`processor`) and, on the CPU, the threads it ran with."""
    if record.get("config", {}).get("device") == "cuda":
        return processor(record)
    return f"{processor(record)} ({record.get('environment', {}).get('threads', '?')} threads)"


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


def session_of(record: dict) -> str:
    """The timing session a record belongs to: `environment.session` (the invocation that made it: one
    `replicate`, one `bench`, or $HDR_SESSION for a script's several commands), else, for records made before
    sessions were kept, its commit and date."""
    env = record.get("environment", {})
    if env.get("session"):
        return str(env["session"])
    commit = str(env.get("git_commit") or "unknown commit")[:7]
    return f"commit {commit}, {str(env.get('created_at', '?'))[:10]}"


def host_of(record: dict) -> str:
    """The host a record was made on (`environment.hostname_hash`), '?' when the record does not say."""
    return str(record.get("environment", {}).get("hostname_hash") or "?")


def same_host_pair(cpu_runs: list[dict], gpu_runs: list[dict], min_runs: int = 2):
    """(host, its CPU runs, its GPU runs) of the host with at least `min_runs` runs on each device (the most
    runs wins; ties: the first host in order), or None. A speedup divides times of one host only: never one
    machine's CPU time by another host's GPU time. Records that do not name their host pair with nothing."""
    best = None
    for host in sorted({host_of(r) for r in cpu_runs} - {"?"}):
        cpu = one_machine([r for r in cpu_runs if host_of(r) == host])
        gpu = one_machine([r for r in gpu_runs if host_of(r) == host])
        if len(cpu) >= min_runs and len(gpu) >= min_runs:
            if best is None or min(len(cpu), len(gpu)) > min(len(best[1]), len(best[2])):
                best = (host, cpu, gpu)
    return best


# How records made before the short keys named their step, by a phrase of the prose they stored (module names
# as they were then: hdr_lib.native, hdr_lib.fastcpu, hdr_lib.tritonstep, and as they are now).
_OLD_CPU_STEPS = (("native:", "native"), ("train_step:", "explicit"), ("torch.compile", "compiled"),
                  (".forward with autograd", "forward"), ("the module's forward with autograd", "module"))
_OLD_CUDA_KERNELS = (("Triton kernels", "triton"), ("PyTorch's own CUDA kernels", "aten"))


def step_key(record: dict, part: str = "cpu_step") -> str | None:
    """The short key (`hdr_lib.fast.CPU_STEPS` / `CUDA_KERNELS`) of a record's `execution.cpu_step` (or, with
    part="cuda_kernels", `execution.cuda_kernels`), for records that store the key and for older ones that stored
    the description in prose; None where the record names none (the reference path, a Keras run)."""
    value = (record.get("execution") or {}).get(part)
    if not isinstance(value, str) or not value:
        return None
    if " " not in value:
        return value
    table = _OLD_CPU_STEPS if part == "cpu_step" else _OLD_CUDA_KERNELS
    return next((key for phrase, key in table if phrase in value), None)
