"""Run records: one JSON file per run, written atomically (no validator imported: the training side writes them),
read back checked against the hdr-run/2 schema, with one line naming the file and the field when damaged."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path

SCHEMA = "hdr-run/2"  # hdr_lib/measure/hdr-run-2.schema.json; scripts/migrate_records_v2.py moved hdr-run/1 here


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


MAX_BYTES = 64 * 2**20  # a run record is a few kB; a larger file under results/ is not one
SCHEMA_FILE = Path(__file__).with_name("hdr-run-2.schema.json")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond a float")
    return value


def _validator():
    """The hdr-run/2 validator (jsonschema, imported here: the training side writes records without it)."""
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        _VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    return _VALIDATOR


_VALIDATOR = None


def check_record(record, path) -> dict:
    """`record` when it is an hdr-run/2 record, else a RecordError naming the file and the first bad field."""
    if not isinstance(record, dict):
        raise RecordError(f"run record {path} is not a JSON object")
    if record.get("schema") != SCHEMA:
        hint = " (written before the migration: run scripts/migrate_records_v2.py)" if record.get("schema") == \
            "hdr-run/1" else ""
        raise RecordError(f"run record {path}: field schema is {str(record.get('schema'))[:40]!r}, expected "
                          f"{SCHEMA!r}{hint}")
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(record))
    if error is not None:
        where, message = [str(part) for part in error.absolute_path], " ".join(error.message.split())[:160]
        if error.validator == "required":  # name the missing field itself, not the object that lacks it
            where, message = where + [message.split("'")[1]], "missing"
        raise RecordError(f"run record {path}: field {'.'.join(where) or '(the record)'}: {message}")
    return record


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a record file: a regular file of at most MAX_BYTES (a FIFO or a device is refused, never
    opened, so nothing hangs), else a RecordError naming it."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise RecordError(f"run record {path} is not a regular file")
        if info.st_size > MAX_BYTES:
            raise RecordError(f"run record {path} is {info.st_size} bytes, more than a record ({MAX_BYTES})")
        return path.read_bytes()
    except OSError as exc:
        raise RecordError(f"run record {path} cannot be read: {exc.strerror or exc}") from exc


def parse_record(data: bytes, path) -> dict:
    """A record's bytes as a checked hdr-run/2 record; any damage is one RecordError naming `path`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"run record {path} is not UTF-8 text (byte {exc.start}); restore it from git") from None
    try:
        record = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise RecordError(f"run record {path} is corrupt or truncated (invalid JSON at line {exc.lineno}, "
                          f"column {exc.colno}); delete it or restore it from git") from None
    except (ValueError, RecursionError) as exc:  # NaN, 1e999, a 5,000-digit integer, 100,000 nested brackets
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0][:100]
        raise RecordError(f"run record {path} is not a record's JSON: {reason}") from None
    return check_record(record, path)


def read_record(path: str | os.PathLike) -> dict:
    return parse_record(read_bytes(path), path)


def load_records(folder: str | os.PathLike, *, kind: str | None = None, status: str | None = "complete",
                 **config_filters) -> list[dict]:
    """Every record under `folder` (recursively), each with its `_path`; filtered by kind, status and config.

    A damaged file raises RecordError naming it: nothing is skipped in silence. A byte-identical copy of a record
    (a backup in a subfolder) is one run: the first path in order is kept, the copies listed in its `_copies`.
    """
    folder = Path(folder)
    out, seen = [], {}
    for path in sorted(folder.rglob("*.json")):
        data = read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            seen[digest].setdefault("_copies", []).append(str(path))
            continue
        record = parse_record(data, path)
        seen[digest] = record
        if kind is not None and record["kind"] != kind:
            continue
        if status is not None and record["status"] != status:
            continue
        if any(record["config"].get(key) != value for key, value in config_filters.items()):
            continue
        record["_path"] = str(path)
        out.append(record)
    return out


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
