"""Chapter 11's helpers: the precision, data-parallel and network tables from records, "not yet measured" where
there are none, and the options' validation."""

import copy
import json

import pytest

from hdr_lib.measure import futurework as fw
from hdr_lib.config import PAPER, TrainConfig
from hdr_lib.validation import ConfigError
from hdr_lib.measure.replicate import record_name
from hdr_lib.measure.records import RecordError

from conftest import REPO


def _record(seed, accuracy, seconds, **config):
    """A record shaped as hdr_lib.train writes it (keys the helpers read), from a real committed one."""
    base = json.loads((REPO / "results" / "cpu-fast-e20-b64-seed0.json").read_text())
    record = copy.deepcopy(base)
    record["config"].update(seed=seed, **config)
    record["environment"].pop("cpu_flags", None)  # a processor whose record names no vector instructions
    record["deviations_from_paper"] = {k: v for k, v in config.items() if k in ("amp", "model")}
    for e in record["epochs"]:
        e["train_seconds"] = seconds
    record["epochs"][-1]["test_accuracy"] = record["test_accuracy"] = accuracy
    record["total_train_seconds"] = seconds * len(record["epochs"])
    return record


def _write(folder, records):
    folder.mkdir(exist_ok=True)
    for i, r in enumerate(records):
        (folder / f"r{i}.json").write_text(json.dumps(r))


def test_empty_results_say_not_yet_measured(tmp_path):
    assert fw.ddp_rows(tmp_path) == [] and fw.amp_ab(tmp_path) is None  # chapter 11 says "not yet measured"
    assert all(r["accuracy"]["n"] == 0 and r["epoch"] == 20 for r in fw.precision_rows(tmp_path))
    assert all(r["seconds_per_epoch"]["n"] == 0 for r in fw.network_rows(tmp_path))
    assert fw.precision_comparison(tmp_path) is None and fw.bf16_environment(tmp_path) is None
    assert fw.gradient_bytes() == {"elements": 44_426, "bytes": 177_704, "kilobytes": 177.704}


def test_precision_table_compares_bfloat16_with_float32_seed_for_seed(tmp_path):
    f32 = [_record(s, a, 1.0, amp="off") for s, a in enumerate([99.0, 99.1, 99.2])]
    for r, first in zip(f32, [97.0, 97.2, 97.4]):
        r["epochs"][0]["test_accuracy"] = first
    b16 = []
    for s, a in enumerate([97.1, 97.2, 97.6]):  # one-epoch runs: compared with float32 after epoch 1
        r = _record(s, a, 4.0, amp="bf16", epochs=1)
        r["epochs"] = r["epochs"][:1]
        r["epochs"][0]["test_accuracy"] = a
        b16.append(r)
    _write(tmp_path, f32 + b16)
    rows = {(r["device"], r["amp"]): r for r in fw.precision_rows(tmp_path)}
    assert rows[("cpu", "off")]["epoch"] == 1 and rows[("cpu", "off")]["accuracy"]["mean"] == pytest.approx(97.2)
    assert rows[("cpu", "bf16")]["accuracy"]["n"] == 3 and rows[("cuda", "fp16")]["accuracy"]["n"] == 0
    c = fw.precision_comparison(tmp_path)
    assert c["epoch"] == 1 and c["difference"]["n"] == 3  # seed for seed
    assert c["difference"]["mean"] == pytest.approx(0.1)  # differences 0.1, 0.0, 0.2
    assert c["sd"] == pytest.approx(0.2) and c["time_ratio"] == pytest.approx(4.0)
    assert rows[("cuda", "fp16")]["epoch"] == 20 and not rows[("cuda", "fp16")]["runs"]


