"""The scorecard's verdict rules on made-up records: each rule, and 'not yet measured' where data is missing."""

from __future__ import annotations

import json

import pytest

from hdr_lib import scorecard
from hdr_lib.config import PAPER
from hdr_lib.records import RecordError, SCHEMA
from hdr_lib.scorecard import NOT_MEASURED, NOT_REPRODUCED, REPRODUCED


def make_record(device="cpu", seconds=100.0, accuracy=99.0, util=None, mem_bytes=None, path="fast", **config):
    cfg = {**PAPER.as_dict(), "device": device, "path": path, **config}
    deviations = {k: v for k, v in config.items() if k not in ("seed",)}
    gpu = {"name": "Test GPU", "cuda": "12.0", "driver": "1", "cudnn": 9} if device == "cuda" else None
    return {"schema": SCHEMA, "kind": "train", "status": "complete", "config": cfg,
            "deviations_from_paper": deviations,
            "environment": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "gpu": gpu},
            "epochs": [{"epoch": 1}], "total_train_seconds": seconds, "test_accuracy": accuracy,
            "memory": {"cuda_peak_reserved_bytes": 50e6 if device == "cuda" else None},
            "utilisation": {"gpu": {"utilisation_mean_percent": util, "memory_used_max_bytes": mem_bytes,
                                    "reason": None if util is not None else "CPU run: no GPU"}}}


def verdicts(rows, path="fast"):
    return {r.claim.key: r.verdict for r in rows if r.path == path}


def test_no_records_means_nothing_measured():
    rows = scorecard.scorecard([])
    assert {r.verdict for r in rows} == {NOT_MEASURED}
    assert len(rows) == len(scorecard.CLAIMS)
    assert all(scorecard.format_measured(r) == NOT_MEASURED for r in rows)


def test_cpu_only_leaves_every_gpu_claim_not_yet_measured():
    rows = scorecard.scorecard([make_record(seconds=3000.0, accuracy=98.3)])
    v = verdicts(rows)
    assert v["cpu_time"] == REPRODUCED  # within a factor 2 of 3600 s
    assert v["cpu_accuracy"] == REPRODUCED  # within 0.3 pp of 98.2 %
    for key in ("gpu_time", "speedup", "gpu_accuracy", "accuracy_gap", "gpu_utilisation", "gpu_memory"):
        assert v[key] == NOT_MEASURED, key


def test_rules_on_a_full_set():
    records = [make_record("cpu", seconds=s, accuracy=a, seed=i) for i, (s, a) in
               enumerate([(90.0, 99.0), (92.0, 99.1), (91.0, 99.05)])]
    records += [make_record("cuda", seconds=s, accuracy=a, util=u, mem_bytes=0.6e9, seed=i) for i, (s, a, u) in
                enumerate([(5.0, 99.1, 60.0), (5.2, 99.0, 62.0), (5.1, 99.05, 61.0)])]
    v = verdicts(scorecard.scorecard(records))
    assert v["cpu_time"] == NOT_REPRODUCED  # 40x faster than 3600 s
    assert v["gpu_time"] == NOT_REPRODUCED  # 60x faster than 300 s
    assert v["speedup"] == REPRODUCED  # ~18x, lower bound above 12
    assert v["cpu_accuracy"] == NOT_REPRODUCED  # 0.85 pp above 98.2
    assert v["accuracy_gap"] == REPRODUCED
    assert v["gpu_utilisation"] == NOT_REPRODUCED  # 61 % is not above 90 %
    assert v["gpu_memory"] == NOT_REPRODUCED  # 0.6 GB is not around 6 GB


def test_speedup_uses_the_lower_end_of_its_interval():
    cpu = [make_record("cpu", seconds=s, seed=i) for i, s in enumerate([100.0, 160.0, 130.0])]
    gpu = [make_record("cuda", seconds=s, util=95.0, mem_bytes=6e9, seed=i) for i, s in enumerate([10.0, 10.5, 9.5])]
    rows = {r.claim.key: r for r in scorecard.scorecard(cpu + gpu)}
    speedup = rows["speedup"].measured
    assert speedup["mean"] == pytest.approx(13.0)
    assert speedup["ci95_low"] < 12 < speedup["mean"]
    assert rows["speedup"].verdict == NOT_REPRODUCED
    assert rows["gpu_utilisation"].verdict == REPRODUCED
    assert rows["gpu_memory"].verdict == REPRODUCED


def test_single_runs_use_the_point_value_and_show_no_interval():
    rows = {r.claim.key: r for r in scorecard.scorecard([make_record("cpu", seconds=120.0),
                                                         make_record("cuda", seconds=6.0)])}
    assert rows["speedup"].verdict == REPRODUCED  # 20x, one run each
    assert "CI" not in scorecard.format_measured(rows["cpu_time"])
    assert rows["gpu_utilisation"].verdict == NOT_MEASURED  # NVML gave nothing: never filled in


def test_other_configurations_and_incomplete_runs_do_not_count(tmp_path):
    (tmp_path / "short.json").write_text(json.dumps(make_record(epochs=1)))
    incomplete = make_record()
    incomplete["status"] = "incomplete"
    (tmp_path / "cut.json").write_text(json.dumps(incomplete))
    assert scorecard.paper_runs(tmp_path) == []
    (tmp_path / "ok.json").write_text(json.dumps(make_record()))
    assert len(scorecard.paper_runs(tmp_path)) == 1


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
    kept = scorecard.paper_runs(tmp_path)
    assert sorted(r["_path"][-6:] for r in kept) == ["0.json", "4.json", "6.json"]  # CPU runs ignore the CUDA ones
    assert verdicts(scorecard.scorecard([run("cuda")]))["gpu_time"] != NOT_MEASURED
    assert {r.verdict for r in scorecard.scorecard([run("cuda", compile=True)])} == {NOT_MEASURED}


def test_times_from_two_machines_are_not_pooled():
    # The GPU machine's own CPU run (scripts/gpu_replication.sh makes one) beside five runs of the book's CPU.
    other = make_record("cpu", seconds=30.0)
    other["environment"] = {**other["environment"], "cpu": "Other CPU", "threads": 16}
    rows = scorecard.scorecard([make_record("cpu", seconds=100.0 + i, seed=i) for i in range(5)] + [other])
    cpu_time = next(r for r in rows if r.claim.key == "cpu_time")
    assert cpu_time.measured["n"] == 5 and cpu_time.measured["mean"] == pytest.approx(102.0)
    assert "Other CPU" not in cpu_time.hardware


def test_paths_are_scored_apart():
    rows = scorecard.scorecard([make_record("cpu", path="fast"), make_record("cuda", path="reference")])
    assert {r.path for r in rows} == {"fast", "reference"}
    assert verdicts(rows, "fast")["speedup"] == NOT_MEASURED  # no GPU run on the fast path


def test_a_damaged_record_is_an_error_not_a_gap(tmp_path):
    (tmp_path / "bad.json").write_text('{"schema": "hdr-run/1", "config": {')
    with pytest.raises(RecordError, match="bad.json"):
        scorecard.paper_runs(tmp_path)


def test_html_table_and_figure():
    rows = scorecard.scorecard([make_record("cpu", seconds=120.0)])
    table = scorecard.to_html(rows)
    assert table.count("<tr>") == len(rows) + 1
    assert "hdr-not-yet-measured" in table and "Test CPU" in table
    fig = scorecard.time_figure(rows)
    assert fig.data[1].y[1] is None  # GPU bar absent, not zero
