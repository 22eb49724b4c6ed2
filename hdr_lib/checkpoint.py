"""Checkpoints: written atomically with a SHA-256 of their bytes, loaded without running code (the folder is
locked for one run by `hdr_lib.paths.FolderLock`)."""

from __future__ import annotations

import copy
import hashlib
import io
import os
from pathlib import Path

import torch

from hdr_lib.validation import ConfigError
from hdr_lib.measure.records import replace_atomically
from hdr_lib.model import build_model

NAME = "checkpoint.pt"
FORMAT = "hdr-checkpoint/1"
MAX_BYTES = 64 * 2**20  # a LeNet-5 checkpoint is under 1 MB; a file far larger is not one of ours
# What a training checkpoint holds, and the type of each part (hdr_lib.train writes and reads it).
TRAIN_KEYS = {"config": dict, "epoch": int, "model": dict, "optimizer": dict, "scheduler": dict,
              "rng_cpu": torch.Tensor, "epochs": list, "setup_seconds": dict}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be written, read or trusted; the message names the file and what to do."""


def save(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path`, with the SHA-256 of its serialised bytes
    beside them in the same file; through a uniquely named temporary file in the same folder, fsynced, then
    renamed, so a reader sees the old checkpoint or the new one, never a mix. Any failure (a full disk) removes
    the temporary file and raises CheckpointError."""
    path = Path(path)
    body = io.BytesIO()
    torch.save(state, body)
    data = body.getvalue()
    outer = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                "state": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, outer)
    try:
        replace_atomically(path, outer.getvalue())
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}; free disk space or choose "
                              f"another checkpoint folder") from exc
    return path


def load(path: str | os.PathLike) -> dict:
    """The state `save` wrote, after checking its digest. torch.load runs with weights_only=True, so a crafted
    file cannot run code: it is refused. Anything wrong is a CheckpointError of one line."""
    path = Path(path)
    advice = "delete it to start afresh, or choose another checkpoint folder"
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise CheckpointError(f"checkpoint {path} is {size:,} bytes, far more than a checkpoint of this "
                                  f"program; {advice}")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}; {advice}") from exc
    outer = _unpickle(raw, path, advice)
    if not (isinstance(outer, dict) and outer.get("format") == FORMAT and isinstance(outer.get("sha256"), str)
            and isinstance(outer.get("state"), torch.Tensor) and outer["state"].dtype == torch.uint8
            and outer["state"].dim() == 1):
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} checkpoint with a digest (made by an older "
                              f"version, or not by this program); {advice}")
    data = outer["state"].numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its SHA-256 check: its content changed after it was "
                              f"written (a flipped bit, an edit); {advice}")
    return _unpickle(data, path, advice)


def _unpickle(data: bytes, path: Path, advice: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a truncated zip, a pickle with code in it: all one answer)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or holds more than tensors and plain "
                              f"values ({type(exc).__name__}: {first}); it was not run; {advice}") from None


def check_train_state(state, path: Path, model: torch.nn.Module) -> None:
    """A training checkpoint's structure: the keys and types of TRAIN_KEYS, and the model's names and shapes."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training checkpoint; "
                              f"delete it to start afresh")
    for key, kind in TRAIN_KEYS.items():
        if not isinstance(state.get(key), kind) or (kind is int and isinstance(state[key], bool)):
            raise CheckpointError(f"checkpoint {path} lacks {key!r} or holds the wrong type there; delete it to "
                                  f"start afresh")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state["model"].items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or [k for k in expected if found[k] != expected[k]]
        raise CheckpointError(f"checkpoint {path} does not fit this model (first difference: {wrong[0]}); delete "
                              f"it to start afresh, or resume with the settings it was made with")
    if not 0 <= state["epoch"] == len(state["epochs"]):
        raise CheckpointError(f"checkpoint {path} says epoch {state['epoch']} but holds {len(state['epochs'])} "
                              f"epochs of record; delete it to start afresh")


def save_train_state(folder: Path, run, model, optimizer, scheduler) -> None:
    """The state after the run's last epoch (`hdr_lib.measure.run_record.Run`), on the CPU, as `folder`'s
    checkpoint (TRAIN_KEYS)."""
    save(Path(folder) / NAME, {"config": run.config.as_dict(), "epoch": run.epochs[-1]["epoch"],
                               "model": _to_cpu(model.state_dict()), "optimizer": _to_cpu(optimizer.state_dict()),
                               "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                               "epochs": copy.deepcopy(run.epochs), "setup_seconds": dict(run.setup_seconds)})


def _to_cpu(value):
    """Tensors copied to the CPU (a copy, not a view of a larger buffer), in dicts and lists as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {k: _to_cpu(v) for k, v in items}
        return out if isinstance(value, dict) else list(out.values())
    return value


def load_train_state(folder: Path, config) -> dict | None:
    """The checkpoint to resume from, checked (digest, structure, settings) before any work; None when the
    folder holds none (the run starts from epoch 1)."""
    path = Path(folder) / NAME
    if not os.path.lexists(path):
        return None
    state = load(path)
    check_train_state(state, path, build_model(config.model, config.variant))
    saved = state["config"]
    mismatched = {k: (saved.get(k), v) for k, v in config.as_dict().items() if saved.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
        raise ConfigError(f"checkpoint {path} was made with other settings ({detail}); use the same settings "
                          f"to resume, or another --checkpoint-dir")
    return state


def restore(state: dict, model, optimizer, scheduler, path: Path) -> None:
    """Put a loaded checkpoint's weights, optimiser (lr kept a device tensor where it is one) and scheduler back."""
    lr_tensors = [g["lr"] if isinstance(g["lr"], torch.Tensor) else None for g in optimizer.param_groups]
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group, tensor in zip(optimizer.param_groups, lr_tensors):
            if tensor is not None:  # the checkpoint holds lr as a CPU value; the step reads a device tensor
                group["lr"] = torch.tensor(float(group["lr"]), device=tensor.device)
        torch.set_rng_state(state["rng_cpu"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model, optimiser or scheduler "
                              f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); delete it to "
                              f"start afresh") from None