def test_ddp_rows_take_the_share_of_communication_from_the_records(tmp_path):
    runs = []
    for world, threads, comm in ((1, 2, 2.0), (2, 1, 5.0)):
        r = _record(0, 99.0, 1.5)
        r["distributed"] = {"world_size": world, "threads_per_rank": threads, "communication_seconds": comm}
        runs.append(r)
    _write(tmp_path, runs + [_record(0, 98.9, 1.0)])
    rows = {row["world_size"]: row for row in fw.ddp_rows(tmp_path)}
    steps = sum(e["steps"] for e in runs[1]["epochs"])
    assert rows[2]["comm_share"]["mean"] == pytest.approx(5.0 / 30.0)
    assert rows[2]["allreduce_ms"]["mean"] == pytest.approx(5000.0 / steps)
    assert rows[2]["plain_accuracy"] == {0: 98.9}
    two, one = fw.ddp_compared(tmp_path)
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert two["seconds_per_epoch"]["mean"] / one["seconds_per_epoch"]["mean"] == pytest.approx(1.0)


def test_amp_is_a_string_and_a_boolean_is_refused():
    with pytest.raises(ConfigError, match="amp must be one of off, bf16, fp16; got True"):
        TrainConfig(amp=True).validate()
    assert PAPER.replace(amp="fp16").validate().deviations() == {"amp": "fp16"}
    with pytest.raises(ConfigError, match="amp must be one of off, bf16, fp16"):
        PAPER.replace(amp="fp8").validate()
    with pytest.raises(ConfigError, match="model must be one of"):
        PAPER.replace(model="vgg").validate()
    assert record_name(PAPER.replace(amp="bf16", seed=3), "cpu") == "cpu-fast-e20-b64-bf16-seed3.json"
    assert record_name(PAPER.replace(model="resnet", epochs=2), "cpu", world_size=2) == "cpu-fast-e2-b64-resnet-ddp2-seed0.json"


def test_cpu_rows_are_of_the_processor_that_ran_the_future_work(tmp_path):
    avx2 = {"avx2": True, "avx512f": False}
    elsewhere = [_record(s, 99.0, 1.0) for s in range(3)]  # another VM, whose records name no vector instructions
    here = [_record(s, 99.1, 6.0) for s in range(2)]
    b16 = [_record(s, 99.2, 30.0, amp="bf16") for s in range(2)]
    one_thread = _record(2, 99.1, 12.0)  # the same processor with 1 thread: another time, not pooled
    one_thread["environment"]["threads"] = 1
    for r in here + b16 + [one_thread]:
        r["environment"]["cpu_flags"] = avx2
    bench = json.loads((REPO / "results" / "bench-cpu.json").read_text())
    bench["environment"].pop("cpu_flags", None)
    bench_here = copy.deepcopy(bench)
    bench_here["environment"]["cpu_flags"] = avx2
    bench_here["ceiling"]["matmul"]["gflops"] = 60.0
    _write(tmp_path, elsewhere + here + b16 + [one_thread, bench, bench_here])

    assert fw.cpu_processor(tmp_path) == "AMD EPYC, AVX2"
    rows = {(r["device"], r["amp"]): r for r in fw.precision_rows(tmp_path)}
    assert rows[("cpu", "off")]["accuracy"]["n"] == 2 and rows[("cpu", "off")]["seconds_per_epoch"]["mean"] == 6.0
    assert fw.precision_comparison(tmp_path)["time_ratio"] == pytest.approx(5.0)
    network = {(r["device"], r["model"], r["path"]): r for r in fw.network_rows(tmp_path)}
    lenet = network[("cpu", "lenet5", "fast")]
    assert lenet["seconds_per_epoch"]["n"] == 2 and lenet["gflops"] / lenet["share_of_matmul"] == pytest.approx(60.0)
    assert fw.cpu_matmul_gflops(tmp_path, "AMD EPYC, instructions not recorded") == bench["ceiling"]["matmul"]["gflops"]


def test_precision_steps_say_when_the_precisions_ran_different_code(tmp_path):
    f32 = _record(0, 99.0, 6.0)
    f32["execution"]["cpu_step"] = "explicit"
    b16 = _record(0, 99.1, 30.0, amp="bf16")
    b16["execution"]["cpu_step"] = "forward"
    _write(tmp_path, [f32, b16])
    assert fw.precision_steps(tmp_path) == {"off": ["explicit"], "bf16": ["forward"]}
    assert fw.precision_steps(tmp_path / "none") == {"off": [], "bf16": []}


