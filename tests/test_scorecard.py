"""The scorecard's verdict rules on made-up records: each rule, and 'not yet measured' where data is missing."""

from __future__ import annotations

import json

import pytest

from hdr_lib import paper
from hdr_lib.book import scorecard
from hdr_lib.config import PAPER
from hdr_lib.measure import queries
from hdr_lib.measure.records import SCHEMA
from hdr_lib.book.scorecard import HIGHER, LOWER, NOT_COMPARABLE, REPRODUCED
from hdr_lib.measure.queries import NOT_MEASURED


def make_record(device="cpu", seconds=100.0, accuracy=99.0, util=None, mem_bytes=None, path="reference",
                host="host-a", session="s1", p10=None, mem_mean=None, **config):
    cfg = {**PAPER.as_dict(), "framework": "pytorch", "device": device, "path": path, **config}
    deviations = {k: v for k, v in config.items() if k not in ("seed",)}
    gpu = {"name": "Test GPU", "cuda": "12.0", "driver": "1", "cudnn": 9} if device == "cuda" else None
    return {"schema": SCHEMA, "kind": "train", "status": "complete", "config": cfg,
            "deviations_from_paper": deviations,
            "environment": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "gpu": gpu, "hostname_hash": host,
                            "session": session},
            "epochs": [{"epoch": 1}], "total_train_seconds": seconds, "test_accuracy": accuracy, "execution": {},
            "memory": {"cuda_peak_reserved_bytes": 50e6 if device == "cuda" else None},
            "utilisation": {"gpu": {"utilisation_mean_percent": util, "utilisation_p10_percent": p10,
                                    "memory_used_max_bytes": mem_bytes, "memory_used_mean_bytes": mem_mean,
                                    "reason": None if util is not None else "CPU run: no GPU"}}}


def verdicts(rows, path="reference"):
    return {r.claim.key: r.cells[path].verdict for r in rows}


def test_no_records_means_nothing_measured():
    rows = scorecard.scorecard([])
    assert {r.verdict for r in rows} == {NOT_MEASURED}
    assert len(rows) == len(scorecard.CLAIMS)
    assert all(scorecard.format_cell(r.headline, r.claim.unit) == NOT_MEASURED for r in rows)


def test_cpu_only_leaves_every_gpu_claim_not_yet_measured():
    rows = scorecard.scorecard([make_record(seconds=3000.0, accuracy=98.3)])
    v = verdicts(rows)
    assert v["cpu_time"] == NOT_COMPARABLE  # an absolute time on other hardware
    assert v["cpu_accuracy"] == REPRODUCED  # within 0.3 pp of 98.2 %
    for key in ("gpu_time", "speedup", "gpu_accuracy", "accuracy_gap", "gpu_utilisation", "gpu_memory"):
        assert v[key] == NOT_MEASURED, key
    assert "GPU: not yet measured" in scorecard.status_line(rows)


def test_rules_say_which_way_a_number_differs():
    cpu = [make_record("cpu", seconds=s, accuracy=a, seed=i) for i, (s, a) in
           enumerate([(90.0, 99.0), (92.0, 99.1), (91.0, 99.05)])]
    gpu = [make_record("cuda", seconds=s, accuracy=a, util=u, p10=u - 20, mem_bytes=0.7e9, mem_mean=0.6e9, seed=i)
           for i, (s, a, u) in enumerate([(5.0, 99.1, 60.0), (5.2, 99.0, 62.0), (5.1, 99.05, 61.0)])]
    rows = scorecard.scorecard(cpu + gpu)
    v = verdicts(rows)
    assert v["cpu_time"] == v["gpu_time"] == NOT_COMPARABLE
    assert v["speedup"] == HIGHER  # ~18x, the whole interval above 12
    assert v["cpu_accuracy"] == HIGHER  # 0.85 pp above 98.2
    assert v["accuracy_gap"] == REPRODUCED
    assert v["gpu_utilisation"] == LOWER  # the 10th percentile, ~41 %, is not above 90 %
    assert v["gpu_memory"] == LOWER  # a 0.6 GB mean is not around 6 GB
    assert {r.verdict for r in rows} <= set(scorecard.VERDICTS)
    gpu_time = next(r for r in rows if r.claim.key == "gpu_time").headline
    assert "less time than the paper's" in gpu_time.note  # how far and which way


