"""hdr_lib.measure.queries: where the records are, which runs count, and what machine and step each ran on."""

from __future__ import annotations

import json

import pytest

from hdr_lib.config import PAPER
from hdr_lib.fast import CPU_STEPS, CUDA_KERNELS
from hdr_lib.measure import queries
from hdr_lib.measure.records import SCHEMA, RecordError
from tests.test_scorecard import make_record


def train_record(device="cpu", path="fast", seconds=10.0, seed=0, execution=None, **config):
    env = {"cpu": "Test CPU", "threads": 2, "torch": "2.14.1", "created_at": "2026-11-25T00:00:00",
           "git_commit": "0123456789abcdef", "session": "test-session", "gpu": {"name": "Test GPU", "cuda": "13.0"} if device == "cuda" else None}
    return {"schema": SCHEMA, "kind": "train", "status": "complete",
            "config": {**PAPER.as_dict(), "framework": "pytorch", "device": device, "path": path, "seed": seed, **config},
            "deviations_from_paper": {"epochs": 1} if config.get("epochs", 20) != 20 else {},
            "environment": env, "epochs": [{"epoch": 1}], "total_train_seconds": seconds, "test_accuracy": 99.0,
            "setup_seconds": {"to_device": 0.5, "compile": 2.0}, "execution": execution or {}}


def write(folder, records):
    folder.mkdir(exist_ok=True)
    for i, record in enumerate(records):
        (folder / f"{i}.json").write_text(json.dumps(record))
    return folder


def test_results_folder_is_the_given_one_else_the_environment_else_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(queries.RESULTS_ENV_VAR, raising=False)
    assert queries.results_folder() == queries.REPOSITORY / "results"
    monkeypatch.setenv(queries.RESULTS_ENV_VAR, str(tmp_path))
    assert queries.results_folder() == tmp_path
    assert queries.results_folder(tmp_path / "other") == tmp_path / "other"


def test_every_query_reads_the_folder_the_environment_names(tmp_path, monkeypatch):
    write(tmp_path, [train_record(seconds=12.0), train_record(epochs=1)])
    monkeypatch.setenv(queries.RESULTS_ENV_VAR, str(tmp_path))
    assert [r["total_train_seconds"] for r in queries.paper_runs()] == [12.0]  # the 1-epoch run deviates
    assert len(queries.recorded_runs()) == 2


def test_a_missing_folder_holds_no_runs_and_a_damaged_record_is_named(tmp_path):
    assert queries.paper_runs(tmp_path / "missing") == [] and queries.recorded_runs(tmp_path / "missing") == []
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RecordError, match="bad.json"):
        queries.paper_runs(tmp_path)


def test_paper_runs_filter_by_device_and_path(tmp_path):
    write(tmp_path, [train_record("cpu", "fast"), train_record("cpu", "reference"), train_record("cuda", "fast")])
    assert len(queries.paper_runs(tmp_path)) == 3
    assert [(r["config"]["device"], r["config"]["path"]) for r in queries.paper_runs(tmp_path, "cpu", "reference")] \
        == [("cpu", "reference")]


def test_machine_names_the_gpu_of_cuda_runs_and_the_cpu_else():
    assert queries.machine(train_record("cpu")) == "Test CPU, instructions not recorded (2 threads)"
    assert queries.machine(train_record("cuda")) == "Test GPU (host Test CPU)"
    assert "torch 2.14.1" in queries.machine(train_record("cpu"), versions=True)
    assert "CUDA 13.0" in queries.machine(train_record("cuda"), versions=True)
    assert queries.machines([train_record("cuda"), train_record("cuda", seed=1)]).count("Test GPU") == 1
    assert queries.machines([]) == "-"


@pytest.mark.parametrize("device, key", [("cpu", k) for k in CPU_STEPS] + [("cuda", k) for k in CUDA_KERNELS])
def test_step_key_reads_the_short_key(device, key):
    field = "cpu_step" if device == "cpu" else "cuda_kernels"
    assert queries.step_key(train_record(device, execution={field: key}), device) == key


def test_step_key_is_none_where_the_record_names_no_known_step():
    assert queries.step_key(train_record("cpu"), "cpu") is None


