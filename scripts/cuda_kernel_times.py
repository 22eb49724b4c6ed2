"""Where the CUDA step's time goes: the Triton step's two kernels timed alone, on the GPU, at the paper's batch.

Each is launched many times inside one CUDA graph (no Python or launch overhead between launches, as in training)
and timed with CUDA events; sample_kernel runs at 4, 8 and 16 warps per image by default (hdr_lib.fast.triton_step uses
8). The projection multiplies a step's time by the paper's 20 epochs of 938 steps. It writes an hdr-run/1 record of kind
"kernel-times" (with the GPU, the versions and the commit, as every record has). The kernels update the weights as
they run (on one batch, over and over): a timing, not training.

    PYTHONPATH=. python3 scripts/cuda_kernel_times.py --out kernel-times-cuda.json   (gpu_replication.sh runs it)
"""

import argparse
import statistics
import sys

import torch

from hdr_lib import PAPER, settings
from hdr_lib.measure import machine
from hdr_lib.fast import triton_step
from hdr_lib.data import load_mnist, to_float
from hdr_lib.mnist_files import DataError
from hdr_lib.measure.records import SCHEMA, write_json_atomic
from hdr_lib.train import batch_order, init_model, make_optimizer

STEPS_20_EPOCHS = 20 * 938


def graph_microseconds(launch, launches: int, repeats: int) -> list[float]:
    """Microseconds per launch, once per replay of a graph holding `launches` of them."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compiles the kernels outside the capture
        launch()
        launch()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            launch()
    graph.replay()  # warm
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / launches)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where the JSON goes")
    parser.add_argument("--launches", type=int, default=200, help="launches per graph (default 200)")
    parser.add_argument("--repeats", type=int, default=7, help="timed replays (default 7)")
    parser.add_argument("--warps", default="4,8,16", help="sample_kernel's warps per image to try (default 4,8,16)")
    args = parser.parse_args(argv)
    try:
        warps = [int(w) for w in args.warps.split(",")]
    except ValueError:
        warps = []
    if args.launches < 1 or args.repeats < 1 or not warps or any(w not in (1, 2, 4, 8, 16, 32) for w in warps):
        print("cuda_kernel_times: --launches and --repeats must be at least 1, and --warps powers of 2 up to 32",
              file=sys.stderr)
        return 2
    try:
        settings.check_environment()  # HDR_SESSION and HDR_GIT_COMMIT go into the record: checked before any work
    except settings.SettingError as error:
        print(f"cuda_kernel_times: {error}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("cuda_kernel_times: needs a CUDA GPU (none on this machine)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    config = PAPER.replace(device="cuda")
    try:
        data = load_mnist(download=False)
    except DataError as exc:
        print(f"cuda_kernel_times: {exc}", file=sys.stderr)
        return 2
    x_all = to_float(data.train_images, device)
    y_all = data.train_labels.to(device)
    idx = batch_order(config.seed, 1, x_all.shape[0])[:config.batch_size].to(device)
    model = init_model(config, device)
    optimizer, _ = make_optimizer(model, config, fused=True, lr_device=device)  # as the fast path makes it
    step = triton_step.TrainStep(model, optimizer, config.batch_size)
    loss = torch.empty((), device=device)

    def sample(warps):
        return lambda: step.sample(x_all, y_all, idx, num_warps=warps)

    timings = {f"sample_kernel, {w} warps": sample(w) for w in warps}
    timings["update_kernel"] = lambda: step.update(config.batch_size, loss)
    timings["whole step (both, as trained)"] = lambda: step.step(x_all, y_all, idx)
    result = {"schema": SCHEMA, "kind": "kernel-times",
              "config": {**config.as_dict(), "path": "fast", "epochs": 0, "launches_per_graph": args.launches,
                         "repeats": args.repeats},
              "environment": machine.environment(device), "epochs": [], "microseconds_per_launch": {}}
    for name, launch in timings.items():
        times = graph_microseconds(launch, args.launches, args.repeats)
        result["microseconds_per_launch"][name] = {"median": statistics.median(times), "min": min(times),
                                                   "max": max(times)}
        print(f"{name:32s} median {statistics.median(times):8.2f} us  (min {min(times):.2f}, max {max(times):.2f})")
    whole = result["microseconds_per_launch"]["whole step (both, as trained)"]["median"]
    result["projected_steps"] = STEPS_20_EPOCHS
    result["projected_seconds_20_epochs"] = whole * STEPS_20_EPOCHS / 1e6
    print(f"20 epochs of {STEPS_20_EPOCHS} such steps: {result['projected_seconds_20_epochs']:.2f} s "
          "(kernels only; the last batch of each epoch is 32 images)")
    result["status"] = "complete"
    write_json_atomic(args.out, result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
