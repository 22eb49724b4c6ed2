"""Several seeds of one configuration, one record each: the material for means and confidence intervals."""

from __future__ import annotations

from pathlib import Path

from hdr_lib import data as mnist
from hdr_lib.config import TrainConfig
from hdr_lib.hardware import resolve_device
from hdr_lib.train import check_writable, train


def record_name(config: TrainConfig, device_type: str, world_size: int | None = None) -> str:
    """`<device>-<path>-e<epochs>-b<batch>[-<option>...]-seed<seed>.json`: every setting a user can change from
    the command line that is not the paper's, or not the default way to run, is in the name (mixed precision as
    bf16 or fp16, the residual network as resnet, a run under torchrun with N processes as ddpN, N = 1 too), so that a run with an option
    never overwrites the paper configuration's record of the same seed."""
    options = ((config.model != "lenet5", config.model), (world_size is not None, f"ddp{world_size}"),
               (config.compile, "compiled"), (device_type == "cuda" and not config.cuda_graph, "nograph"),
               (device_type == "cuda" and not config.triton, "aten"), (config.amp != "off", config.amp),
               (config.channels_last, "nhwc"), (config.tf32, "tf32"), (config.deterministic, "deterministic"))
    tags = [name for on, name in options if on]
    tags += [f"{key}{value}".replace(".", "p").replace("/", "-") for key, value in config.deviations().items()
             if key not in ("epochs", "batch_size", "amp", "model", "channels_last", "tf32", "deterministic")]
    middle = "".join(f"-{tag}" for tag in tags)
    return f"{device_type}-{config.path}-e{config.epochs}-b{config.batch_size}{middle}-seed{config.seed}.json"


def replicate(config: TrainConfig, *, seeds: int = 5, out_dir: str | Path = "results", data_root=None,
              progress: bool | None = None, max_steps: int | None = None, dist_ctx=None) -> list[dict]:
    """Train `config` for seeds config.seed .. config.seed + seeds - 1; write each record to `out_dir`
    (`max_steps`: each run stops after that many steps, a quick check of the command)."""
    config.validate()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    data = mnist.load_mnist(data_root) if config.path == "fast" else None
    records = []
    for seed in range(config.seed, config.seed + seeds):
        run_config = config.replace(seed=seed)
        out = out_dir / record_name(run_config, device.type, dist_ctx.world_size if dist_ctx is not None else None)
        record = train(run_config, data=data, data_root=data_root, out=out, progress=progress, max_steps=max_steps,
                       dist_ctx=dist_ctx)
        records.append(record)
        if dist_ctx is not None and not dist_ctx.is_writer:
            continue
        print(f"seed {seed}: {record['status']}, test accuracy {record['test_accuracy']:.2f} %, "
              f"training {record['total_train_seconds']:.1f} s -> {out}")
    return records
