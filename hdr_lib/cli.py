"""The command line: `python -m hdr_lib train|bench|replicate|info|data|scorecard|native|evaluate`; user errors exit 2 with one clear line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hdr_lib import paths, settings
from hdr_lib.config import PAPER
from hdr_lib.validation import RANGES, ConfigError, check
from hdr_lib.mnist_files import DataError
from hdr_lib.keras_lenet import FRAMEWORKS, KERAS_WAYS
from hdr_lib.measure.records import RecordError


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`error: ...`, exit 2): `--help` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def _number(name: str):
    """An argparse type for the number `name`: its range is hdr_lib.validation.RANGES[name], as everywhere else."""
    rule = RANGES[name]

    def parse(text: str):
        try:
            value = rule.kind(text)
        except (ValueError, OverflowError):
            value = text
        try:
            return check(name, value)
        except ConfigError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, got {shown!r}") from None

    return parse


def _add_run_options(p: argparse.ArgumentParser, *, seed: bool = True, both_ways: bool = False) -> None:
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=PAPER.device,
                   help="cpu, cuda, or auto (cuda when available); default %(default)s")
    p.add_argument("--epochs", type=_number("epochs"), default=PAPER.epochs, help="default %(default)s (§3.4)")
    p.add_argument("--batch-size", type=_number("batch_size"), default=PAPER.batch_size, help="default %(default)s (§3.4)")
    p.add_argument("--lr", type=_number("lr"), default=PAPER.lr, help="default %(default)s (§3.4)")
    if seed:
        p.add_argument("--seed", type=_number("seed"), default=PAPER.seed, help="default %(default)s")
    p.add_argument("--variant", choices=["paper", "lenet1998"], default=PAPER.variant,
                   help="paper: §3.3 on 28x28 (default); lenet1998: padded to 32x32 as in 1998")
    p.add_argument("--amp", nargs="?", const="bf16", default=PAPER.amp, choices=["off", "bf16", "fp16"],
                   help="mixed precision (the paper's future work): bf16 (bfloat16 autocast; plain --amp), fp16 "
                        "(float16 with a gradient scaler, CUDA only), off (float32, the paper's; default)")
    p.add_argument("--model", choices=["lenet5", "resnet"], default=PAPER.model,
                   help="lenet5: the paper's network (default); resnet: a small residual network, the paper's "
                        "future work (16-32-64 channels, global average pooling)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="CUDA fast path: run the steps eagerly instead of replaying CUDA graphs")
    p.add_argument("--no-triton", dest="triton", action="store_false",
                   help="CUDA fast path: PyTorch's own kernels (cuDNN, cuBLAS) instead of the two Triton kernels")
    p.add_argument("--compile", action="store_true",
                   help="fast path: torch.compile the model (Inductor); compilation is timed apart from training")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch",
                   help="torch (default), or the same network in Keras 3 on TensorFlow, JAX or PyTorch (CPU only; "
                        "hdr_lib.keras_lenet)")
    p.add_argument("--keras-way", choices=KERAS_WAYS, default=None if both_ways else "fit",
                   help="Keras runs: fit (model.fit, its own shuffling" + ("" if both_ways else "; default")
                        + ") or loop (a compiled step over the PyTorch runs' batch order)"
                        + ("; default: both, alternating" if both_ways else ""))
    p.add_argument("--data-dir", default=None, help="MNIST root holding MNIST/raw (default: $HDR_DATA_DIR, else ../shared/data beside the "
                        "checkout, else data/ of the repository)")
    p.add_argument("--max-steps", type=_number("max_steps"), default=None,
                   help="stop each run after this many optimiser steps in all: a quick check of the whole command "
                        "(its records say status 'incomplete' and max_steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


WHERE_RECORDS_GO = (
    "Records: written by default to, and read by scorecard from, one folder: $HDR_RESULTS_DIR when set, else "
    "results/ of the checkout that hdr_lib runs from, whichever folder the command is started in (--out and "
    "--out-dir choose another; a relative one is taken from the current folder). A run never replaces a finished "
    "record or another kind's: it is kept and the run refused; only an incomplete record of the same kind is "
    "rewritten. A record being written is locked: a second writer of it is refused. HDR_* variables are checked "
    "before any work (switches take 1/true/yes/on or 0/false/no/off).")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hdr_lib",
                     description="Replicate the paper's LeNet-5 MNIST training on CPU and CUDA.",
                     epilog=WHERE_RECORDS_GO)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train once and write one JSON record", epilog=WHERE_RECORDS_GO)
    _add_run_options(p)
    p.add_argument("--path", choices=["fast", "reference"], default=PAPER.path, help="default %(default)s")
    p.add_argument("--out", default=None,
                   help="record file (default: <records>/<device>-<path>-e<epochs>-b<batch>[-<option>...]"
                        "[-steps<N>]-seed<seed>.json, e.g. cpu-fast-e20-b64-seed0.json; -steps<N> with "
                        "--max-steps, so a quick check never takes a paper run's name; <records>: see below)")
    p.add_argument("--checkpoint-dir", default=None, help="save model/optimiser/scheduler/RNG after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint-dir (only from an epoch's end: one cut short "
                        "by --max-steps is refused)")
    p.add_argument("--overwrite-checkpoint", action="store_true",
                   help="start afresh in a --checkpoint-dir that holds another run's checkpoint, replacing it "
                        "(without it, such a folder is refused)")
    p.add_argument("--weights-out", default=None, help="save the trained weights (a PyTorch state dict) to this file; "
                                                       "the record names it with its SHA-256 (python -m hdr_lib evaluate)")

    p = sub.add_parser("bench", help="time the fast and reference paths in one process, alternating (with a Keras "
                                     "--framework, its ways too)", epilog=WHERE_RECORDS_GO)
    _add_run_options(p, both_ways=True)
    p.add_argument("--rounds", type=_number("rounds"), default=3, help="epochs timed per path (default %(default)s)")
    p.add_argument("--fast-variant", action="append", default=[], choices=["no-triton", "no-cuda-graph", "compile"],
                   help="also time the fast path run this way (repeatable), alternating with the others")
    p.add_argument("--loop", action="append", default=[], choices=["tight", "canonical"],
                   help="also time a loop written without the library (repeatable): tight (MNIST in one tensor) or "
                        "canonical (torchvision dataset + DataLoader)")
    p.add_argument("--contention", action="store_true",
                   help="time every way again with one core made busy by the benchmark (a spinning process)")
    p.add_argument("--profile", action="store_true",
                   help="on the CPU, also say where the native step's time goes, part by part (ms per step)")
    p.add_argument("--out", default=None, help="benchmark record file (default: <records>/bench-<device>.json; "
                                               "with a Keras --framework, <records>/bench-<device>-<framework>.json; "
                                               "-steps<N> before .json with --max-steps; <records>: see below)")

    p = sub.add_parser("replicate", help="run the paper's configuration for several seeds, one record each; run "
                                         "again, it skips the seeds whose record is complete and reruns the rest",
                       epilog=WHERE_RECORDS_GO)
    _add_run_options(p, seed=False)
    p.add_argument("--path", choices=["fast", "reference"], default=PAPER.path)
    p.add_argument("--seeds", type=_number("seeds"), default=5, help="number of seeds, 0..N-1 (default %(default)s)")
    p.add_argument("--first-seed", type=_number("first_seed"), default=0)
    p.add_argument("--out-dir", default=None,
                   help="folder for the records, named as train names them (default: <records>, see below); "
                        "locked while replicate runs")

    sub.add_parser("info", help="print the hardware and versions a record would hold")
    p = sub.add_parser("data", help="say where MNIST is found (and why there) and check its four files")
    p.add_argument("--data-dir", default=None, help="MNIST root holding MNIST/raw (default: as for train)")
    p = sub.add_parser("scorecard", help="the verdict table: each claim of the paper beside ours, from run records")
    p.add_argument("--results", default=None,
                   help="folder of run records (default: $HDR_RESULTS_DIR when set, else results/ of the checkout)")
    p.add_argument("--json", action="store_true", help="print the table as JSON instead of text")
    sub.add_parser("native", help="build the fast path's native CPU step for this machine (once), say if it is used")

    p = sub.add_parser("evaluate", help="test accuracy of a trained weights file on MNIST's 10,000 test images, "
                                        "checked against the record that names the file")
    p.add_argument("--weights", required=True, help="a state dict saved by train --weights-out (loaded without "
                                                    "running code)")
    p.add_argument("--results", default=None, help="folder of run records to find the file's record in, by its "
                                                    "SHA-256 (default: results/ of the repository, or $HDR_RESULTS_DIR)")
    p.add_argument("--data-dir", default=None, help="MNIST root holding MNIST/raw (default: as for train)")
    return parser


def _config_from(args, **overrides):
    fields = dict(device=args.device, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  variant=args.variant, model=args.model, amp=args.amp,
                  cuda_graph=args.cuda_graph, compile=args.compile, triton=args.triton,
                  deterministic=args.deterministic)
    for name in ("seed", "path"):
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    fields.update(overrides)
    return PAPER.replace(**fields).validate()


def keras_check(config, args) -> None:
    """A Keras run's settings and its framework's import, checked before any work (one line, exit 2)."""
    from hdr_lib import keras_lenet

    keras_lenet.check_config(config, args.framework, args.keras_way)
    if args.framework != "torch":
        keras_lenet.import_keras(args.framework)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from hdr_lib import distributed

    written = _Written(getattr(args, "out", None) if args.command == "train" else None)
    dist_ctx = None
    try:
        settings.check_environment()  # every HDR_* variable, one rule, before any work
        dist_ctx = distributed.from_environment()  # started by torchrun (or with its variables): data-parallel
        if dist_ctx is not None and args.command not in ("train", "replicate"):
            raise ConfigError(f"'{args.command}' runs in one process; under torchrun use train or replicate")
        if dist_ctx is not None and getattr(args, "framework", "torch") != "torch":
            raise ConfigError(f"--framework {args.framework} runs in one process; under torchrun use --framework torch")
        return _dispatch(args, written, dist_ctx)
    except (ConfigError, DataError, RecordError) as exc:
        where = f"rank {dist_ctx.rank} of {dist_ctx.world_size}: " if dist_ctx is not None else ""
        print(f"error: {where}{' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except distributed.DistributedError as exc:
        return distributed.fail(exc)
    except RuntimeError as exc:
        if dist_ctx is None:
            raise
        # A collective inside DistributedDataParallel's backward pass surfaces as torch's own RuntimeError.
        lines = str(exc).strip().splitlines()
        return distributed.fail(distributed.DistributedError(
            f"rank {dist_ctx.rank} of {dist_ctx.world_size}: training stopped, another rank died or stopped "
            f"answering (timeout {dist_ctx.timeout_s:g} s): {type(exc).__name__}: {lines[0][:200] if lines else ''}"))
    except KeyboardInterrupt:
        print(_interrupted(args, written), file=sys.stderr)
        return 130
    finally:
        if dist_ctx is not None:
            dist_ctx.close()


class _Written:
    """Whether this process wrote the record at `out` (so an interrupt message can say so, and only then)."""

    def __init__(self, out):
        self.out = None
        self.set(out)

    def set(self, out):
        self.out = Path(out) if out else None
        self.before = self._stamp()

    def _stamp(self):
        try:
            return self.out.stat().st_mtime_ns if self.out is not None else None
        except (OSError, ValueError):  # not there; or not a path at all (a NUL byte), which is refused later
            return None

    def happened(self) -> bool:
        return self.out is not None and self._stamp() not in (None, self.before)


def _interrupted(args, written: _Written) -> str:
    """What an interrupt left, as it is: a record only when one was written, --resume only with a checkpoint."""
    parts = ["interrupted"]
    if written.happened():
        parts.append(f"the record {written.out} says status 'incomplete'")
    elif args.command == "train":
        parts.append("no record was written")
    if getattr(args, "checkpoint_dir", None):
        parts.append(f"rerun with --resume and --checkpoint-dir {args.checkpoint_dir} to continue from its last "
                     f"checkpoint")
    elif args.command == "replicate":
        parts.append(f"the records of the seeds that finished are in {args.out_dir or settings.results_dir()}; "
                     f"the same command again skips them and reruns the rest")
    return "; ".join(parts)


def _check_paths(args) -> None:
    """The paths of the command, before any work: outputs writable and not clashing, the data folder a path."""
    if getattr(args, "data_dir", None) is not None:
        paths.input_path(args.data_dir, "--data-dir")
    if getattr(args, "out", None) is not None:
        paths.output_file(args.out, "--out", kind="bench" if args.command == "bench" else "train")
    if getattr(args, "checkpoint_dir", None) is not None:
        paths.output_folder(args.checkpoint_dir, "--checkpoint-dir")
    if getattr(args, "out_dir", None) is not None:
        paths.output_folder(args.out_dir, "--out-dir")
    if getattr(args, "weights_out", None) is not None:
        paths.output_file(args.weights_out, "--weights-out")


def _dispatch(args, written: _Written, dist_ctx=None) -> int:
    from hdr_lib.measure.machine import environment, resolve_device

    _check_paths(args)
    if args.command == "info":
        import torch

        print(json.dumps(environment(torch.device("cuda") if torch.cuda.is_available() else None), indent=1))
        return 0
    if args.command == "data":
        from hdr_lib import mnist_files

        location = mnist_files.locate(args.data_dir)
        mnist_files.ensure_mnist(args.data_dir)
        print(f"MNIST: {location.root} ({location.why}), four files checked against SHA-256")
        return 0
    if args.command in ("scorecard", "native"):
        return _scorecard(args) if args.command == "scorecard" else _native()
    if args.command == "evaluate":
        return _evaluate(args)
    progress = False if args.quiet or (dist_ctx is not None and not dist_ctx.is_writer) else None
    world = dist_ctx.world_size if dist_ctx is not None else None
    if args.command == "train":
        from hdr_lib.measure.replicate import record_name, train_any

        config = _config_from(args)
        if args.framework != "torch" and (args.checkpoint_dir or args.resume or args.overwrite_checkpoint):
            raise ConfigError("--checkpoint-dir, --resume and --overwrite-checkpoint apply to the PyTorch runs "
                              f"only; drop them with --framework {args.framework}")
        keras_check(config, args)
        if args.weights_out is not None and (args.framework != "torch" or config.model != "lenet5"):
            raise ConfigError("--weights-out saves the PyTorch LeNet-5's weights; drop it with --framework "
                              f"{args.framework} or --model {config.model}")
        device = resolve_device(config.device)
        if args.out is None:
            out = paths.output_file(settings.results_dir() / record_name(
                config, device.type, args.framework, args.keras_way, world_size=world, max_steps=args.max_steps),
                "the default record", kind="train")
            written.set(out)
        else:
            out = Path(args.out)
        record = train_any(config, args.framework, args.keras_way, data_root=args.data_dir, out=out,
                           checkpoint_dir=args.checkpoint_dir, resume=args.resume, progress=progress,
                           max_steps=args.max_steps, dist_ctx=dist_ctx,
                           **({"overwrite_checkpoint": True} if args.overwrite_checkpoint else {}),
                           **({"weights_out": args.weights_out} if args.weights_out is not None else {}))
        if dist_ctx is not None and not dist_ctx.is_writer:  # rank 0 reports (and writes)
            return 0 if record["status"] == "complete" or args.max_steps is not None else 1
        accuracy = record["test_accuracy"]
        print(f"{record['status']}: test accuracy {'-' if accuracy is None else f'{accuracy:.2f} %'}, "
              f"training {record['total_train_seconds'] or 0:.1f} s on {device.type} ({record['config']['path']} path) -> {out}")
        if record.get("diverged"):
            print(f"the run diverged: {record['diverged']} (the record has null there, and says why)",
                  file=sys.stderr)
            return 1
        if args.max_steps is not None:
            return 0  # stopped where it was asked to
        return 0 if record["status"] == "complete" else 1
    if args.command == "replicate":
        from hdr_lib.measure.replicate import replicate

        config = _config_from(args, seed=args.first_seed)
        keras_check(config, args)
        replicate(config, seeds=args.seeds, out_dir=args.out_dir, data_root=args.data_dir, progress=progress,
                  max_steps=args.max_steps, framework=args.framework, keras_way=args.keras_way, dist_ctx=dist_ctx)
        return 0
    if args.command == "bench":
        from hdr_lib.measure.bench import bench

        config = _config_from(args)
        device = resolve_device(config.device)
        suffix = "" if args.framework == "torch" else f"-{args.framework}"  # never over the PyTorch bench's record
        steps = f"-steps{args.max_steps}" if args.max_steps is not None else ""  # a quick check: its own name
        out = (Path(args.out) if args.out is not None
               else paths.output_file(settings.results_dir() / f"bench-{device.type}{suffix}{steps}.json",
                                      "the default record", kind="bench"))
        with paths.WriteLock(out, "record"):
            bench(config, rounds=args.rounds, out=out, data_root=args.data_dir, progress=progress,
                  variants=tuple(args.fast_variant), max_steps=args.max_steps, framework=args.framework,
                  keras_ways=(args.keras_way,) if args.keras_way else None, loops=tuple(args.loop),
                  contention=args.contention, profile=args.profile)
        return 0
    raise AssertionError(args.command)


def _scorecard(args) -> int:
    """`scorecard`: the verdict table from the records under --results, as text or JSON."""
    from hdr_lib.book import scorecard

    from hdr_lib.measure.queries import checked_results_folder

    folder = checked_results_folder(args.results, "--results")  # else $HDR_RESULTS_DIR, else results/
    rows = scorecard.scorecard(results_dir=folder)
    if args.json:
        print(json.dumps({"results": str(folder), "status": scorecard.status_line(rows).replace("**", ""),
                          "claims": scorecard.as_json(rows)}, indent=1))
    else:
        print(f"Records: {folder}\n{scorecard.status_line(rows).replace('**', '')}\n")
        print(_scorecard_text(rows), end="")
    return 0


def _beside_text(beside: dict) -> str:
    from hdr_lib import paper
    from hdr_lib.book import scorecard

    text = f"Keras/TensorFlow (model.fit) on {beside['hardware']}: {scorecard.format_value(beside['mean'], 's')}"
    if beside.get("ci95_low") is not None:
        text += (f" ({scorecard.format_value(beside['ci95_low'], 's')} to "
                 f"{scorecard.format_value(beside['ci95_high'], 's')})")
    text += f", n = {beside['n']}, {paper.CPU_SECONDS / beside['mean']:.0f}x faster than the paper's"
    if beside.get("session"):
        text += f", timing session {beside['session']} (chapter 10)"
    if beside.get("load_average") is not None:
        text += f" (made at a 1-minute load average of {beside['load_average']:.1f} on the shared cores)"
    return text


def _scorecard_text(rows) -> str:
    """The scorecard for a terminal: one block per claim, the same rows and cells as the book's table."""
    from hdr_lib.book import scorecard

    lines = []
    for (claim, claimed, ours, verdict, fast, hardware, _note), row in zip(scorecard.table_rows(rows), rows):
        lines += [f"{claim}", f"  paper:          {claimed}", f"  ours reference: {ours}", f"  verdict:        {verdict}",
                  f"  ours fast:      {fast}", f"  {hardware}",
                  f"  note: reference: {row.cells['reference'].note}; fast: {row.cells['fast'].note}"]
        lines += [f"  beside (not scored): {_beside_text(row.beside)}", ""] if row.beside else [""]
    return "\n".join(lines).rstrip() + "\n"