# What a CUDA record made before the short keys said in `execution.cuda_kernels` for the Triton step.
def test_cuda_ways_group_runs_by_how_the_step_ran(tmp_path):
    epoch, eager = {"graph-epoch": 18760, "graph-step": 0, "eager": 0}, {"graph-epoch": 0, "graph-step": 0, "eager": 9}

    def cuda(kernels, steps, seconds, compiled=False):
        return train_record("cuda", seconds=seconds, compile=compiled,
                            execution={"cuda_kernels": kernels, "compiled": compiled, "cuda_steps": steps})

    assert queries.cuda_ways(tmp_path) == []
    write(tmp_path, [cuda("triton", epoch, 0.5), cuda("triton", epoch, 0.7),
                     cuda("aten", epoch, 2.0), cuda("aten", epoch, 1.5, compiled=True), cuda("aten", eager, 9.0)])
    rows = {row["way"]: row for row in queries.cuda_ways(tmp_path)}
    assert sorted(rows) == ["PyTorch's kernels, compiled; graph-epoch", "PyTorch's kernels; eager",
                            "PyTorch's kernels; graph-epoch", "Triton step; graph-epoch"]
    assert rows["Triton step; graph-epoch"]["seconds"] == [0.5, 0.7]  # a key and an old sentence: one way
    assert rows["Triton step; graph-epoch"]["setup_seconds"] == [2.5, 2.5]


def test_a_bench_record_without_runs_is_named_not_skipped(tmp_path):
    record = {**train_record(), "kind": "bench"}
    write(tmp_path, [record])
    with pytest.raises(RecordError, match=r"0\.json: field runs: missing"):
        queries.bench_rows(tmp_path)


def test_provenance_names_machine_versions_seed_and_commit():
    line = queries.provenance(train_record("cpu", seed=3))
    for part in ("Test CPU, instructions not recorded (2 threads)", "torch 2.14.1", "2026-11-25", "seed 3", "0123456789ab"):
        assert part in line


def test_other_configurations_and_incomplete_runs_do_not_count(tmp_path):
    (tmp_path / "short.json").write_text(json.dumps(make_record(epochs=1)))
    incomplete = make_record()
    incomplete["status"] = "incomplete"
    (tmp_path / "cut.json").write_text(json.dumps(incomplete))
    assert queries.paper_runs(tmp_path) == []
    (tmp_path / "ok.json").write_text(json.dumps(make_record()))
    assert len(queries.paper_runs(tmp_path)) == 1


def test_runs_with_another_way_of_running_are_comparisons_not_the_headline(tmp_path):
    # compile, --no-triton and --no-cuda-graph change how a run goes, not the paper's configuration: such records
    # are kept beside the default ones (their names differ) but never pooled into the paper's numbers.
    def run(device, **how):
        record = make_record(device)
        record["config"].update(how)
        return record

    for i, (device, how) in enumerate([("cuda", {}), ("cuda", {"compile": True}), ("cuda", {"triton": False}),
                                       ("cuda", {"cuda_graph": False}), ("cpu", {}), ("cpu", {"compile": True}),
                                       ("cpu", {"triton": False, "cuda_graph": False})]):
        (tmp_path / f"{i}.json").write_text(json.dumps(run(device, **how)))
    kept = queries.paper_runs(tmp_path)
    assert sorted(r["_path"][-6:] for r in kept) == ["0.json", "4.json", "6.json"]  # CPU runs ignore the CUDA ones


def test_a_damaged_record_is_an_error_not_a_gap(tmp_path):
    (tmp_path / "bad.json").write_text('{"schema": "hdr-run/1", "config": {')
    with pytest.raises(RecordError, match="bad.json"):
        queries.paper_runs(tmp_path)


def test_machine_names_the_cpu_vector_instructions_where_the_record_has_them():
    record = train_record("cpu")
    record["environment"]["cpu_flags"] = {"avx2": True, "avx512f": False}
    assert queries.machine(record) == "Test CPU, AVX2 (2 threads)"
    record["environment"]["cpu_flags"] = {"avx2": True, "avx512f": True}
    assert queries.machine(record) == "Test CPU, AVX-512 (2 threads)"
