"""hdr_lib.book.chapter without a kernel: parameter checks, the shared cached run, and 'not yet measured'."""

import math
from pathlib import Path

import pytest

from hdr_lib.book import chapter as nb
from hdr_lib.config import ConfigError, PAPER


def test_check_parameters_defaults_are_the_paper():
    assert nb.check_parameters(needs_data=False) == PAPER


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "parameter epochs must be an integer from 1 to 1,000"),
    ({"epochs": 2.5}, "parameter epochs must be an integer"),
    ({"batch_size": "64"}, "batch_size must be a number, got '64'"),
    ({"lr": math.inf}, "parameter lr must be a number greater than 0"),
    ({"seed": True}, "seed must be a number"),
    ({"device": None}, "device must be 'cpu', 'cuda' or 'auto'"),
    ({"bench_steps": 0}, "parameter bench_steps must be an integer from 1 to 100,000"),
])
def test_check_parameters_rejects_nonsense(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        nb.check_parameters(needs_data=False, **kwargs)


def test_check_parameters_accepts_whole_floats():
    assert nb.check_parameters(epochs=3.0, needs_data=False).epochs == 3


def test_no_records_reads_not_yet_measured(tmp_path):
    assert nb.recorded_runs(tmp_path / "missing") == []
    assert "not yet measured" in nb.cuda_statement(tmp_path)


@pytest.mark.slow  # trains on the real MNIST
def test_cached_run_trains_once_and_then_reuses(tmp_path, monkeypatch, data_root):
    import hdr_lib.train

    config = PAPER.replace(device="cpu", epochs=1, batch_size=6000)
    first, _ = nb.cached_run(config, tmp_path, verbose=False)
    monkeypatch.setattr(hdr_lib.train, "train", lambda *a, **k: pytest.fail("trained again"))
    again, model = nb.cached_run(config, tmp_path, verbose=False)
    assert again["environment"]["created_at"] == first["environment"]["created_at"]
    assert again["test_accuracy"] == first["test_accuracy"]
    assert Path(again["_path"]).with_suffix(".pt").is_file()
    monkeypatch.undo()
    other, _ = nb.cached_run(config.replace(seed=1), tmp_path, verbose=False)  # another config trains anew
    assert other["config"]["seed"] == 1 and len(list(tmp_path.glob("*.json"))) == 2


def _cuda_record(kernels, steps, compiled=False, seconds=1.0, seed=0):
    from hdr_lib.measure.records import SCHEMA
    from hdr_lib.train import CUDA_KERNELS

    return {"schema": SCHEMA, "kind": "train", "status": "complete",
            "config": {**PAPER.as_dict(), "device": "cuda", "path": "fast", "seed": seed, "compile": compiled},
            "deviations_from_paper": {}, "environment": {"gpu": {"name": "Test GPU"}}, "epochs": [{"epoch": 1}],
            "total_train_seconds": seconds, "test_accuracy": 99.0, "setup_seconds": {"to_device": 0.5, "compile": 2.0},
            "execution": {"cuda_kernels": CUDA_KERNELS[kernels], "compiled": compiled, "cuda_steps": steps}}


def test_cuda_ways_group_runs_by_how_the_step_ran(tmp_path):
    import json

    assert nb.cuda_ways_markdown(tmp_path).startswith("**not yet measured:**")
    epoch = {"graph-epoch": 18760, "graph-step": 0, "eager": 0}
    for i, record in enumerate([_cuda_record("triton", epoch, seconds=0.5), _cuda_record("triton", epoch, seconds=0.7),
                                _cuda_record("aten", epoch, seconds=2.0),
                                _cuda_record("aten", epoch, compiled=True, seconds=1.5),
                                _cuda_record("aten", {"graph-epoch": 0, "graph-step": 0, "eager": 18760}, seconds=9)]):
        (tmp_path / f"{i}.json").write_text(json.dumps(record))
    rows = {row["way"]: row for row in nb.cuda_ways(tmp_path)}
    assert sorted(rows) == ["PyTorch's kernels, compiled; graph-epoch", "PyTorch's kernels; eager",
                            "PyTorch's kernels; graph-epoch", "Triton step; graph-epoch"]
    assert rows["Triton step; graph-epoch"]["seconds"] == [0.5, 0.7]
    assert rows["Triton step; graph-epoch"]["setup_seconds"] == [2.5, 2.5]
    table = nb.cuda_ways_markdown(tmp_path)
    assert table.count("\n") == 5 and "| Triton step; graph-epoch | Test GPU | 2 | 0.60 s | 2.5 s | 99.00 % |" in table


def test_kernel_times_are_tabled_per_record_or_said_to_be_missing(tmp_path):
    import json

    from hdr_lib.measure.records import SCHEMA

    assert nb.kernel_times_markdown(tmp_path).startswith("**not yet measured:** no timing of the Triton step's")
    times = {"sample_kernel, 8 warps": {"median": 30.04, "min": 29.5, "max": 31.0},
             "whole step (both, as trained)": {"median": 40.0, "min": 39.0, "max": 41.26}}
    record = {"schema": SCHEMA, "kind": "kernel-times", "status": "complete",
              "config": {**PAPER.as_dict(), "device": "cuda", "path": "fast", "epochs": 0},
              "environment": {"gpu": {"name": "Test GPU"}, "torch": "2.11.0", "created_at": "2026-11-25T00:00:00",
                              "git_commit": "0123456789abcdef"},
              "epochs": [], "microseconds_per_launch": times, "projected_steps": 18760,
              "projected_seconds_20_epochs": 0.7504}
    (tmp_path / "kernel-times-cuda.json").write_text(json.dumps(record))
    (tmp_path / "train.json").write_text(json.dumps(_cuda_record("triton", {"graph-epoch": 18760})))
    table = nb.kernel_times_markdown(tmp_path)
    assert table.startswith("Test GPU, torch 2.11.0, 2026-11-25, seed 0, commit 0123456789ab:")
    assert "| sample_kernel, 8 warps | 30.0 µs | 29.5 µs | 31.0 µs |" in table
    assert "| whole step (both, as trained) | 40.0 µs | 39.0 µs | 41.3 µs |" in table
    assert table.endswith("20 epochs of such steps (18,760, kernels only): 0.75 s.")


def test_ceiling_table_gives_each_way_its_share_of_the_matrix_product(tmp_path):
    import json

    from hdr_lib.measure.records import SCHEMA

    assert nb.ceiling_markdown(tmp_path).startswith("**not yet measured:** no benchmark record under")
    record = {"schema": SCHEMA, "kind": "bench", "status": "complete",
              "config": {**PAPER.as_dict(), "device": "cpu", "path": "both", "epochs": 1},
              "environment": {"cpu": "Test CPU", "threads": 2, "torch": "2.14.1", "created_at": "2026-11-26T00:00:00",
                              "git_commit": "0123456789abcdef"},
              "epochs": [], "runs": {}, "summary": {},
              "ceiling": {"matmul": {"n": 1024, "trials": 3, "gflops": 150.0, "gflops_per_round": [140.2, 150.0, 171.0]},
                          "train_flops_per_epoch": 1.0e11,
                          "gflops": {"reference": 12.34, "fast": 90.0},
                          "fraction_of_matmul": {"reference": 12.34 / 150.0, "fast": 0.6}}}
    (tmp_path / "bench-cpu.json").write_text(json.dumps(record))
    old = {**record, "environment": {**record["environment"], "cpu": "Old CPU"}}
    del old["ceiling"]
    (tmp_path / "bench-old.json").write_text(json.dumps(old))
    text = nb.ceiling_markdown(tmp_path)
    assert ("Test CPU (2 threads), torch 2.14.1, 2026-11-26, seed 0, commit 0123456789ab: a 1024 x 1024 float32 "
            "matrix product (`torch.mm`) runs at **150 GFLOP/s** (the median of 3 rounds, 140 to 171; each round's "
            "the best of 3 trials).") in text
    assert "| reference | 12.3 | 8.2 % |" in text and "| fast | 90.0 | 60.0 % |" in text
    assert "Old CPU (2 threads), torch 2.14.1, 2026-11-26, seed 0, commit 0123456789ab: this record has no " in text
