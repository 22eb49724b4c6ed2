"""What every chapter notebook calls first: its papermill parameters checked, and the one live run chapters 05-08
share, cached."""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
from pathlib import Path

from hdr_lib import checkpoint, mnist_files, paths
from hdr_lib.config import PAPER, TrainConfig
from hdr_lib.validation import ConfigError, check
from hdr_lib.paths import REPOSITORY
from hdr_lib.measure.machine import resolve_device
from hdr_lib.measure import evidence
from hdr_lib.measure.queries import checked_results_folder, shown
from hdr_lib.measure.records import RecordError, read_record
from hdr_lib.model import LeNet5

def _number(name: str, value, range_name: str | None = None):
    """A number parameter in its range (hdr_lib.validation.check); a typo papermill passes through (`-p lr abc` arrives
    as the string 'abc') is also told how to pass it."""
    try:
        return check(name, value, f"parameter {name}", range_name=range_name, whole_floats=True)
    except ConfigError as exc:
        if isinstance(value, str):
            raise ConfigError(f"{exc}; pass it unquoted, e.g. `-p {name} {getattr(PAPER, name, 1)}`") from None
        raise


PARAMETERS = ("device", "epochs", "batch_size", "lr", "seed", "data_dir", "results_dir", "cache_dir")
INJECTED_COMMENT = "# Parameters\n"  # how papermill's Python translator opens the cell it injects


def injected_parameters() -> list[str] | None:
    """The names papermill injected into this kernel (its "# Parameters" cell, the last one run), or None when the
    kernel ran none (JupyterLab, a plain import). papermill only warns about a name the notebook does not declare;
    the check cell reads them here so that a typo stops the chapter instead of running its default."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    source = next((cell for cell in reversed(history) if cell.startswith(INJECTED_COMMENT)), None)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return [target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)]


def check_parameters(device="auto", epochs=PAPER.epochs, batch_size=PAPER.batch_size, lr=PAPER.lr,
                     seed=PAPER.seed, data_dir=None, results_dir=None, cache_dir=None, needs_data=True,
                     injected: list[str] | None = None, **extra) -> TrainConfig:
    """Check a notebook's parameters before any work; return the TrainConfig they describe.

    Raises ConfigError (a ValueError) naming the bad parameter and what to pass instead: a name the chapter does
    not take (from `injected`, else `injected_parameters()`), a number outside hdr_lib.validation.RANGES, a folder that
    is empty or, for `cache_dir`, cannot be written. Side effects: sets $HDR_DATA_DIR to the absolute folder when
    `data_dir` is given or $HDR_DATA_DIR is relative, so every later call finds the same MNIST, and checks that
    MNIST is there when `needs_data` (a given `data_dir` is read, never created).
    """
    known = set(PARAMETERS) | set(extra)
    unknown = [name for name in (injected if injected is not None else injected_parameters() or [])
               if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"unknown parameter {unknown[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"this chapter takes {', '.join(sorted(known))}")
    if not isinstance(device, str):
        raise ConfigError(f"parameter device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    config = PAPER.replace(device=device, epochs=_number("epochs", epochs),
                           batch_size=_number("batch_size", batch_size), lr=_number("lr", lr),
                           seed=_number("seed", seed)).validate()
    resolve_device(config.device)  # 'cuda' on a machine without one fails here, not after the data loads
    for name, value in extra.items():
        if name.endswith("_steps") and value is not None:
            _number(name, value, "steps")
    try:  # an existing folder of valid records, else one line here, before any work
        evidence.load(checked_results_folder(results_dir))
    except RecordError as exc:
        raise ConfigError(str(exc)) from None
    if cache_dir is not None:
        paths.output_folder(paths.input_path(cache_dir, "parameter cache_dir"), "parameter cache_dir")
    if data_dir is not None:
        paths.input_path(data_dir, "parameter data_dir")  # a path, not a number
    # One rule for where MNIST is (hdr_lib.mnist_files.locate); a folder the chapter was given, or a relative
    # $HDR_DATA_DIR, is made absolute once here, so every later call in this kernel finds the same MNIST.
    location = mnist_files.locate(data_dir)
    if location.source != "../shared/data" and location.source != "default":
        os.environ[mnist_files.ENV_VAR] = str(location.root)
    if needs_data:
        mnist_files.ensure_mnist(data_dir, download=True)  # a data_dir given is named as such in an error
    return config


def cache_folder(cache_dir=None) -> Path:
    """Where the shared live run is kept: `cache_dir`, else _build/run-cache/ of the repository."""
    if cache_dir is None:
        return REPOSITORY / "_build" / "run-cache"
    return paths.input_path(cache_dir, "parameter cache_dir")


# ---------------------------------------------------------------- one live run, shared by chapters 05-08


def cached_run(config: TrainConfig, cache_dir=None, *, data=None, verbose: bool = True):
    """(record, model) of `config`: reused from `cache_dir` when a complete record with the identical
    configuration (device resolved) and its weights are there, else trained now and written there.

    This is how chapters 05-08 of a book build share one live run instead of training four times. With
    `verbose`, training prints one line per epoch and, in a live kernel (JupyterLab) or a terminal, shows
    tqdm's progress bars: the run's epochs and the batches inside each epoch. Where $HDR_PROGRESS=0 (the book
    build sets it) there are no bars, only the lines (hdr_lib.measure.run_record.progress_enabled decides).
    """
    key = config.as_dict() | {"device": resolve_device(config.device).type}  # "auto" resolved
    folder = cache_folder(cache_dir)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    stem = folder / f"{key['device']}-{key['path']}-e{key['epochs']}-b{key['batch_size']}-seed{key['seed']}-{digest}"
    weights = stem.with_suffix(".pt")
    if stem.with_suffix(".json").is_file() and weights.is_file():
        try:  # a cached record of an older schema or a damaged one is trained again, not an error
            cached = [read_record(stem.with_suffix(".json"))]
        except RecordError:
            cached = []
        for record in cached:
            record["_path"] = str(stem.with_suffix(".json"))
            saved = {k: v for k, v in record["config"].items() if k not in ("device_requested", "framework")}
            if saved == key and record["kind"] == "train" and record["status"] == "complete":
                model = LeNet5(config.variant)
                try:  # its digest checked, read without running code (hdr_lib.checkpoint)
                    model.load_state_dict(checkpoint.load(weights))
                except (checkpoint.CheckpointError, RuntimeError, TypeError) as exc:
                    print(f"the cached weights {os.path.join(shown(folder), weights.name)} cannot be used ({exc}); training "
                          f"again")
                    break
                if verbose:
                    print(f"reusing the live run recorded {record['environment']['created_at']} in "
                          f"{os.path.join(shown(folder), stem.name + '.json')}")
                return record, model.to(key["device"])
    from hdr_lib.train import train_model

    paths.output_folder(folder, "parameter cache_dir")  # named by the parameter, as in chapter 08's check cell
    stem.with_suffix(".json").unlink(missing_ok=True)  # a cache entry that cannot be reused (a run never replaces a
    # finished record: this one is the cache's own, made again now)

    def report(entry, _record):
        if verbose:
            print(f"epoch {entry['epoch']:>2}/{config.epochs}: loss {entry['train_loss']:.4f}, test accuracy "
                  f"{entry['test_accuracy']:.2f} %, {entry['train_seconds']:.1f} s training", flush=True)

    record, model = train_model(config, data=data, out=stem.with_suffix(".json"),
                                progress=None if verbose else False, on_epoch=report)
    checkpoint.save(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    record["_path"] = str(stem.with_suffix(".json"))
    return record, model