def _native() -> int:
    """`native`: build (or load) the native CPU step and say whether the fast path uses it."""
    from hdr_lib.fast import native
    from hdr_lib.measure.timing import Stopwatch

    with Stopwatch() as sw:  # building it, the first time on this machine; else loading it
        ready = native.load()
    if ready and native.use():
        print(f"native CPU step ready ({sw.seconds:.1f} s): {native.build_directory()}")
    elif ready:
        print(f"native CPU step built ({sw.seconds:.1f} s) in {native.build_directory()} but not used: "
              f"{native.reason()}; the CPU fast path runs hdr_lib.fast.torch_cpu.train_step instead")
    else:
        print(f"native CPU step not available ({native.reason()}); the CPU fast path runs "
              "hdr_lib.fast.torch_cpu.train_step instead")
    return 0


def _evaluate(args) -> int:
    """`evaluate`: load a weights file (anything else: WeightsError, exit 2), measure it on the test set, and compare
    with the record that names it by SHA-256: exit 1 when they disagree by more than one test image."""
    from hdr_lib import weights
    from hdr_lib.measure.queries import results_folder

    path = paths.input_path(args.weights, "--weights")
    try:
        model, variant = weights.load(path)
    except weights.WeightsError as exc:
        raise ConfigError(str(exc)) from None
    digest = weights.sha256_of(path)
    records = weights.records_naming(digest, results_folder(args.results, "--results"))
    accuracy = weights.test_accuracy(model, args.data_dir)
    print(f"{path}: LeNet-5 ({variant}), SHA-256 {digest[:12]}..., test accuracy {accuracy:.2f} % on MNIST's "
          f"10,000 test images (CPU)")
    if not records:
        print("no record under the results folder names this file (by SHA-256): nothing to compare with")
        return 0
    failed = False
    for record in records:
        stated = record.get("test_accuracy")
        agrees = stated is not None and abs(stated - accuracy) <= weights.ACCURACY_TOLERANCE
        failed |= not agrees
        print(f"{'agrees with' if agrees else 'DIFFERS from'} its record {record['_path']}: "
              f"{'-' if stated is None else f'{stated:.2f} %'} ({record.get('status')}, "
              f"{record['config'].get('device')}, {record['config'].get('path')} path)")
    return 1 if failed else 0
