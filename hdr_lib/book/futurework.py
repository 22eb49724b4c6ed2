"""What chapter 11 ("The paper's future work") shows: mixed precision, data-parallel training and a deeper network,
each from the records in results/ (nothing typed in by hand), with "not yet measured" where no record exists."""

from __future__ import annotations

import json

from hdr_lib.fast import CPU_STEPS
from hdr_lib.measure import stats
from hdr_lib.measure.flops import training_flops
from hdr_lib.model import ResNet, LeNet5, count_parameters
from hdr_lib.measure import queries
from hdr_lib.measure.queries import NOT_MEASURED
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import is_default_way, processor, session as session_of



def _train_records(results_dir, status="complete") -> list[dict]:
    return queries.recorded(results_dir, "train", status=status)


def model_name(record: dict) -> str:
    return record.get("config", {}).get("model", "lenet5")


def world_size(record: dict) -> int | None:
    """The number of processes of a run under torchrun; None for a plain one-process run."""
    return (record.get("distributed") or {}).get("world_size")


def seconds_per_epoch(record: dict) -> float:
    """Mean training seconds of the record's epochs (each of them full)."""
    epochs = record["epochs"]
    return sum(e["train_seconds"] for e in epochs) / len(epochs)


NO_RECORD = "no record"  # a table cell without a measurement: the chapter says "not yet measured" once


def _fmt_summary(s: dict, digits: int = 2, unit: str = "") -> str:
    if s["n"] == 0:
        return NO_RECORD
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}{unit} (1 run)"
    return f"{s['mean']:.{digits}f}{unit} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"




def cpu_processor(results_dir=None) -> str | None:
    """The processor of this chapter's CPU rows: the scored CPU machine's (`evidence.scored_cpu_processor`)."""
    return evidence.scored_cpu_processor(evidence.load(results_dir))


# --- mixed precision -----------------------------------------------------------------------------------------------

def precision_groups(results_dir=None) -> dict:
    """Complete runs of the paper's LeNet-5 (one process, fast path) by device and precision, of any length."""
    groups = {}
    for record in _train_records(results_dir):
        for device in ("cpu", "cuda"):
            if evidence.is_future_work_base(record, device):
                groups.setdefault((device, record["config"]["amp"]), []).append(record)
    cpu = cpu_processor(results_dir)
    return {key: evidence.on_processor(runs, cpu) if key[0] == "cpu" else evidence.on_machine(runs, None) for key, runs in groups.items()}


def compared_epoch(groups: dict, device: str = "cpu") -> int:
    """The epoch at which the precisions are compared: the shortest mixed-precision run's last (20 without one).
    A run of E epochs follows the same lr schedule as the first E epochs of a 20-epoch run, so its accuracy
    after E epochs is compared with the 20-epoch runs' accuracy after their epoch E, seed for seed."""
    lengths = [len(r["epochs"]) for (d, mode), runs in groups.items() if d == device and mode != "off" for r in runs]
    return min(lengths) if lengths else 20


def _accuracy_at(record: dict, epoch: int) -> float | None:
    return record["epochs"][epoch - 1]["test_accuracy"] if len(record["epochs"]) >= epoch else None


def precision_rows(results_dir=None) -> list[dict]:
    groups = precision_groups(results_dir)
    rows = []
    for device in ("cpu", "cuda"):
        epoch = compared_epoch(groups, device)
        for mode in ("off", "bf16", "fp16"):
            if device == "cpu" and mode == "fp16":
                continue  # float16 runs on CUDA only (hdr_lib.train refuses it on the CPU)
            runs = [r for r in groups.get((device, mode), []) if len(r["epochs"]) >= epoch]
            rows.append({"device": device, "amp": mode, "runs": runs, "epoch": epoch,
                         # one accuracy per seed (a rerun is a timing sample); every run's time
                         "accuracy": stats.summarize([_accuracy_at(r, epoch) for r in evidence.one_per_seed(runs)]),
                         "seconds_per_epoch": stats.summarize([seconds_per_epoch(r) for r in runs]),
                         "step": (runs[0]["execution"].get("amp_step") or runs[0]["execution"].get("cpu_step")
                                  if runs else None)})
    return rows


