"""hdr_lib.book.tables: the chapters' tables and lines, from hdr_lib.paper and the records; "not yet measured" where
the records hold nothing."""

from __future__ import annotations

import json

import pytest

from hdr_lib import paper
from hdr_lib.book import tables
from hdr_lib.config import PAPER
from hdr_lib.measure import flops, queries
from hdr_lib.measure.records import SCHEMA, RecordError

from conftest import REPO

ENV = {"cpu": "Test CPU", "threads": 2, "gpu": {"name": "Test GPU"}, "torch": "2.14.1",
       "created_at": "2026-11-25T00:00:00", "git_commit": "0123456789abcdef", "session": "test-session"}


def record(kind, device="cuda", **fields):
    return {"schema": SCHEMA, "kind": kind, "status": "complete", "environment": ENV, "epochs": [],
            "config": {**PAPER.as_dict(), "framework": "pytorch", "device": device, "path": "fast", "epochs": 0},
            **fields}


def cuda_run(kernels, seconds):
    return record("train", "cuda", deviations_from_paper={}, epochs=[{"epoch": 1}], total_train_seconds=seconds,
                  test_accuracy=99.0, setup_seconds={"compile": 2.5},
                  execution={"cuda_kernels": kernels, "cuda_steps": {"graph-epoch": 18760}})


def test_chapter_01_tables_every_number_of_hdr_lib_paper():
    cells = json.loads((REPO / "notebooks" / "01_introduction.ipynb").read_text())["cells"]
    source = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for name in ("CPU_SECONDS", "GPU_SECONDS", "SPEEDUP", "CPU_ACCURACY", "GPU_ACCURACY", "GPU_UTILISATION",
                 "GPU_MEMORY_GB", "GPU.memory_gb", "CPU.short", "GPU.short"):
        assert f"paper.{name}" in source  # read from hdr_lib.paper, never typed in


def test_without_a_cuda_record_the_gpu_is_not_yet_measured(tmp_path):
    assert queries.recorded_runs(tmp_path, "cuda") == []  # the chapters: "No GPU run is recorded yet"
    (tmp_path / "run.json").write_text(json.dumps(cuda_run("triton", 1.0)))
    (run,) = queries.recorded_runs(tmp_path, "cuda")
    assert "Test GPU" in queries.machine(run)  # the chapters name the GPU of each recorded run


def test_cuda_ways_have_a_row_per_way_with_its_runs(tmp_path):
    assert queries.cuda_ways(tmp_path) == []  # chapter 09 says "not yet measured"
    for i, (kernels, seconds) in enumerate([("triton", 0.5), ("triton", 0.7), ("aten", 2.0)]):
        (tmp_path / f"{i}.json").write_text(json.dumps(cuda_run(kernels, seconds)))
    ways = {w["way"]: w for w in queries.cuda_ways(tmp_path)}
    assert len(ways) == 2  # two ways
    triton = ways["Triton step; graph-epoch"]
    assert triton["hardware"] == "Test GPU (host Test CPU)" and sorted(triton["seconds"]) == [0.5, 0.7]
    assert triton["setup_seconds"] == [2.5, 2.5] and triton["accuracy"] == [99.0, 99.0]


def test_kernel_times_are_read_from_their_own_records(tmp_path):
    assert queries.recorded(tmp_path, "kernel-times") == []
    times = {"sample_kernel, 8 warps": {"median": 30.04, "min": 29.5, "max": 31.0},
             "whole step (both, as trained)": {"median": 40.0, "min": 39.0, "max": 41.26}}
    (tmp_path / "kernel-times-cuda.json").write_text(json.dumps(record(
        "kernel-times", microseconds_per_launch=times, projected_steps=18760, projected_seconds_20_epochs=0.7504)))
    (tmp_path / "train.json").write_text(json.dumps(cuda_run("triton", 1.0)))  # not a kernel timing
    found = queries.recorded(tmp_path, "kernel-times")
    assert len(found) == 1 and found[0]["microseconds_per_launch"] == times
    assert found[0]["projected_steps"] == 18760


def test_a_bench_record_without_its_ceiling_is_named_not_skipped(tmp_path):
    assert queries.recorded(tmp_path, "bench") == []
    ceiling = {"matmul": {"n": 1024, "trials": 3, "gflops": 150.0, "gflops_per_round": [140.2, 150.0, 171.0]},
               "gflops": {"reference": 12.34, "fast": 90.0}, "fraction_of_matmul": {"reference": 12.34 / 150.0,
                                                                                   "fast": 0.6}}
    (tmp_path / "bench-cpu.json").write_text(json.dumps(record("bench", "cpu", runs={}, summary={}, ceiling=ceiling)))
    assert queries.recorded(tmp_path, "bench")[0]["ceiling"] == ceiling  # chapter 09 tables it
    (tmp_path / "bench-old.json").write_text(json.dumps(record("bench", "cpu", runs={}, summary={})))
    with pytest.raises(RecordError, match=r"bench-old\.json: field ceiling: missing"):
        queries.recorded(tmp_path, "bench")


def test_memory_estimate_counts_weights_activations_and_the_data_set():
    estimate = flops.memory_estimate(batch_size=64)
    weights, activations, dataset = estimate.values()
    assert weights == 3 * 44_426 * 4
    assert dataset == (paper.TRAIN_IMAGES + paper.TEST_IMAGES) * paper.IMAGE_SIDE ** 2 * 4
    assert flops.memory_estimate(batch_size=128)[next(k for k in flops.memory_estimate(128) if "activations" in k)] \
        == 2 * activations


def test_memory_table_labels_its_columns_and_says_what_a_record_lacks():
    runs = [record("train", "cpu", memory={"peak_rss_bytes": 2**30}, utilisation={}),
            record("train", "cpu", memory={"peak_rss_bytes": 3 * 2**30}, utilisation={})]
    head, rule, row = tables.memory_markdown(runs).splitlines()
    assert head.startswith("| device | machine | runs | peak RSS, MiB | CPU utilisation") and "CUDA" not in head
    assert row.endswith("| 2 | 2,048 (1,024-3,072) | not recorded |")  # the median, its range; no CPU meter
