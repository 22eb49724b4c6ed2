"""hdr_lib.book.tables: the chapters' tables and lines, from hdr_lib.paper and the records; "not yet measured" where
the records hold nothing."""

from __future__ import annotations

import json

import pytest

from hdr_lib import paper
from hdr_lib.book import tables
from hdr_lib.config import PAPER
from hdr_lib.measure.queries import NOT_MEASURED
from hdr_lib.measure.records import SCHEMA, RecordError

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


def test_the_paper_claims_table_shows_every_number_of_hdr_lib_paper():
    table = tables.paper_claims_markdown()
    for number in (paper.CPU_SECONDS, paper.GPU_SECONDS, paper.SPEEDUP, paper.CPU_ACCURACY, paper.GPU_ACCURACY,
                   paper.GPU_UTILISATION, paper.GPU_MEMORY_GB, paper.GPU.memory_gb):
        assert f"{number:g}" in table
    assert paper.CPU.short in table and paper.GPU.short in table


def test_without_a_cuda_record_the_gpu_is_not_yet_measured(tmp_path):
    assert "No GPU run is recorded yet" in tables.cuda_statement(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(cuda_run("triton", 1.0)))
    assert "No GPU run" not in tables.cuda_statement(tmp_path) and "Test GPU" in tables.cuda_statement(tmp_path)


def test_cuda_ways_table_has_a_row_per_way_with_its_means(tmp_path):
    assert tables.cuda_ways_markdown(tmp_path).startswith(f"**{NOT_MEASURED}:**")
    for i, (kernels, seconds) in enumerate([("triton", 0.5), ("triton", 0.7), ("aten", 2.0)]):
        (tmp_path / f"{i}.json").write_text(json.dumps(cuda_run(kernels, seconds)))
    table = tables.cuda_ways_markdown(tmp_path)
    assert table.count("\n") == 3  # header, rule, two ways
    assert "| Triton step; graph-epoch | Test GPU (host Test CPU) | 2 | 0.60 s | 2.5 s | 99.00 % |" in table


def test_kernel_times_are_tabled_per_record_or_said_to_be_missing(tmp_path):
    assert tables.kernel_times_markdown(tmp_path).startswith(f"**{NOT_MEASURED}:**")
    times = {"sample_kernel, 8 warps": {"median": 30.04, "min": 29.5, "max": 31.0},
             "whole step (both, as trained)": {"median": 40.0, "min": 39.0, "max": 41.26}}
    (tmp_path / "kernel-times-cuda.json").write_text(json.dumps(record(
        "kernel-times", microseconds_per_launch=times, projected_steps=18760, projected_seconds_20_epochs=0.7504)))
    (tmp_path / "train.json").write_text(json.dumps(cuda_run("triton", 1.0)))  # not a kernel timing: not tabled
    table = tables.kernel_times_markdown(tmp_path)
    assert table.count("| sample_kernel, 8 warps | 30.0 µs | 29.5 µs | 31.0 µs |") == 1
    assert "| whole step (both, as trained) | 40.0 µs | 39.0 µs | 41.3 µs |" in table
    assert "18,760" in table and "0.75 s" in table


def test_ceiling_table_gives_each_way_its_share_of_the_matrix_product(tmp_path):
    assert tables.ceiling_markdown(tmp_path).startswith(f"**{NOT_MEASURED}:**")
    ceiling = {"matmul": {"n": 1024, "trials": 3, "gflops": 150.0, "gflops_per_round": [140.2, 150.0, 171.0]},
               "gflops": {"reference": 12.34, "fast": 90.0}, "fraction_of_matmul": {"reference": 12.34 / 150.0,
                                                                                   "fast": 0.6}}
    (tmp_path / "bench-cpu.json").write_text(json.dumps(record("bench", "cpu", runs={}, summary={}, ceiling=ceiling)))
    text = tables.ceiling_markdown(tmp_path)
    assert "**150 GFLOP/s**" in text and "140 to 171" in text
    assert "| reference | 12.3 | 8.2 % |" in text and "| fast | 90.0 | 60.0 % |" in text
    (tmp_path / "bench-old.json").write_text(json.dumps(record("bench", "cpu", runs={}, summary={})))
    with pytest.raises(RecordError, match=r"bench-old\.json: field ceiling: missing"):  # named, not skipped
        tables.ceiling_markdown(tmp_path)


def test_memory_estimate_counts_weights_activations_and_the_data_set():
    estimate = tables.memory_estimate(batch_size=64)
    weights, activations, dataset = estimate.values()
    assert weights == 3 * 44_426 * 4
    assert dataset == (paper.TRAIN_IMAGES + paper.TEST_IMAGES) * paper.IMAGE_SIDE ** 2 * 4
    assert tables.memory_estimate(batch_size=128)[next(k for k in tables.memory_estimate(128) if "activations" in k)] \
        == 2 * activations


def test_memory_table_labels_its_columns_and_says_what_a_record_lacks():
    runs = [record("train", "cpu", memory={"peak_rss_bytes": 2**30}, utilisation={}),
            record("train", "cpu", memory={"peak_rss_bytes": 3 * 2**30}, utilisation={})]
    head, rule, row = tables.memory_markdown(runs).splitlines()
    assert head.startswith("| device | machine | runs | peak RSS, MiB | CPU utilisation") and "CUDA" not in head
    assert row.endswith("| 2 | 2,048 (1,024-3,072) | not recorded |")  # the median, its range; no CPU meter
