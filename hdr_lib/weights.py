"""Trained weights: a LeNet-5's state dict saved with torch.save, loaded back without running code
(`weights_only=True`), checked against the network's own keys and shapes, and measured on MNIST's test set."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from hdr_lib.model import LeNet5
from hdr_lib.paths import REPOSITORY

FORMAT = "torch-state-dict"
MAX_BYTES = 16 * 1024 * 1024  # a LeNet-5 state dict is about 250 kB: anything far larger is not one
ACCURACY_TOLERANCE = 0.011  # percentage points: one test image of 10,000 (another device may round a tie otherwise)


class WeightsError(ValueError):
    """A file that is not the weights of this network (unreadable, truncated, code, another network's)."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shown_path(path: str | os.PathLike) -> str:
    """A weights file as a record names it: relative to the repository root where it lies inside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPOSITORY).as_posix()
    except ValueError:
        return str(path)


def save(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Save `model`'s state dict (on the CPU, float32) to `path`; return the record's `weights` entry."""
    from hdr_lib.measure.records import replace_atomically
    import io

    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    replace_atomically(Path(path), buffer.getvalue())
    return {"file": shown_path(path), "sha256": sha256_of(path), "format": FORMAT}


def _expected() -> dict[str, dict[str, torch.Size]]:
    """variant -> {key: shape} of LeNet5's state dict (the paper's §3.3 network and the 1998 variant)."""
    return {variant: {k: v.shape for k, v in LeNet5(variant).state_dict().items()}
            for variant in ("paper", "lenet1998")}


def load(path: str | os.PathLike) -> tuple[LeNet5, str]:
    """The LeNet-5 whose weights are in `path`, and its variant; WeightsError (one line) for anything else.
    Nothing in the file is executed: torch.load with weights_only=True refuses a pickle that would run code."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"--weights {path}: cannot be read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise WeightsError(f"--weights {path}: not a file")
    if size > MAX_BYTES:
        raise WeightsError(f"--weights {path}: {size:,} bytes, far more than a LeNet-5's weights (about 250 kB)")
    try:
        with warnings.catch_warnings():  # torch warns about a legacy pickle before refusing it: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here: UnpicklingError, RuntimeError, EOFError, zipfile's
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = (first[:100] + "...") if len(first) > 100 else first or "no detail"
        raise WeightsError(f"--weights {path}: not a PyTorch state dict that loads without running code "
                           f"({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WeightsError(f"--weights {path}: holds a {type(state).__name__}, not a state dict of tensors")
    shapes = {k: v.shape for k, v in state.items()}
    for variant, expected in _expected().items():
        if shapes == expected:
            break
    else:
        expected = _expected()["paper"]
        differ = sorted(set(shapes) ^ set(expected)) or [k for k in expected if shapes[k] != expected[k]]
        raise WeightsError(f"--weights {path}: not the weights of this LeNet-5 (neither the paper's nor the 1998 "
                           f"variant); keys or shapes differ at {', '.join(differ[:4])}")
    bad = [k for k, v in state.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"--weights {path}: {', '.join(bad[:4])} not finite floating-point numbers")
    model = LeNet5(variant)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), variant


def records_naming(sha256: str, folder: str | os.PathLike) -> list[dict]:
    """The train records under `folder` whose `weights.sha256` is `sha256` (each with its `_path`)."""
    from hdr_lib.measure.records import load_records

    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [r for r in load_records(folder, kind="train", status=None)
            if isinstance(r.get("weights"), dict) and r["weights"].get("sha256") == sha256]


def published(folder: str | os.PathLike) -> list[dict]:
    """Every train record under `folder` that names a weights file: the model card's rows."""
    from hdr_lib.measure.records import load_records

    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [r for r in load_records(folder, kind="train", status=None) if isinstance(r.get("weights"), dict)]


def test_accuracy(model: torch.nn.Module, data_root=None, device: str = "cpu") -> float:
    """The model's accuracy (%) on MNIST's 10,000 test images, scaled as in training (§3.2)."""
    from hdr_lib import data as mnist
    from hdr_lib.train import evaluate

    tensors = mnist.load_mnist(data_root)
    model = model.to(device)
    with torch.no_grad():
        return evaluate(model, mnist.to_float(tensors.test_images, device), tensors.test_labels.to(device))


def card_table(folder: str | os.PathLike) -> str:
    """The model card's table (Markdown): one row per record that names a weights file."""
    from hdr_lib.measure import queries

    rows = ["| Weights file | Path, variant, epochs, seed | Test accuracy (its record) | Machine | Record |",
            "|---|---|---|---|---|"]
    for r in published(folder):
        c, acc = r["config"], r.get("test_accuracy")
        rows.append(f"| `{r['weights']['file']}` (SHA-256 `{r['weights']['sha256'][:12]}…`) | {c.get('path')}, "
                    f"{c.get('variant')}, {len(r.get('epochs', []))} of {c.get('epochs')}, {c.get('seed')} | "
                    f"{'-' if acc is None else f'{acc:.2f} %'} ({r.get('status')}) | {queries.machine(r, True)} | "
                    f"`{Path(r['_path']).name}` |")
    return "\n".join(rows) if len(rows) > 2 else ""
