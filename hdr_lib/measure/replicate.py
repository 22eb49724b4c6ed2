"""Several seeds of one configuration, one record each: the material for means and confidence intervals."""

from __future__ import annotations

from pathlib import Path

from hdr_lib import data as mnist, paths
from hdr_lib.config import TrainConfig
from hdr_lib.validation import RANGES, ConfigError, check
from hdr_lib.measure.machine import resolve_device
from hdr_lib.train import train


def record_name(config: TrainConfig, device_type: str, framework: str = "torch", keras_way: str = "fit", *,
                world_size: int | None = None) -> str:
    """`<device>-<path>-e<epochs>-b<batch>[-<option>...]-seed<seed>.json`: every setting a user can change from
    the command line that is not the paper's, or not the default way to run, is in the name (mixed precision as
    bf16 or fp16, the residual network as resnet, a run under torchrun with N processes as ddpN, N = 1 too), so
    that a run with an option never overwrites the paper configuration's record of the same seed. A Keras run names
    its framework and way in place of the path: `cpu-keras-tensorflow-fit-e20-b64-seed0.json`."""
    options = ((config.model != "lenet5", config.model), (world_size is not None, f"ddp{world_size}"),
               (config.compile, "compiled"), (device_type == "cuda" and not config.cuda_graph, "nograph"),
               (device_type == "cuda" and not config.triton, "aten"), (config.amp != "off", config.amp),
               (config.deterministic, "deterministic"))
    tags = [name for on, name in options if on]
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

    for name in ("checkpoint_dir", "resume", "dist_ctx"):
        kwargs.pop(name, None)
    return keras_lenet.train(config, framework, keras_way, **kwargs)


def replicate(config: TrainConfig, *, seeds: int = 5, out_dir: str | Path = "results", data_root=None,
              progress: bool | None = None, max_steps: int | None = None, framework: str = "torch",
              keras_way: str = "fit", dist_ctx=None) -> list[dict]:
    """Train `config` for seeds config.seed .. config.seed + seeds - 1; write each record to `out_dir`
    (`max_steps`: each run stops after that many steps, a quick check of the command)."""
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
    out_dir = paths.output_folder(out_dir, "out_dir")
    for seed in (config.seed, config.seed + seeds - 1):  # the longest record name is the last seed's
        paths.output_file(out_dir / record_name(config.replace(seed=seed), device.type, framework, keras_way),
                          "out_dir")
    if framework != "torch":
        keras_lenet.import_keras(framework)  # where Keras is missing: one clear error before any work
    data = mnist.load_mnist(data_root) if config.path == "fast" else None
    records = []
    for seed in range(config.seed, config.seed + seeds):
        run_config = config.replace(seed=seed)
        out = out_dir / record_name(run_config, device.type, framework, keras_way,
                                    world_size=dist_ctx.world_size if dist_ctx is not None else None)
        record = train_any(run_config, framework, keras_way, data=data, data_root=data_root, out=out,
                           progress=progress, max_steps=max_steps, dist_ctx=dist_ctx)
        records.append(record)
        if dist_ctx is not None and not dist_ctx.is_writer:
            continue
        print(f"seed {seed}: {record['status']}, test accuracy {record['test_accuracy']:.2f} %, "
              f"training {record['total_train_seconds']:.1f} s -> {out}")
    return records