def test_accuracy_below_the_margin_is_ours_lower():
    assert verdicts(scorecard.scorecard([make_record(accuracy=97.5)]))["cpu_accuracy"] == LOWER


def test_speedup_is_reproduced_when_its_interval_holds_the_claim():
    cpu = [make_record("cpu", seconds=s, seed=i) for i, s in enumerate([100.0, 160.0, 130.0])]
    gpu = [make_record("cuda", seconds=s, util=95.0, p10=93.0, mem_bytes=6.5e9, mem_mean=6e9, seed=i)
           for i, s in enumerate([10.0, 10.5, 9.5])]
    rows = {r.claim.key: r for r in scorecard.scorecard(cpu + gpu)}
    speedup = rows["speedup"].headline.measured
    assert speedup["mean"] == pytest.approx(13.0)
    assert speedup["ci95_low"] < 12 < speedup["ci95_high"]
    assert rows["speedup"].verdict == REPRODUCED
    assert rows["gpu_utilisation"].verdict == REPRODUCED
    assert rows["gpu_memory"].verdict == REPRODUCED


def test_utilisation_mean_above_90_is_not_consistently_above_90():
    # A mean of 92 % with a 10th percentile of 70 %: not "consistently above 90 %".
    gpu = [make_record("cuda", util=92.0, p10=70.0, seed=i) for i in range(2)]
    assert verdicts(scorecard.scorecard(gpu))["gpu_utilisation"] == LOWER


def test_speedup_pairs_cpu_and_gpu_of_one_host(tmp_path):
    # Host A: a fast CPU and no GPU. Host B: a slower CPU and a GPU. The speedup must be B's CPU over B's GPU.
    runs = [make_record("cpu", seconds=40.0 + i, host="cpu-only", seed=i) for i in range(5)]
    runs += [make_record("cpu", seconds=s, host="both", seed=i) for i, s in enumerate([200.0, 210.0])]
    runs += [make_record("cuda", seconds=s, host="both", seed=i) for i, s in enumerate([10.0, 10.5])]
    for i, run in enumerate(runs):
        (tmp_path / f"{i}.json").write_text(json.dumps(run))
    rows = {r.claim.key: r for r in scorecard.scorecard(results_dir=tmp_path)}
    speedup = rows["speedup"].headline
    assert speedup.measured["mean"] == pytest.approx(205.0 / 10.25)
    assert speedup.measured["n_cpu"] == 2 and "both" in speedup.note
    # One GPU run on the host is not enough: at least two per device.
    one_gpu = runs[:-1]
    rows = {r.claim.key: r for r in scorecard.scorecard(one_gpu)}
    assert rows["speedup"].verdict == NOT_MEASURED


def test_single_runs_give_no_speedup_and_show_no_interval():
    rows = {r.claim.key: r for r in scorecard.scorecard([make_record("cpu", seconds=120.0),
                                                         make_record("cuda", seconds=6.0)])}
    assert rows["speedup"].verdict == NOT_MEASURED  # one run each: fewer than two per device
    assert "CI" not in scorecard.format_cell(rows["cpu_time"].headline, "s")
    assert rows["gpu_utilisation"].verdict == NOT_MEASURED  # NVML gave nothing: never filled in


def test_sessions_are_named_in_the_interval():
    one = [make_record(seconds=100.0 + i, seed=i) for i in range(3)]
    two = one + [make_record(seconds=130.0, seed=3, session="s2")]
    assert "within one session" in scorecard.format_cell(scorecard.scorecard(one)[0].headline, "s")
    assert "2 sessions pooled" in scorecard.format_cell(scorecard.scorecard(two)[0].headline, "s")


def test_times_from_two_machines_are_not_pooled():
    # The GPU machine's own CPU run (scripts/gpu_replication.sh makes one) beside five runs of the book's CPU.
    other = make_record("cpu", seconds=30.0)
    other["environment"] = {**other["environment"], "cpu": "Other CPU", "threads": 16}
    rows = scorecard.scorecard([make_record("cpu", seconds=100.0 + i, seed=i) for i in range(5)] + [other])
    cpu_time = next(r for r in rows if r.claim.key == "cpu_time").headline
    assert cpu_time.measured["n"] == 5 and cpu_time.measured["mean"] == pytest.approx(102.0)
    assert "Other CPU" not in cpu_time.hardware


