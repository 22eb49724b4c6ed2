"""Several seeds of one configuration, one record each: the material for means and confidence intervals."""

from __future__ import annotations

from pathlib import Path

from hdr_lib import data as mnist
from hdr_lib.config import TrainConfig
from hdr_lib.hardware import resolve_device
from hdr_lib.train import check_writable, train


def record_name(config: TrainConfig, device_type: str, framework: str = "torch", keras_way: str = "fit") -> str:
    """`<device>-<path>-e<epochs>-b<batch>[-<option>...]-seed<seed>.json`: every setting a user can change from
    the command line that is not the paper's, or not the default way to run, is in the name, so that a run with
    an option never overwrites the paper configuration's record of the same seed. A Keras run names its framework
    and way in place of the path: `cpu-keras-tensorflow-fit-e20-b64-seed0.json`."""
    options = ((config.compile, "compiled"), (device_type == "cuda" and not config.cuda_graph, "nograph"),
               (device_type == "cuda" and not config.triton, "aten"), (config.amp, "amp"),
               (config.channels_last, "nhwc"), (config.tf32, "tf32"), (config.deterministic, "deterministic"))
    tags = [name for on, name in options if on]
    tags += [f"{key}{value}".replace(".", "p").replace("/", "-") for key, value in config.deviations().items()
             if key not in ("epochs", "batch_size", "amp", "channels_last", "tf32", "deterministic")]
    middle = "".join(f"-{tag}" for tag in tags)
    path = config.path if framework == "torch" else f"{framework}-{keras_way}"
    return f"{device_type}-{path}-e{config.epochs}-b{config.batch_size}{middle}-seed{config.seed}.json"


def train_any(config: TrainConfig, framework: str = "torch", keras_way: str = "fit", **kwargs) -> dict:
    """hdr_lib.train.train for framework "torch", else hdr_lib.keras_lenet.train (which takes no checkpoints)."""
    if framework == "torch":
        return train(config, **kwargs)
    from hdr_lib import keras_lenet

    for name in ("checkpoint_dir", "resume"):
        kwargs.pop(name, None)
    return keras_lenet.train(config, framework, keras_way, **kwargs)


def replicate(config: TrainConfig, *, seeds: int = 5, out_dir: str | Path = "results", data_root=None,
              progress: bool | None = None, framework: str = "torch", keras_way: str = "fit") -> list[dict]:
    """Train `config` for seeds config.seed .. config.seed + seeds - 1; write each record to `out_dir`."""
    from hdr_lib import keras_lenet

    config.validate()
    keras_lenet.check_config(config, framework, keras_way)
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    if framework != "torch":
        keras_lenet.import_keras(framework)  # where Keras is missing: one clear error before any work
    data = mnist.load_mnist(data_root) if config.path == "fast" else None
    records = []
    for seed in range(config.seed, config.seed + seeds):
        run_config = config.replace(seed=seed)
        out = out_dir / record_name(run_config, device.type, framework, keras_way)
        record = train_any(run_config, framework, keras_way, data=data, data_root=data_root, out=out,
                           progress=progress)
        print(f"seed {seed}: {record['status']}, test accuracy {record['test_accuracy']:.2f} %, "
              f"training {record['total_train_seconds']:.1f} s -> {out}")
        records.append(record)
    return records
