"""Records that are damaged are reported by name; statistics on known values; the commit a record names."""

import json
import math
import subprocess

import pytest

from hdr_lib.measure.records import RecordError, SCHEMA, load_records, read_record, write_json_atomic
from hdr_lib.measure.stats import summarize, welch

from conftest import REPO


def _record(**extra):
    return {"schema": SCHEMA, "kind": "train", "config": {"device": "cpu", "path": "fast"}, "environment": {},
            "epochs": [], "status": "complete", **extra}


def test_atomic_write_round_trips(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "r.json", _record(test_accuracy=99.0))
    assert read_record(path)["test_accuracy"] == 99.0
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_truncated_record_is_named(tmp_path):
    write_json_atomic(tmp_path / "good.json", _record())
    text = json.dumps(_record())
    (tmp_path / "bad.json").write_text(text[: len(text) // 2])
    with pytest.raises(RecordError, match=r"bad\.json is corrupt or truncated"):
        load_records(tmp_path)


def test_foreign_json_is_refused(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(RecordError, match=r"other\.json lacks schema"):
        load_records(tmp_path)


def test_filters(tmp_path):
    write_json_atomic(tmp_path / "a.json", _record())
    write_json_atomic(tmp_path / "b.json", _record(status="incomplete"))
    write_json_atomic(tmp_path / "c.json", {**_record(), "config": {"device": "cuda", "path": "fast"}})
    assert [r["_path"].split("/")[-1] for r in load_records(tmp_path, device="cpu")] == ["a.json"]
    assert len(load_records(tmp_path, status=None)) == 3


def test_summarize_gives_the_t_interval():
    s = summarize([98.0, 99.0, 100.0])
    assert s["mean"] == 99.0 and s["std"] == 1.0
    assert s["ci95_high"] - 99.0 == pytest.approx(4.303 / math.sqrt(3))
    assert summarize([1.0])["ci95_low"] is None


def test_welch_finds_a_clear_difference_and_not_a_noisy_one():
    assert welch([1.0, 1.1, 0.9, 1.0], [2.0, 2.1, 1.9, 2.0])["significant"] is True
    assert welch([98.1, 98.4, 98.2], [98.3, 98.0, 98.5])["significant"] is False
    assert welch([1.0], [2.0, 3.0])["significant"] is None


def test_records_under_results_do_not_mark_the_commit_dirty_but_code_changes_do(tmp_path):
    from hdr_lib.measure.machine import git_commit

    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(clone) == head
    record = next((clone / "results").glob("*.json"))
    record.write_text(record.read_text() + "\n")  # as a run writing its record would
    assert git_commit(clone) == head
    model = clone / "hdr_lib" / "model.py"
    model.write_text(model.read_text() + "\n# an uncommitted edit\n")
    assert git_commit(clone) == head + "+dirty"