def precision_markdown(results_dir=None) -> str:
    """Accuracy and seconds per epoch by precision, CPU and GPU, with the bfloat16-float32 difference seed for seed."""
    rows = precision_rows(results_dir)
    names = {"off": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast + gradient scaler"}
    lines = ["| device | precision | seeds | compared after epoch | test accuracy, mean [95 % CI] | seed range | "
             "s / epoch, mean [95 % CI] |", "| --- | --- | ---: | ---: | --- | --- | --- |"]
    for row in rows:
        acc, sec = row["accuracy"], row["seconds_per_epoch"]
        spread = f"{acc['min']:.2f}-{acc['max']:.2f} %" if acc["n"] else NO_RECORD
        lines.append(f"| {row['device']} | {names[row['amp']]} | {acc['n']} | {row['epoch']} | "
                     f"{_fmt_summary(acc, 2, ' %')} | {spread} | {_fmt_summary(sec, 2, ' s')} |")
    return "\n".join(lines)


def precision_comparison(results_dir=None) -> dict | None:
    """bfloat16 against float32 on the CPU, seed for seed after the epoch both reached: the accuracy difference's
    summary, the float32 seeds' SD and the ratio of the mean times per epoch; None without runs of both."""
    by = {(r["device"], r["amp"]): r for r in precision_rows(results_dir)}
    f32, b16 = by[("cpu", "off")], by[("cpu", "bf16")]
    if not (f32["runs"] and b16["runs"]):
        return None
    epoch = b16["epoch"]
    base = {r["config"]["seed"]: _accuracy_at(r, epoch) for r in evidence.one_per_seed(f32["runs"])}
    return {"epoch": epoch, "sd": f32["accuracy"]["std"],
            "difference": stats.summarize([_accuracy_at(r, epoch) - base[r["config"]["seed"]]
                                           for r in evidence.one_per_seed(b16["runs"])
                                           if r["config"]["seed"] in base]),
            "time_ratio": b16["seconds_per_epoch"]["mean"] / f32["seconds_per_epoch"]["mean"]}


def precision_steps_note(results_dir=None) -> str:
    """Which step the CPU rows of the precision table ran (from the records' `execution.cpu_step`): where float32
    and bfloat16 ran different code, part of the gap between them is the code, not the precision."""
    rows = {r["amp"]: r for r in precision_rows(results_dir) if r["device"] == "cpu"}
    steps = {mode: sorted({queries.step_key(r, "cpu") or "?" for r in rows[mode]["runs"]}) for mode in ("off", "bf16")}
    if not (steps["off"] and steps["bf16"]):
        return f"Which step each precision ran on the CPU: {NOT_MEASURED}."
    said = {mode: " and ".join(f"`{key}` ({CPU_STEPS.get(key, 'unknown')})" for key in keys)
            for mode, keys in steps.items()}
    same = steps["off"] == steps["bf16"]
    return (f"The float32 runs above ran the fast path's {said['off']} step; the bfloat16 runs ran "
            f"{said['bf16']}. "
            + ("Both ran the same step, so the gap is the precision's." if same else
               "They ran different code, so part of the gap is the step's code, not the precision."))


def cpu_flags_markdown(results_dir=None) -> str:
    """The CPU's instruction sets for reduced precision, as the bfloat16 records hold them."""
    runs = precision_groups(results_dir).get(("cpu", "bf16"), [])
    ab = amp_ab(results_dir)
    runs = runs + ([ab] if ab is not None else [])  # the A/B record ran bfloat16 on the CPU too
    runs = [r for r in runs if r["environment"].get("cpu_flags")]
    flags = runs[0]["environment"]["cpu_flags"] if runs else None
    if not flags:
        return f"The CPU's instruction sets for bfloat16: {NOT_MEASURED} (no bfloat16 record holds them)."
    env = runs[0]["environment"]
    have = ", ".join(k for k, v in flags.items() if v) or "none of them"
    lack = ", ".join(k for k, v in flags.items() if not v) or "none"
    bf16_native = flags.get("avx512_bf16") or flags.get("amx_bf16")
    return (f"The bfloat16 records' CPU, {env['cpu']}, has {have}; it lacks {lack}. ATen dispatches its widest "
            f"vector code as {env.get('cpu_capability', 'unknown')}. "
            + ("It computes in bfloat16 natively." if bf16_native else
               "Without AVX512_BF16 or AMX-BF16 no instruction computes in bfloat16: every bfloat16 operand is "
               "widened to float32 for the arithmetic and rounded back after it, so bfloat16 adds conversions "
               "and saves no arithmetic."))


def amp_ab(results_dir=None) -> dict | None:
    """The A/B record of scripts/ab_amp_cpu.py (float32 against bfloat16, one step at a time), if there is one."""
    path = queries.results_folder(results_dir) / "ab-amp-cpu.json"
    return json.loads(path.read_text()) if path.is_file() else None


def amp_ab_markdown(results_dir=None) -> str:
    record = amp_ab(results_dir)
    if record is None:
        return f"Step times of float32 against bfloat16 on the same code: {NOT_MEASURED} (scripts/ab_amp_cpu.py)."
    lines = ["| step | float32, ms / step | bfloat16, ms / step | bfloat16 / float32 |", "| --- | ---: | ---: | ---: |"]
    for name, way in record["ways"].items():
        f32, b16 = way["float32"]["median_ms"], way["bfloat16"]["median_ms"]
        lines.append(f"| {name} | {f32:.2f} | {b16:.2f} | {b16 / f32:.2f}x |")
    text = "\n".join(lines)
    ops = record.get("top_ops")
    if ops:
        text += ("\n\nWhere one step's time goes (module with autograd, torch.profiler, self CPU time per step):\n\n"
                 "| operator | float32, ms | bfloat16, ms |\n| --- | ---: | ---: |\n")
        text += "\n".join(f"| `{name}` | {v.get('float32', 0):.2f} | {v.get('bfloat16', 0):.2f} |"
                          for name, v in ops.items())
    slow = [name for name, v in (ops or {}).items() if "slow_conv2d" in name and v.get("bfloat16", 0) > 0
            and not v.get("float32")]
    if slow:
        text += (f"\n\nIn bfloat16 the convolutions ran as {', '.join(f'`{n}`' for n in slow)}, PyTorch's generic "
                 "implementation, which float32 never used here: the oneDNN convolutions that float32 ran were not used for "
                 "bfloat16 on this CPU.")
    return text


# --- data parallelism ----------------------------------------------------------------------------------------------

def gradient_bytes() -> dict:
    """What one all-reduce carries a step: LeNet-5's float32 gradients."""
    n = count_parameters(LeNet5())
    return {"elements": n, "bytes": 4 * n, "kilobytes": 4 * n / 1000}


def ddp_rows(results_dir=None) -> list[dict]:
    """CPU runs of the paper's configuration under torchrun, one row per timing session and world size, on the
    chapter's processor (`cpu_processor`): the time from every epoch of complete runs and of runs stopped by
    max_steps, the accuracy from complete 20-epoch runs, beside the plain one-process fast runs of the same seeds
    on the same processor. Sessions are kept apart: a loaded session's times are not pooled with a quiet one's."""
    records = [r for r in _train_records(results_dir, status=None)
               if r["status"] == "complete" or (r.get("max_steps") is not None and r["epochs"])]
    cpu = cpu_processor(results_dir)
    plain = {r["config"]["seed"]: r for r in evidence.on_processor([r for r in records if evidence.is_future_work_base(r, "cpu") and r["config"]["amp"] == "off"
                                                        and r["status"] == "complete" and r["config"]["epochs"] == 20],
                                                       cpu)}
    groups = {}
    for r in records:  # a rank's threads differ with the world size: the processor alone says "same machine"
        config = r["config"]
        if (world_size(r) is not None and config["device"] == "cpu" and (cpu is None or processor(r) == cpu)
                and model_name(r) == "lenet5" and r["config"]["amp"] == "off"
                and config["epochs"] == 20 and r["deviations_from_paper"] == {}
                and r["execution"].get("steps_per_epoch") == 938):
            key = (session_of(r), world_size(r), r["distributed"].get("threads_per_rank"), queries.step_key(r, "cpu"))
            groups.setdefault(key, []).append(r)
    rows = []
    for (session, world, _threads, _step), runs in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        steps = [sum(e["steps"] for e in r["epochs"]) for r in runs]
        comm = [r["distributed"]["communication_seconds"] for r in runs]
        train = [r["total_train_seconds"] for r in runs]
        done = [r for r in runs if r["status"] == "complete"]
        rows.append({
            "session": session, "world_size": world, "threads_per_rank": runs[0]["distributed"]["threads_per_rank"],
            "runs": runs, "step": queries.step_key(runs[0], "cpu"),
            "seconds_per_epoch": stats.summarize([seconds_per_epoch(r) for r in runs]),
            "accuracy": stats.summarize([r["test_accuracy"] for r in done]),
            "epochs_timed": sum(len(r["epochs"]) for r in runs),
            "comm_share": stats.summarize([c / t for c, t in zip(comm, train)]),
            "allreduce_ms": stats.summarize([1000 * c / s for c, s in zip(comm, steps)]),
            "compute_ms": stats.summarize([1000 * (t - c) / s for c, t, s in zip(comm, train, steps)]),
            "plain_accuracy": {r["config"]["seed"]: plain[r["config"]["seed"]]["test_accuracy"]
                               for r in done if r["config"]["seed"] in plain},
        })
    return rows


def ddp_markdown(results_dir=None) -> str:
    rows = ddp_rows(results_dir)
    g = gradient_bytes()
    head = (f"Each step all-reduces {g['elements']:,} float32 gradients ({g['kilobytes']:.1f} kB) and the loss. ")
    if not rows:
        return head + f"1 process x 2 threads against 2 processes x 1 thread on the CPU: {NOT_MEASURED}."
    lines = ["| session | processes x threads | step | runs (epochs timed) | s / epoch [95 % CI] | all-reduce, ms / step "
             "| rest of a step, ms | all-reduce's share of training | accuracy | one plain process, same seeds |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    number = {session: i + 1 for i, session in enumerate(sorted({str(row["session"]) for row in rows}))}
    for row in rows:
        plain = ", ".join(f"{v:.2f} %" for _, v in sorted(row["plain_accuracy"].items())) or NO_RECORD
        done = sorted((r for r in row["runs"] if r["status"] == "complete"), key=lambda r: r["config"]["seed"])
        accs = ", ".join(f"{r['test_accuracy']:.2f} % (seed {r['config']['seed']})" for r in done) or (
            "stopped by max_steps (timing only)")
        lines.append(f"| {number[str(row['session'])]} | {row['world_size']} x {row['threads_per_rank']} | {row['step'] or '-'} | "
                     f"{len(row['runs'])} ({row['epochs_timed']}) | "
                     f"{_fmt_summary(row['seconds_per_epoch'], 2, ' s')} | {row['allreduce_ms']['mean']:.3f} | "
                     f"{row['compute_ms']['mean']:.3f} | {100 * row['comm_share']['mean']:.1f} % | {accs} | {plain} |")
    return head + "\n\n" + "\n".join(lines)


def ddp_compared(results_dir=None) -> tuple[dict | None, dict | None]:
    """The rows the verdict compares: 2 processes and 1 process of one session (the latest that has both), else
    the latest session's 2-process row alone."""
    rows = ddp_rows(results_dir)
    by = {(row["session"], row["world_size"]): row for row in rows}
    def newest(row: dict) -> str:
        return max(str(r["environment"].get("created_at", "")) for r in row["runs"])

    both = [s for s, w in by if w == 2 and (s, 1) in by]
    if both:
        latest = max(both, key=lambda s: max(newest(by[(s, 1)]), newest(by[(s, 2)])))
        return by[(latest, 2)], by[(latest, 1)]
    two = [row for row in rows if row["world_size"] == 2]
    return (max(two, key=newest) if two else None), None


# --- a deeper network ----------------------------------------------------------------------------------------------

def network_rows(results_dir=None, matmul_gflops: float | None = None) -> list[dict]:
    """Seconds per epoch against FLOPs per epoch for LeNet-5 (fast and reference paths) and the residual network on
    the CPU (and CUDA where recorded), with the sustained rate and its share of the matrix product's. The CPU rows
    and the matrix product are of one processor (`cpu_processor`)."""
    records = _train_records(results_dir, status=None)
    cpu = cpu_processor(results_dir)
    if matmul_gflops is None:
        matmul_gflops = cpu_matmul_gflops(results_dir, cpu)
    flops = {"lenet5": training_flops(model="lenet5")["train_flops_per_epoch"],
             "resnet": training_flops(model="resnet")["train_flops_per_epoch"]}
    params = {"lenet5": count_parameters(LeNet5()), "resnet": count_parameters(ResNet())}
    rows = []
    for device in ("cpu", "cuda"):
        for model, path in (("lenet5", "fast"), ("lenet5", "reference"), ("resnet", "fast"), ("resnet", "reference")):
            runs = [r for r in records if r["config"]["device"] == device and r["config"]["path"] == path
                    and model_name(r) == model and r["config"]["amp"] == "off" and world_size(r) is None
                    and is_default_way(r) and r["epochs"]
                    and (r["status"] == "complete" or r.get("max_steps") is not None)
                    and set(r["deviations_from_paper"]) <= {"model", "epochs"}]
            runs = evidence.on_processor(runs, cpu) if device == "cpu" else evidence.on_machine(runs, None)
            if not runs and (model, path) in (("lenet5", "reference"), ("resnet", "reference")):
                continue  # shown where measured only
            per_epoch = [sum(e["train_seconds"] for e in r["epochs"]) / sum(e["steps"] for e in r["epochs"])
                         * r["execution"]["steps_per_epoch"] for r in runs]
            s = stats.summarize(per_epoch)
            gflops = flops[model] / s["mean"] / 1e9 if s["n"] else None
            rows.append({"device": device, "model": model, "path": path, "runs": runs, "seconds_per_epoch": s,
                         "parameters": params[model], "train_flops_per_epoch": flops[model], "gflops": gflops,
                         "share_of_matmul": gflops / matmul_gflops if gflops and matmul_gflops and device == "cpu"
                         else None,
                         "steps_timed": sum(sum(e["steps"] for e in r["epochs"]) for r in runs),
                         "seeds": len({r["config"]["seed"] for r in runs}),
                         "epochs": sorted({r["config"]["epochs"] for r in runs})})
    return rows


def cpu_matmul_gflops(results_dir=None, cpu: str | None = None) -> float | None:
    """The CPU's float32 matrix-product rate (hdr_lib.measure.ceiling) from the newest CPU benchmark record of
    processor `cpu` (of any processor without one) that measured it; None if there is none."""
    benches = [b for b in queries.recorded(results_dir, "bench", device="cpu")
               if (b.get("ceiling") or {}).get("matmul") and (cpu is None or processor(b) == cpu)]
    if not benches:
        return None
    newest = max(benches, key=lambda b: str(b.get("environment", {}).get("created_at", "")))
    return newest["ceiling"]["matmul"]["gflops"]


def network_markdown(results_dir=None) -> str:
    matmul = cpu_matmul_gflops(results_dir, cpu_processor(results_dir))
    rows = network_rows(results_dir, matmul)
    lines = ["| device | network | path | parameters | training GFLOP / epoch | seeds | s / epoch | sustained GFLOP/s "
             "| share of the matrix product |", "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        s = row["seconds_per_epoch"]
        share = f"{100 * row['share_of_matmul']:.1f} %" if row["share_of_matmul"] else (
            NO_RECORD if row["device"] == "cuda" else "-")
        lines.append(f"| {row['device']} | {row['model']} | {row['path']} | {row['parameters']:,} | "
                     f"{row['train_flops_per_epoch'] / 1e9:,.0f} | {row['seeds']} | {_fmt_summary(s, 1, ' s')} | "
                     f"{row['gflops']:.1f} |" if s["n"] else
                     f"| {row['device']} | {row['model']} | {row['path']} | {row['parameters']:,} | "
                     f"{row['train_flops_per_epoch'] / 1e9:,.0f} | 0 | {NO_RECORD} | {NO_RECORD} |")
        if s["n"]:
            lines[-1] += f" {share} |"
        else:
            lines[-1] += f" {NO_RECORD} |"
    text = "\n".join(lines)
    text += (f"\n\nThe CPU's float32 matrix product (`torch.mm`, 1024 x 1024, from the benchmark record): "
             f"{matmul:.0f} GFLOP/s." if matmul else f"\n\nThe CPU's matrix-product rate: {NOT_MEASURED}.")
    partial = [row for row in rows if any(r["status"] != "complete" for r in row["runs"])]
    for row in partial:
        text += (f" The {row['model']} {row['path']} row is timed from {row['steps_timed']} steps (runs stopped by "
                 f"max_steps), scaled to {row['runs'][0]['execution']['steps_per_epoch']} steps an epoch.")
    for row in rows:
        done = sorted((r for r in row["runs"] if r["status"] == "complete"), key=lambda r: r["config"]["seed"])
        if row["model"] == "resnet" and done:
            accs = ", ".join(f"{r['test_accuracy']:.2f} % (seed {r['config']['seed']})" for r in done)
            why = (": a row here compares time per epoch, which whole epochs give, and a few epochs on this CPU keep "
                   "each seed to minutes" if row["device"] == "cpu" else "")
            text += (f" The residual network's {row['device'].upper()} runs are "
                     f"{' or '.join(str(e) for e in row['epochs'])} epochs long, not the paper's 20{why}; their test "
                     f"accuracy after the last epoch: {accs}.")
    return text
