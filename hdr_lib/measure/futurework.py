"""Chapter 11's numbers (the paper's future work: mixed precision, data-parallel training and a deeper network),
as rows and summaries of the records in results/; nothing typed in by hand. The chapter words them."""

from __future__ import annotations

from hdr_lib.measure import stats
from hdr_lib.measure.flops import training_flops
from hdr_lib.model import ResNet, LeNet5, count_parameters
from hdr_lib.measure import queries
from hdr_lib.measure import evidence
from hdr_lib.measure.evidence import is_default_way, processor, session as session_of
from hdr_lib.measure.records import read_record



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


def precision_steps(results_dir=None) -> dict:
    """The CPU steps (`execution.cpu_step` keys) the float32 and the bfloat16 rows ran: where they differ, part of
    the gap between the precisions is the code, not the precision."""
    rows = {r["amp"]: r for r in precision_rows(results_dir) if r["device"] == "cpu"}
    return {mode: sorted({queries.step_key(r, "cpu") or "?" for r in rows[mode]["runs"]}) for mode in ("off", "bf16")}


def bf16_environment(results_dir=None) -> dict | None:
    """The `environment` of the first bfloat16 CPU record (the A/B record included) that holds the CPU's flags."""
    ab = amp_ab(results_dir)
    runs = precision_groups(results_dir).get(("cpu", "bf16"), []) + ([ab] if ab is not None else [])
    return next((r["environment"] for r in runs if r["environment"].get("cpu_flags")), None)


def amp_ab(results_dir=None) -> dict | None:
    """The A/B record of scripts/ab_amp_cpu.py (float32 against bfloat16, one step at a time), if there is one
    (results/ab-amp-cpu.json, checked as every record is)."""
    path = queries.results_folder(results_dir) / "ab-amp-cpu.json"
    return read_record(path) if path.is_file() else None


# --- mixed precision on a CPU that computes in bfloat16 ------------------------------------------------------------

BF16_UNITS = ("amx_bf16", "avx512_bf16")  # `environment.cpu_flags` of instructions that compute in bfloat16


def bf16_units(record: dict) -> list[str]:
    """The bfloat16 units (BF16_UNITS) of the record's CPU; [] where it has none or its flags are not recorded."""
    flags = record["environment"].get("cpu_flags") or {}
    return [name for name in BF16_UNITS if flags.get(name)]


def matrix_unit_rows(results_dir=None) -> list[dict]:
    """float32 against bfloat16 on each CPU machine with a bfloat16 unit (`bf16_units`) that ran bfloat16: complete
    runs of the paper's configuration but `amp` (one process, the default way), one row per machine, path and
    precision, a row with no runs included. Machines (`evidence.machine`) are never pooled; a machine's sessions are.
    `seconds` are every run's 20-epoch training times, `accuracy` one test accuracy per seed."""
    runs = [r for r in evidence.load(results_dir).table["record"]
            if any(evidence.is_future_work_base(r, "cpu", path) for path in evidence.PATHS) and bf16_units(r)]
    rows = []
    for name in sorted({evidence.machine(r) for r in runs if r["config"]["amp"] == "bf16"}):
        for path in evidence.PATHS:
            for mode in ("off", "bf16"):
                group = [r for r in runs if evidence.machine(r) == name and r["config"]["path"] == path
                         and r["config"]["amp"] == mode]
                rows.append({"machine": name, "path": path, "amp": mode, "runs": group,
                             "units": bf16_units(group[0]) if group else [],
                             "seeds": sorted({r["config"]["seed"] for r in group}),
                             "seconds": stats.summarize([r["total_train_seconds"] for r in group]),
                             "accuracy": stats.summarize([r["test_accuracy"] for r in evidence.one_per_seed(group)]),
                             # the fast path's step (`execution.cpu_step`); the reference path has one way
                             "steps": sorted({(queries.step_key(r, "cpu") if path == "fast" else None) or path
                                              for r in group})})
    return rows


def matrix_unit_comparison(results_dir=None) -> list[dict]:
    """Per machine and path of `matrix_unit_rows` with runs in both precisions: bfloat16's mean 20-epoch time over
    float32's (`time_ratio`); `time_spread`, the larger relative range (max - min) / mean of the two precisions'
    times, and `time`, "slower" or "faster" where the ratio lies further from 1 than that spread, else "same";
    the test accuracy's difference, bfloat16 minus float32 seed for seed, in points; and the steps each precision
    ran (the fast path's `queries.step_key`; "reference" for the reference path): where they differ, part of the
    gap is the code, not the precision."""
    by = {(r["machine"], r["path"], r["amp"]): r for r in matrix_unit_rows(results_dir)}
    out = []
    for (name, path, mode), b16 in by.items():
        f32 = by[(name, path, "off")]
        if mode != "bf16" or not (b16["runs"] and f32["runs"]):
            continue
        ratio = b16["seconds"]["mean"] / f32["seconds"]["mean"]
        acc32, acc16 = ({r["config"]["seed"]: r["test_accuracy"] for r in evidence.one_per_seed(row["runs"])}
                        for row in (f32, b16))
        spread = max((s["max"] - s["min"]) / s["mean"] for s in (f32["seconds"], b16["seconds"]))
        out.append({"machine": name, "path": path, "units": b16["units"], "time_ratio": ratio, "time_spread": spread,
                    "time": "same" if abs(ratio - 1) <= spread else ("slower" if ratio > 1 else "faster"),
                    "accuracy_difference": stats.summarize([acc16[seed] - acc32[seed] for seed in acc16
                                                            if seed in acc32]),
                    "seeds": {"off": f32["seeds"], "bf16": b16["seeds"]},
                    "steps": {"off": f32["steps"], "bf16": b16["steps"]}})
    return out


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