def test_paths_are_columns_of_one_row_and_never_mixed():
    runs = [make_record("cpu", path="fast", seconds=20.0 + i, seed=i) for i in range(2)]
    runs += [make_record("cuda", path="reference", seconds=5.0 + i, seed=i) for i in range(2)]
    rows = scorecard.scorecard(runs)
    assert len(rows) == len(scorecard.CLAIMS)  # one row per claim, whatever the paths
    assert all(list(r.cells) == ["reference", "fast"] for r in rows)
    assert verdicts(rows, "fast")["speedup"] == NOT_MEASURED  # no GPU run on the fast path
    assert verdicts(rows, "reference")["speedup"] == NOT_MEASURED  # no CPU run on the reference path
    assert verdicts(rows, "reference")["cpu_time"] == NOT_MEASURED  # the headline is the reference path
    assert verdicts(rows, "fast")["cpu_time"] == NOT_COMPARABLE


def test_html_table():
    rows = scorecard.scorecard([make_record("cpu", seconds=120.0)])
    table = scorecard.to_html(rows)
    assert table.count("<tr>") == len(rows) + 1
    assert "hdr-not-yet-measured" in table and "Test CPU" in table
    assert table.count('data-label="Verdict"') == len(rows)  # each cell names its column (cards on a phone)


def test_each_chapter_verdict_takes_its_claims_and_sets_apart_those_not_measured(tmp_path):
    rows = scorecard.scorecard(results_dir=tmp_path)  # an empty results folder
    for chapter, keys in scorecard.CHAPTER_CLAIMS.items():
        measured, missing = scorecard.chapter_verdicts(chapter, rows)
        assert measured == [] and [r.claim.key for r in missing] == list(keys), chapter  # one "not yet measured"
    gpu = [make_record("cuda", seconds=5.0 + i, seed=i) for i in range(2)]
    measured, missing = scorecard.chapter_verdicts("05", scorecard.scorecard(gpu))
    assert [r.claim.key for r in measured] == ["gpu_time"] and [r.claim.key for r in missing] == ["cpu_time", "speedup"]
    text = scorecard.describe(measured[0].headline, "s")
    assert "5.5 s" in text and NOT_COMPARABLE in text


def test_accuracy_spread_measures_the_margin_in_sds():
    runs = [make_record(accuracy=a, seed=i) for i, a in enumerate([99.0, 99.1, 99.05, 99.0, 99.1])]
    (group,) = scorecard.accuracy_spread(runs)
    assert group["n"] == 5 and group["sd"] == pytest.approx(0.05)
    assert group["margin_in_sd"] == pytest.approx(6.0)
    assert group["gap_inside"] and group["pair_95"] == pytest.approx(1.96 * 2 ** 0.5 * 0.05)
    assert scorecard.accuracy_spread([make_record()]) == []  # the pages then say "not yet measured"


def test_a_seed_rerun_adds_a_time_but_not_a_second_accuracy():
    first = [make_record(seconds=100.0 + i, accuracy=99.0 + 0.05 * i, seed=i, session="s1") for i in range(3)]
    again = [make_record(seconds=120.0 + i, accuracy=99.0 + 0.05 * i, seed=i, session="s2") for i in range(3)]
    for r in again:
        r["environment"]["created_at"] = "2026-12-01T00:00:00+00:00"
    rows = {r.claim.key: r for r in scorecard.scorecard(first + again)}
    assert rows["cpu_time"].headline.measured["n"] == 6
    assert rows["cpu_accuracy"].headline.measured["n"] == 3
    assert scorecard.accuracy_spread(first + again)[0]["n"] == 3


def keras_record(seconds, seed):
    record = make_record("cpu", seconds=seconds, seed=seed)
    record["config"].update(framework="keras-tensorflow", keras_way="fit")
    return record


def test_every_page_shows_one_table_from_one_results_folder(tmp_path, monkeypatch):
    # Chapter 08 (its results_dir parameter), the landing and scorecard pages ($HDR_RESULTS_DIR) and the CLI read
    # the same records the same way: the Keras/TensorFlow time beside the CPU-time row included.
    runs = [make_record("cpu", seconds=100.0 + i, seed=i) for i in range(2)] + [keras_record(900.0, 0),
                                                                               keras_record(950.0, 1)]
    for i, run in enumerate(runs):
        (tmp_path / f"{i}.json").write_text(json.dumps(run))
    chapter = scorecard.scorecard(results_dir=tmp_path)
    monkeypatch.setenv(queries.RESULTS_ENV_VAR, str(tmp_path))
    page = scorecard.scorecard()
    assert scorecard.as_json(chapter) == scorecard.as_json(page) and scorecard.to_html(chapter) == scorecard.to_html(page)
    assert chapter[0].beside["n"] == 2 and page[0].beside["n"] == 2
    assert chapter[0].headline.measured["n"] == 2  # the Keras runs are beside, not scored


