"""Several seeds of one configuration, one record each: the material for means and confidence intervals."""

from __future__ import annotations

import os
from pathlib import Path

from hdr_lib import data as mnist, paths, settings
from hdr_lib.config import TrainConfig
from hdr_lib.validation import RANGES, ConfigError, check
from hdr_lib.measure.machine import resolve_device
from hdr_lib.train import train


def record_name(config: TrainConfig, device_type: str, framework: str = "torch", keras_way: str = "fit", *,
                world_size: int | None = None, max_steps: int | None = None) -> str:
    """`<device>-<path>-e<epochs>-b<batch>[-<option>...]-seed<seed>.json`: every setting a user can change from
    the command line that is not the paper's, or not the default way to run, is in the name (mixed precision as
    bf16 or fp16, the residual network as resnet, a run under torchrun with N processes as ddpN, N = 1 too), so
    that a run with an option never overwrites the paper configuration's record of the same seed. A Keras run names
    its framework and way in place of the path: `cpu-keras-tensorflow-fit-e20-b64-seed0.json`. A run cut short by
    `max_steps` is named so (`cpu-fast-e20-b64-steps20-seed0.json`): a quick check never takes the name of a
    paper-configuration record."""
    options = ((config.model != "lenet5", config.model), (world_size is not None, f"ddp{world_size}"),
               (config.compile, "compiled"), (device_type == "cuda" and not config.cuda_graph, "nograph"),
               (device_type == "cuda" and not config.triton, "aten"), (config.amp != "off", config.amp),
               (config.deterministic, "deterministic"))
    tags = [name for on, name in options if on] + ([f"steps{max_steps}"] if max_steps is not None else [])
    tags += [f"{key}{value}".replace(".", "p").replace("/", "-") for key, value in config.deviations().items()
             if key not in ("epochs", "batch_size", "amp", "model", "deterministic")]
    middle = "".join(f"-{tag}" for tag in tags)
    path = config.path if framework == "torch" else f"{framework}-{keras_way}"
    return f"{device_type}-{path}-e{config.epochs}-b{config.batch_size}{middle}-seed{config.seed}.json"


def train_any(config: TrainConfig, framework: str = "torch", keras_way: str = "fit", **kwargs) -> dict:
    """hdr_lib.train.train for framework "torch", else hdr_lib.keras_lenet.train (which takes no checkpoints)."""
    if framework == "torch":
        return train(config, **kwargs)
    from hdr_lib import keras_lenet

    for name in ("checkpoint_dir", "resume", "dist_ctx", "overwrite_checkpoint"):
        kwargs.pop(name, None)
    out = kwargs.get("out")
    if out is not None:
        paths.output_file(out, "out", kind="train")
    with paths.WriteLock(out, "record") if out is not None else _nothing():
        return keras_lenet.train(config, framework, keras_way, **kwargs)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def replicate(config: TrainConfig, *, seeds: int = 5, out_dir: str | Path | None = None, data_root=None,
              progress: bool | None = None, max_steps: int | None = None, framework: str = "torch",
              keras_way: str = "fit", dist_ctx=None) -> list[dict]:
    """Train `config` for seeds config.seed .. config.seed + seeds - 1; write each record to `out_dir` (default:
    `hdr_lib.settings.results_dir()`) (`max_steps`: each run stops after that many steps, a quick check of the
    command). Run again with the same arguments, it goes on where it stopped: a seed whose record is complete (same
    settings) is kept and skipped, an incomplete one is run again; it says which. The folder is locked for one
    replicate at a time."""
    from hdr_lib import keras_lenet

    config.validate()
    seeds = check("seeds", seeds)
    if max_steps is not None:
        max_steps = check("max_steps", max_steps)
    if config.seed + seeds - 1 > RANGES["seed"].high:
        raise ConfigError(f"the last seed, {config.seed + seeds - 1}, is above the largest seed, "
                          f"{RANGES['seed'].high}; start lower or run fewer seeds")
    keras_lenet.check_config(config, framework, keras_way)
    device = resolve_device(config.device)
    out_dir = paths.output_folder(settings.results_dir() if out_dir is None else out_dir, "out_dir")
    world = dist_ctx.world_size if dist_ctx is not None else None
    outs = {seed: out_dir / record_name(config.replace(seed=seed), device.type, framework, keras_way,
                                        world_size=world, max_steps=max_steps)
            for seed in range(config.seed, config.seed + seeds)}
    writer = dist_ctx is None or dist_ctx.is_writer
    folder_lock = paths.WriteLock(out_dir, "out_dir", folder=True) if writer else None
    try:
        if folder_lock is not None:
            folder_lock.acquire()
        done = {seed: _finished(out, config.replace(seed=seed), device.type) for seed, out in outs.items()}
        return _replicate(config, seeds, outs, done, device, data_root, progress, max_steps, framework, keras_way,
                          dist_ctx, writer)
    finally:
        if folder_lock is not None:
            folder_lock.release()


def _finished(out: Path, config: TrainConfig, device_type: str) -> dict | None:
    """The complete record of `config` already at `out` (to be kept, its seed skipped); None where there is none
    or an incomplete one (to be run again). Any other file there is refused (`hdr_lib.paths.output_file`)."""
    from hdr_lib.measure.records import RecordError, read_record

    if os.path.lexists(out) and out.is_file():
        try:
            record = read_record(out)
        except (RecordError, OSError):
            record = None
        saved = dict((record or {}).get("config") or {})
        saved.pop("device_requested", None)
        wanted = {**config.as_dict(), "device": device_type}
        if (record is not None and record.get("kind") == "train" and record.get("status") == "complete"
                and all(saved.get(k) == v for k, v in wanted.items() if k in saved)
                and saved.get("seed") == config.seed):
            return record
    paths.output_file(out, "out_dir", kind="train")
    return None


def _replicate(config, seeds, outs, done, device, data_root, progress, max_steps, framework, keras_way, dist_ctx,
               writer) -> list[dict]:
    from hdr_lib import keras_lenet

    if framework != "torch":
        keras_lenet.import_keras(framework)  # where Keras is missing: one clear error before any work
    kept = [seed for seed, record in done.items() if record is not None]
    if kept and writer:
        print(f"replicate: {len(kept)} of {seeds} seeds already have a complete record, kept and skipped "
              f"({', '.join(map(str, kept))}); running {seeds - len(kept)}")
    data = mnist.load_mnist(data_root) if config.path == "fast" and len(kept) < seeds else None
    records = []
    for seed in range(config.seed, config.seed + seeds):
        run_config = config.replace(seed=seed)
        out = outs[seed]
        if done[seed] is not None:
            records.append(done[seed])
            if writer:
                print(f"seed {seed}: complete record kept, skipped -> {out}")
            continue
        if writer and os.path.lexists(out):
            print(f"seed {seed}: its record {out} is incomplete (a run that stopped); running it again")
        record = train_any(run_config, framework, keras_way, data=data, data_root=data_root, out=out,
                           progress=progress, max_steps=max_steps, dist_ctx=dist_ctx)
        records.append(record)
        if dist_ctx is not None and not dist_ctx.is_writer:
            continue
        print(f"seed {seed}: {record['status']}, test accuracy {record['test_accuracy']:.2f} %, "
              f"training {record['total_train_seconds']:.1f} s -> {out}")
    return records
