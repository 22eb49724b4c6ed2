"""The benchmark: the fast and reference paths timed in one process, alternating epochs, with one record; with a
Keras framework, that framework's ways (model.fit, own loop) alternate with them in the same process."""

from __future__ import annotations

import os
import statistics
from functools import partial
from pathlib import Path

from hdr_lib import data as mnist, paths
from hdr_lib.measure import baselines, ceiling
from hdr_lib.config import TrainConfig
from hdr_lib.validation import ConfigError, check
from hdr_lib.measure.machine import environment, resolve_device
from hdr_lib.measure.flops import training_flops
from hdr_lib.measure.records import SCHEMA, write_json_atomic
from hdr_lib.train import train

PATHS = ("reference", "fast")
# Other ways to run the fast path, timed beside it with --fast-variant: each is "fast <name>" in the record.
VARIANTS = {"no-triton": {"triton": False}, "no-cuda-graph": {"cuda_graph": False}, "compile": {"compile": True}}


def bench(config: TrainConfig, *, rounds: int = 3, out: str | Path | None = None, data_root=None,
          progress: bool | None = None, variants: tuple[str, ...] = (), max_steps: int | None = None,
          framework: str = "torch", keras_ways: tuple[str, ...] | None = None, loops: tuple[str, ...] = (),
          contention: bool = False, profile: bool = False) -> dict:
    """Time one epoch of each path `rounds` times, alternating, so both see the same machine state: round 1 runs
    (reference, fast), round 2 (fast, reference), and so on, so that neither path always runs second in a
    process that may slow down as it goes. Every epoch starts from the same seed: the same work, the same accuracy.
    `variants` (names in VARIANTS) add ways to run the fast path; the order then rotates by one each round.
    `framework` (a Keras one, hdr_lib.keras_lenet) adds that framework's `keras_ways` (default: fit and loop), each
    "<framework> <way>" in the record, timed as hdr_lib.keras_lenet.train times them: a new model each round, so
    every `fit` epoch includes the tracing of its train function, as a 1-epoch fit does (its `execution` says so).

    Reports seconds per epoch (median, min, max), images per second, test accuracy and the speed ratio: of the
    medians, and round by round (the two epochs of a round run back to back, so their ratio is the one
    least moved by a machine whose speed drifts; the record keeps each round's and their median).
    One-time costs (data loading, moving data, graph capture) are reported apart, per path.
    `ceiling` puts each way's sustained rate (the epoch's FLOPs, hdr_lib.measure.flops.training_flops, over its median
    time) beside the rate of a large float32 matrix product on the same device (hdr_lib.measure.ceiling), measured after
    every round and taken as the median of the rounds, as the paths' times are.

    `loops` (hdr_lib.measure.baselines.LOOPS) adds loops written without the library: "tight" (MNIST in one tensor,
    batches by index) and "canonical" (torchvision's dataset and a DataLoader). `contention` times every way a
    second time, as "<way> busy", with one core made busy by the benchmark itself (baselines.busy_core, for that
    epoch only), in the same rotation; the record's `contention` compares each way's busy and quiet medians and
    the fast path with the canonical loop under the same load. `profile` adds, on a CPU with the native step, where
    its time goes part by part (hdr_lib.measure.profiling.native_step_profile), as the record's `profile`. The CPU's
    limits in force (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, set before the process
    starts) are kept in `config`.
    """
    config.validate()
    rounds = check("rounds", rounds)
    if max_steps is not None:
        max_steps = check("max_steps", max_steps)
    unknown = [loop for loop in loops if loop not in baselines.LOOPS]
    if unknown:
        raise ConfigError(f"unknown loop {unknown[0]!r}; choose from {', '.join(baselines.LOOPS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown bench variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    device = resolve_device(config.device)
    if out is not None:
        out = paths.output_file(out, "out")
    keras_ways = _check_keras(config.replace(device=device.type), framework, keras_ways)
    data = mnist.load_mnist(data_root)
    n_images = data.train_images.shape[0]  # per timed epoch
    if max_steps is not None:  # a quick check of the command, not a benchmark: its record says "incomplete"
        max_steps = min(max_steps, -(-n_images // config.batch_size))  # each way runs one epoch at most
        n_images = min(n_images, max_steps * config.batch_size)
    ways = {path: partial(train, config.replace(path=path, epochs=1)) for path in PATHS}
    ways.update({f"fast {v}": partial(train, config.replace(path="fast", epochs=1, **VARIANTS[v])) for v in variants})
    if keras_ways:
        from hdr_lib import keras_lenet

        ways.update({f"{framework} {way}": partial(keras_lenet.train, config.replace(path="fast", epochs=1),
                                                   framework, way) for way in keras_ways})
    for loop in loops:
        ways[loop] = partial(_loop, loop, config)
    if contention:
        ways.update({f"{name} busy": partial(_busy, way) for name, way in list(ways.items())})
    names = list(ways)
    runs, products = _alternate(ways, rounds, data, device, progress, max_steps)
    summary = {path: _summary(items, n_images) for path, items in runs.items()}
    ratio = summary["reference"]["seconds_per_epoch_median"] / summary["fast"]["seconds_per_epoch_median"]
    per_round = [ref["train_seconds"] / fast["train_seconds"] for ref, fast in zip(runs["reference"], runs["fast"])]
    per_round_median = statistics.median(per_round)
    # How much of the device each way uses: its sustained rate against a large matrix product's, same process.
    matmul = {**{key: products[0][key] for key in ("op", "n", "dtype", "tf32", "trials")},
              "gflops_per_round": [p["gflops"] for p in products],
              "gflops": statistics.median(p["gflops"] for p in products)}
    flops = training_flops(config.variant, n_images)["train_flops_per_epoch"]
    rates = {name: flops / summary[name]["seconds_per_epoch_median"] / 1e9 for name in names}
    shares = {name: rate / matmul["gflops"] for name, rate in rates.items()}
    record = {
        "schema": SCHEMA,
        "kind": "bench",
        # Each round times one epoch per path: the record says so, whatever `config.epochs` was.
        "config": {**config.as_dict(), "epochs": 1, "device": device.type, "device_requested": config.device,
                   "path": "both", "rounds": rounds, "variants": list(variants),
                   "framework": "pytorch" if framework == "torch" else framework,
                   "keras_ways": list(keras_ways), "loops": list(loops), "contention": contention,
                   "cpu_limits": {k: os.environ.get(k) for k in CPU_LIMITS}},
        "environment": environment(device),
        "epochs": [],
        "runs": runs,
        "summary": summary,
        "speedup_fast_over_reference": ratio,
        "speedup_per_round": per_round,
        "speedup_median_of_rounds": per_round_median,
        # Every way of running against the reference, by medians (the variants' too).
        "speedup_over_reference": {name: summary["reference"]["seconds_per_epoch_median"]
                                   / summary[name]["seconds_per_epoch_median"] for name in names[1:]},
        "ceiling": {"matmul": matmul, "train_flops_per_epoch": flops, "gflops": rates, "fraction_of_matmul": shares},
        "contention": _contention(summary, names) if contention else None,
        "status": "complete" if max_steps is None else "incomplete",
        "max_steps": max_steps,
    }
    if profile and device.type == "cpu":
        from hdr_lib.data import to_float
        from hdr_lib.measure.profiling import native_step_profile

        record["profile"] = native_step_profile(to_float(data.train_images).view(-1, 1, 28, 28), data.train_labels,
                                                batch_size=config.batch_size)
    _print_summary(record, names)
    if record.get("profile"):
        prof = record["profile"]
        print(f"native step ({prof['isa']}, {prof['threads']} threads), {prof['ms_per_step']:.3f} ms per step: "
              + ", ".join(f"{name} {ms:.3f}" for name, ms in prof["parts"].items()))
    if contention:
        for line in record["contention"]["lines"]:
            print(line)
    if out is not None:
        write_json_atomic(out, record)
        print(f"-> {out}")
    return record


CPU_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "HDR_NATIVE")


def _loop(name: str, config: TrainConfig, *, data, progress=None, max_steps=None) -> dict:
    return baselines.run_loop(name, config, data, max_steps=max_steps)


def _busy(way, **kwargs) -> dict:
    """`way`'s epoch with one core made busy by a spinning process, for that epoch only."""
    with baselines.busy_core():
        return way(**kwargs)


def _contention(summary: dict, names: list[str]) -> dict:
    """Each way's busy median over its quiet one, and the fast path against the canonical loop under load."""
    slowdown = {name: summary[f"{name} busy"]["seconds_per_epoch_median"] / summary[name]["seconds_per_epoch_median"]
                for name in names if f"{name} busy" in summary}
    lines = [f"one core busy: {name} takes {factor:.2f}x its quiet time "
             f"({summary[f'{name} busy']['seconds_per_epoch_median']:.3f} s/epoch)" for name, factor in slowdown.items()]
    fast_vs_canonical = None
    if "canonical busy" in summary:
        fast_vs_canonical = (summary["canonical busy"]["seconds_per_epoch_median"]
                             / summary["fast busy"]["seconds_per_epoch_median"])
        lines.append(f"one core busy: fast is {fast_vs_canonical:.2f}x the canonical loop")
    return {"slowdown_busy_over_quiet": slowdown, "fast_over_canonical_busy": fast_vs_canonical, "lines": lines}


def _check_keras(config: TrainConfig, framework: str, keras_ways: tuple[str, ...] | None) -> tuple[str, ...]:
    """The Keras ways to time beside the PyTorch paths (none for torch), checked and their framework imported
    before any work: one line (ConfigError) for a bad choice or a missing install."""
    if framework == "torch":
        if keras_ways:
            raise ConfigError("--keras-way applies to a Keras --framework only")
        return ()
    from hdr_lib import keras_lenet

    keras_ways = tuple(keras_ways) if keras_ways else keras_lenet.KERAS_WAYS
    for way in keras_ways:
        keras_lenet.check_config(config.replace(path="fast"), framework, way)
    keras_lenet.import_keras(framework)
    return keras_ways


def _alternate(ways: dict, rounds: int, data, device, progress, max_steps) -> tuple[dict, list]:
    """One epoch of each way per round (`ways`: name -> a train function of one epoch), the order rotating by one
    each round; after each round, the matrix product's rate (the ceiling, under the same machine state). Returns
    (runs by way, the products)."""
    names = list(ways)
    runs, products = {name: [] for name in names}, []
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            record = ways[name](data=data, progress=progress, max_steps=max_steps)
            epoch = record["epochs"][0]
            runs[name].append({"round": round_ + 1, "train_seconds": epoch["train_seconds"],
                               "test_accuracy": epoch["test_accuracy"], "train_loss": epoch["train_loss"],
                               "setup_seconds": record["setup_seconds"], "execution": record["execution"]})
            threads = record["execution"].get("threads_per_epoch")
            print(f"round {round_ + 1}/{rounds} {name:>14}: {epoch['train_seconds']:.2f} s/epoch, "
                  f"test accuracy {epoch['test_accuracy']:.2f} %"
                  + (f", threads {threads[0]}" if threads else ""), flush=True)
        products.append(ceiling.matmul_rate(device))
    return runs, products


def _summary(items: list[dict], n_images: int) -> dict:
    """One way's epochs: seconds (median, min, max), images per second, accuracies, 20 epochs at the median."""
    seconds = [item["train_seconds"] for item in items]
    median = statistics.median(seconds)
    return {"seconds_per_epoch_median": median, "seconds_per_epoch_min": min(seconds),
            "seconds_per_epoch_max": max(seconds), "images_per_second": n_images / median,
            "test_accuracy": [item["test_accuracy"] for item in items],
            "projected_seconds_for_paper_epochs": median * 20}


def _print_summary(record: dict, names: list[str]) -> None:
    summary, matmul, rates = record["summary"], record["ceiling"]["matmul"], record["ceiling"]["gflops"]
    shares, per_round = record["ceiling"]["fraction_of_matmul"], record["speedup_per_round"]
    print(f"fast: {summary['fast']['seconds_per_epoch_median']:.3f} s/epoch "
          f"({summary['fast']['images_per_second']:,.0f} images/s); reference: "
          f"{summary['reference']['seconds_per_epoch_median']:.3f} s/epoch "
          f"({summary['reference']['images_per_second']:,.0f} images/s); fast is "
          f"{record['speedup_fast_over_reference']:.2f}x the reference (round by round: "
          f"{', '.join(f'{r:.2f}' for r in per_round)}; median {record['speedup_median_of_rounds']:.2f}x)")
    print(f"a {matmul['n']}x{matmul['n']} float32 matrix product runs at {matmul['gflops']:,.0f} GFLOP/s here "
          f"(median of the rounds; {min(matmul['gflops_per_round']):,.0f}-{max(matmul['gflops_per_round']):,.0f}); "
          + "; ".join(f"{name} sustains {rates[name]:,.1f} GFLOP/s ({100 * shares[name]:.1f} %)" for name in names))
    for name in names[2:]:
        print(f"{name}: {summary[name]['seconds_per_epoch_median']:.3f} s/epoch, "
              f"{record['speedup_over_reference'][name]:.2f}x the reference")


def quick_comparison(config: TrainConfig, data, steps: int = 100, rounds: int = 2) -> list[dict]:
    """A short live timing of the fast and the reference path, unrecorded (chapter 09 runs it while the page is
    built): `steps` optimiser steps each, alternated `rounds` times. Rows for figures.bench_bars (seconds are per
    `steps` steps here, not per epoch)."""
    device = resolve_device(config.device).type
    seconds = {"reference": [], "fast": []}
    for _ in range(rounds):
        for path in seconds:
            record = train(config.replace(path=path, epochs=1), data=data, max_steps=steps, progress=False)
            seconds[path].append(record["total_train_seconds"])
    return [{"device": device, "path": path, "seconds": s, "hardware": ""} for path, s in seconds.items()]