def test_the_claims_are_the_papers():
    assert [c.value for c in scorecard.CLAIMS] == [c.value for c in paper.CLAIMS]
    claims = [c for c in scorecard.CLAIMS if c.key in scorecard.CHAPTER_CLAIMS["05"]]  # chapter 05 lists these
    text = " ".join(f"{scorecard.paper_value(c)} on {scorecard.paper_hardware(c)}" for c in claims)
    assert f"{paper.CPU_SECONDS:g} s" in text and f"{paper.GPU_SECONDS:g} s" in text and paper.CPU.name in text
    assert [c.key for c in claims] == ["cpu_time", "gpu_time", "speedup"]


def test_a_run_made_another_way_is_not_scored():
    compiled = make_record("cuda")
    compiled["config"]["compile"] = True
    assert verdicts(scorecard.scorecard([make_record("cuda")]))["gpu_time"] != NOT_MEASURED
    assert {r.verdict for r in scorecard.scorecard([compiled])} == {NOT_MEASURED}



def test_two_machines_sharing_a_host_hash_and_a_rerun_seed_give_one_machines_figures_everywhere(tmp_path):
    """Two VMs report the same hostname hash and CPU model; one recorded its vector instructions. The scorecard,
    chapter 06 (its chart's runs and the seed spread) and chapter 05's path ratio all take the same machine, and
    a seed rerun in a second session is a timing sample, not a second seed."""
    from hdr_lib.measure import evidence

    def on(record, flags, session, created):
        record["environment"].update(cpu="AMD EPYC", hostname_hash="same", session=session, created_at=created)
        if flags:
            record["environment"]["cpu_flags"] = {"avx2": True, "avx512f": False}
        return record

    old = [on(make_record("cpu", seconds=22.0, accuracy=99.15 - 0.01 * s, path=p, seed=s), False, "nov", "2026-11-25")
           for p in ("reference", "fast") for s in range(5)]
    new = [on(make_record("cpu", seconds=350.0 + s, accuracy=a, path="reference", seed=s), True, "quiet",
              "2026-12-01T10") for s, a in enumerate((99.15, 99.13, 99.01))]
    new += [on(make_record("cpu", seconds=140.0, accuracy=99.1, path="fast", seed=s), True, "quiet", "2026-12-01T11")
            for s in range(2)]
    rerun = on(make_record("cpu", seconds=360.0, accuracy=99.15, path="reference", seed=0), True, "rerun",
               "2026-12-02")
    for i, r in enumerate(old + new + [rerun]):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    ev = evidence.load(tmp_path)
    name = "AMD EPYC, AVX2 (2 threads)"
    assert evidence.scored_cpu_machine(ev) == name
    rows = {r.claim.key: r for r in scorecard.scorecard(results_dir=tmp_path)}
    accuracy, time = rows["cpu_accuracy"].cells["reference"], rows["cpu_time"].cells["reference"]
    assert name in accuracy.hardware and "not recorded" not in accuracy.hardware
    assert accuracy.measured["n"] == 3 and accuracy.measured["mean"] == pytest.approx((99.15 + 99.13 + 99.01) / 3)
    assert time.measured["n"] == 4 and time.sessions == 2  # the rerun is a timing sample
    chapter06 = evidence.accuracy_runs(ev)  # chapter 06's chart and interval
    assert {evidence.machine(r) for r in chapter06} == {name} and len(chapter06) == 5
    spread = {g["path"]: g for g in scorecard.accuracy_spread(results_dir=tmp_path)}
    assert spread["reference"]["n"] == 3 and spread["reference"]["hardware"].startswith(name)
    assert spread["reference"]["mean"] == pytest.approx(accuracy.measured["mean"])
    assert {queries.machine(r) for p in ("reference", "fast") for r in evidence.scored_runs(ev, "cpu", p)} == {name}  # chapter 05's path ratio