def test_ddp_sessions_are_kept_apart_and_the_verdict_compares_within_one(tmp_path):
    runs = []
    for session, world, threads, seconds in (("quiet", 1, 2, 6.0), ("quiet", 2, 1, 9.0), ("loaded", 2, 1, 60.0)):
        r = _record(0, 99.0, seconds)
        r["environment"]["session"] = session
        r["distributed"] = {"world_size": world, "threads_per_rank": threads, "communication_seconds": 1.0}
        runs.append(r)
    _write(tmp_path, runs)
    rows = {(row["session"], row["world_size"]): row for row in fw.ddp_rows(tmp_path)}
    assert set(rows) == {("quiet", 1), ("quiet", 2), ("loaded", 2)}
    assert rows[("loaded", 2)]["seconds_per_epoch"]["mean"] == 60.0
    two, one = fw.ddp_compared(tmp_path)  # the session that ran both, not the loaded one
    assert two["session"] == one["session"] == "quiet"
    assert two["seconds_per_epoch"]["mean"] / one["seconds_per_epoch"]["mean"] == pytest.approx(1.5)


def test_a_cpu_with_a_bfloat16_unit_is_compared_apart_path_by_path_and_seed_for_seed(tmp_path):
    amx = {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True}
    f32 = _record(0, 99.05, 0.8)
    f32["execution"]["cpu_step"] = "native"
    b16 = [_record(s, a, 2.8, amp="bf16") for s, a in ((0, 99.17), (1, 99.02))]
    for r in b16:
        r["execution"]["cpu_step"] = "forward"
    ref32 = _record(0, 99.03, 5.0, path="reference")
    ref16 = [_record(s, a, t, amp="bf16", path="reference") for s, a, t in ((0, 99.12, 5.2), (1, 99.14, 4.6))]
    for r in [f32, *b16, ref32, *ref16]:
        r["environment"]["cpu_flags"] = amx
    epyc = [_record(0, 99.1, 6.0), _record(0, 99.1, 29.0, amp="bf16")]  # no bfloat16 unit recorded: never here
    _write(tmp_path, [f32, *b16, ref32, *ref16, *epyc])

    rows = {(r["path"], r["amp"]): r for r in fw.matrix_unit_rows(tmp_path)}
    assert {r["machine"] for r in fw.matrix_unit_rows(tmp_path)} == {"AMD EPYC, AVX-512 (2 threads)"}
    assert rows[("fast", "bf16")]["seeds"] == [0, 1] and rows[("fast", "off")]["seeds"] == [0]
    assert rows[("fast", "bf16")]["units"] == ["amx_bf16", "avx512_bf16"]
    assert rows[("fast", "bf16")]["seconds"]["mean"] == pytest.approx(56.0)  # 20 epochs of 2.8 s
    compared = {c["path"]: c for c in fw.matrix_unit_comparison(tmp_path)}
    fast, ref = compared["fast"], compared["reference"]
    assert fast["time_ratio"] == pytest.approx(3.5) and fast["time"] == "slower"
    assert fast["accuracy_difference"]["n"] == 1 and fast["accuracy_difference"]["mean"] == pytest.approx(0.12)
    assert fast["steps"] == {"off": ["native"], "bf16": ["forward"]}
    assert ref["time_ratio"] == pytest.approx(0.98) and ref["time"] == "same"  # inside the runs' own spread
    assert ref["steps"] == {"off": ["reference"], "bf16": ["reference"]}
    assert fw.matrix_unit_rows(tmp_path / "none") == [] and fw.matrix_unit_comparison(tmp_path / "none") == []


def test_the_amp_ab_record_is_checked_as_every_record_is(tmp_path):
    (tmp_path / "ab-amp-cpu.json").write_text('{"schema": "hdr-run/2", "kind": "ab-amp"}')
    with pytest.raises(RecordError, match="ab-amp-cpu.json: field"):
        fw.amp_ab(tmp_path)
