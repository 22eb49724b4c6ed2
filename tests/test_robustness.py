"""Chapter 09's robustness tables and the fast step's profile per part, from bench records found anywhere under the
results folder and read (checked) as every record is; none where no record holds them."""

import copy
import json

import pytest

from hdr_lib.book import figures
from hdr_lib.measure import robustness
from hdr_lib.measure.machine import machine_label
from hdr_lib.measure.records import RecordError

from conftest import REPO

SESSION = REPO / "results" / "session-cpu-quiet-2026-12-06a"
PARTS = {"conv1 forward": 0.10, "conv1 backward": 0.20, "conv2 forward": 0.15, "conv2 backward": 0.25,
         "fully connected": 0.05, "loss": 0.01, "update": 0.02, "other": 0.04}


def _real(name):
    return json.loads((SESSION / name).read_text())


def _write(folder, name, record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


def _profiled(record, parts=PARTS):
    record = copy.deepcopy(record)
    total = sum(v for v in parts.values() if isinstance(v, float)) or 1.0
    record["profile"] = {"path": "fast", "step": "native", "isa": "avx512", "threads": 2, "steps": 200,
                         "ms_per_step": total, "parts": dict(parts)}
    return record


def test_robustness_tables_come_from_the_records_wherever_they_lie(tmp_path):
    contention, avx2 = _real("bench-cpu-contention.json"), _real("bench-cpu-avx2.json")
    _write(tmp_path / "a-session", "bench-cpu-contention.json", contention)
    _write(tmp_path / "other" / "deeper", "bench-cpu-avx2.json", avx2)
    tables = robustness.robustness_tables(tmp_path)
    assert [t["file"] for t in tables] == ["a-session/bench-cpu-contention.json", "other/deeper/bench-cpu-avx2.json"]
    full, limited = tables
    assert (full["machine"], limited["machine"]) == (machine_label(contention), machine_label(avx2))
    assert full["isa"] == contention["runs"]["fast"][0]["execution"]["isa"]
    table, summary = full["table"], contention["summary"]
    busy = [way for way in summary if way.endswith(" busy")]
    assert busy and list(table.index) == [way for way in summary if way not in busy]  # busy rounds: columns, not ways
    fast = summary["fast"]["seconds_per_epoch_median"]
    assert table.loc["fast", "quiet: s / epoch"] == pytest.approx(fast)
    assert table.loc["fast", "busy / quiet"] == pytest.approx(summary["fast busy"]["seconds_per_epoch_median"] / fast)
    shares = contention["ceiling"]["fraction_of_matmul"]
    assert table.loc["fast", "% of torch.mm"] == pytest.approx(100 * shares["fast"])
    slow = robustness.slowdowns(table)
    assert list(slow) == sorted(slow) and len(slow) == len(busy)
    assert not any(way.endswith(" busy") for way in avx2["summary"])  # the AVX2 record ran quiet only
    assert limited["table"]["busy / quiet"].isna().all() and robustness.slowdowns(limited["table"]).empty
    assert robustness.profile_rows(tmp_path) == []  # neither record carries a profile


def test_a_profile_gives_its_parts_in_order_and_a_record_without_one_gives_none(tmp_path):
    _write(tmp_path / "s", "bench-cpu-contention.json", _profiled(_real("bench-cpu-contention.json")))
    _write(tmp_path / "s", "bench-cpu-avx2.json", _real("bench-cpu-avx2.json"))
    rows = robustness.profile_rows(tmp_path)
    assert [row["file"] for row in rows] == ["s/bench-cpu-contention.json"]
    row = rows[0]
    assert row["machine"] == machine_label(row["record"]) and row["profile"]["parts"] == PARTS
    assert list(row["table"].index) == list(PARTS)
    assert row["table"]["ms / step"].tolist() == pytest.approx(list(PARTS.values()))
    assert row["table"]["share of the step, %"].sum() == pytest.approx(100)
    bar = figures.step_time_split(row["profile"], title="t").data[0]
    assert list(bar.y) == list(PARTS)[::-1] and bar.orientation == "h"  # the first part on top
    assert robustness.robustness_tables(tmp_path / "nothing-here") == []


def test_a_profile_that_is_not_milliseconds_is_refused_naming_its_file(tmp_path):
    bad = _profiled(_real("bench-cpu-contention.json"), {"conv1 forward": "fast"})
    _write(tmp_path, "bench-cpu-contention.json", bad)
    with pytest.raises(RecordError, match="bench-cpu-contention.json: field profile"):
        robustness.profile_rows(tmp_path)


def _two_sessions(folder):
    """The contention record twice, as two sessions made a month apart (the older first in path order)."""
    for session, created in (("a-old", "2026-01-01T00:00:00+00:00"), ("b-new", "2026-02-01T00:00:00+00:00")):
        record = _real("bench-cpu-contention.json")
        record["environment"].update(session=f"test-{session}", created_at=created)
        _write(folder / session, "bench-cpu-contention.json", record)


def test_every_session_is_summarised_and_the_newest_shown_in_full(tmp_path):
    # Two sessions of the same benchmark: both rows in the summary, oldest first; the newest one read in full.
    _two_sessions(tmp_path)
    tables = robustness.robustness_tables(tmp_path)
    assert len(tables) == 2
    summary = robustness.session_summary(tables)
    assert list(summary.index) == ["test-a-old", "test-b-new"]
    fast = tables[0]["table"].loc["fast"]
    assert summary.loc["test-a-old", "fast: % of torch.mm"] == fast["% of torch.mm"]
    assert summary.loc["test-a-old", "fast over canonical, busy"] > 1  # the recorded run: faster under load
    assert [t["record"]["environment"]["session"] for t in robustness.newest(tables)] == ["test-b-new"]


def test_the_ceiling_shows_each_machines_newest_benchmark_only(tmp_path):
    # Chapter 09's ceiling tables: one per machine (its newest run), the older runs counted, not repeated.
    _two_sessions(tmp_path)
    benches = [t["record"] for t in robustness.robustness_tables(tmp_path)]
    newest, older = robustness.newest_per_machine(benches)
    assert older == 1 and [r["environment"]["session"] for r in newest] == ["test-b-new"]
