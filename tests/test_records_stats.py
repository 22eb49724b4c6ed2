"""Records that are damaged are reported by name; statistics on known values; the commit a record names."""

import json
import math
import os
import subprocess
import sys

import pytest

from hdr_lib.measure.records import RecordError, SCHEMA, load_records, read_record, write_json_atomic
from hdr_lib.measure.stats import summarize, welch

from conftest import REPO


def _record(**extra):
    return {"schema": SCHEMA, "kind": "train", "config": {"device": "cpu", "path": "fast", "framework": "pytorch"},
            "environment": {"session": "s1"}, "epochs": [], "status": "complete", "test_accuracy": 99.0,
            "total_train_seconds": 10.0, "deviations_from_paper": {}, "execution": {}, **extra}


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
    with pytest.raises(RecordError, match=r"other\.json: field schema is 'None', expected 'hdr-run/2'"):
        load_records(tmp_path)


def test_filters(tmp_path):
    write_json_atomic(tmp_path / "a.json", _record())
    write_json_atomic(tmp_path / "b.json", _record(status="incomplete"))
    write_json_atomic(tmp_path / "c.json", {**_record(), "config": {"device": "cuda", "path": "fast"}})
    write_json_atomic(tmp_path / "copy" / "a.json", _record())  # a byte-identical backup: the same run, once
    assert [r["_path"].split("/")[-1] for r in load_records(tmp_path, device="cpu")] == ["a.json"]
    assert len(load_records(tmp_path, status=None)) == 3


def test_summarize_gives_the_t_interval():
    s = summarize([98.0, 99.0, 100.0])
    assert s["mean"] == 99.0 and s["std"] == 1.0
    assert s["ci95_high"] - 99.0 == pytest.approx(4.302653 / math.sqrt(3))
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


def test_the_commit_and_session_from_the_environment_are_read_by_the_settings_rule(tmp_path, monkeypatch):
    from hdr_lib.measure import machine
    from hdr_lib.settings import SettingError

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path is no git checkout
    monkeypatch.setenv("HDR_GIT_COMMIT", " 90d4481 ")  # where git cannot say (the GPU machine's copy)
    assert machine.git_commit(tmp_path) == "90d4481"
    monkeypatch.setenv("HDR_GIT_COMMIT", "")  # empty is unset
    assert machine.git_commit(tmp_path) is None
    monkeypatch.setenv("HDR_GIT_COMMIT", "90d4481\nforged: line")
    with pytest.raises(SettingError, match="HDR_GIT_COMMIT"):
        machine.git_commit(tmp_path)
    monkeypatch.setenv("HDR_SESSION", "gpu-replication 2026-12-06T19:00:00Z")
    assert machine.environment()["session"] == "gpu-replication 2026-12-06T19:00:00Z"
    monkeypatch.setenv("HDR_SESSION", " ")
    assert machine.environment()["session"] == machine.SESSION


def test_every_committed_record_is_hdr_run_2():
    records = load_records(REPO / "results", status=None)
    assert len(records) >= 80 and {r["schema"] for r in records} == {"hdr-run/2"}
    train = [r for r in records if r["kind"] == "train"]
    assert all(isinstance(r["config"]["amp"], str) and "channels_last" not in r["config"] for r in train)
    assert all(r["config"]["framework"] in ("pytorch", "keras-tensorflow", "keras-jax", "keras-torch") for r in train)
    assert all(" " not in (r["execution"].get("cpu_step") or "") for r in train)


def test_the_migration_keeps_every_value_of_an_old_record():
    import importlib.util

    spec = importlib.util.spec_from_file_location("migrate", REPO / "scripts" / "migrate_records_v2.py")
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    old = {"schema": "hdr-run/1", "kind": "train", "status": "complete", "test_accuracy": 99.1,
           "total_train_seconds": 20.5, "deviations_from_paper": {}, "epochs": [{"epoch": 1, "train_seconds": 1.5}],
           "config": {"device": "cpu", "path": "fast", "amp": True, "channels_last": False, "tf32": False, "seed": 3},
           "environment": {"git_commit": "90d4481abcdef", "created_at": "2026-11-20T10:00:00+00:00", "threads": 2},
           "execution": {"cpu_step": "hdr_lib.native: the loss and gradients in one C++ operator"}}
    new = migrate.migrate(old)
    assert migrate.check(old, new) == []
    assert new["config"] == {"device": "cpu", "path": "fast", "amp": "bf16", "seed": 3, "framework": "pytorch"}
    assert new["environment"]["session"] == "commit 90d4481, 2026-11-20"
    assert new["execution"]["cpu_step"] == "native"
    bad = migrate.migrate(old)
    bad["test_accuracy"] = 99.2
    del bad["epochs"][0]["train_seconds"]
    assert sorted(migrate.check(old, bad)) == ["epochs.0.train_seconds: 1.5 -> '<missing>'",
                                               "test_accuracy: 99.1 -> 99.2"]


HOSTILE = {  # file text -> the field (or reason) the one line must name
    "config-string": (lambda r: {**r, "config": "cpu"}, "field config: 'cpu' is not of type 'object'"),
    "environment-null": (lambda r: {**r, "environment": None}, "field environment: None is not of type 'object'"),
    "accuracy-250": (lambda r: {**r, "test_accuracy": 250}, "field test_accuracy: 250 is greater than the maximum"),
    "seconds-negative": (lambda r: {**r, "total_train_seconds": -100}, "field total_train_seconds: -100 is less"),
    "seconds-1e300": (lambda r: {**r, "total_train_seconds": 1e300}, "field total_train_seconds: 1e+300 is greater"),
    "seconds-string": (lambda r: {**r, "total_train_seconds": "20.5"}, "field total_train_seconds: '20.5' is not"),
    "no-session": (lambda r: {**r, "environment": {}}, "field environment.session: missing"),
    "amp-bool": (lambda r: {**r, "config": {**r["config"], "amp": True}}, "field config.amp: True is not one of"),
    "step-sentence": (lambda r: {**r, "execution": {"cpu_step": "hdr_lib.native: the loss"}},
                      "field execution.cpu_step: 'hdr_lib.native: the loss' does not match"),
    "weights-bad-hash": (lambda r: {**r, "weights": {"file": "results/weights/a.pt", "sha256": "xyz",
                                                     "format": "torch-state-dict"}}, "field weights.sha256: 'xyz'"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_record_is_one_line_naming_file_and_field(tmp_path, name):
    change, message = HOSTILE[name]
    (tmp_path / f"{name}.json").write_text(json.dumps(change(_record())))
    with pytest.raises(RecordError) as info:
        load_records(tmp_path, status=None)
    assert str(info.value).startswith(f"run record {tmp_path / name}.json: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, reason", [
    (b'{"schema": "hdr-run/2", "kind": "\xff\xfe"}', "is not UTF-8 text"),
    (b'{"test_accuracy": ' + b"9" * 5000 + b"}", "is not a record's JSON: Exceeds the limit"),
    (b"[" * 100000 + b"]" * 100000, "is not a record's JSON: nested too deeply"),
    (b'{"test_accuracy": NaN}', "is not a record's JSON: NaN is not a JSON number"),
    (b'{"test_accuracy": 1e999}', "is not a record's JSON: 1e999 is beyond a float"),
])
def test_bytes_that_are_no_record_are_one_line(tmp_path, data, reason):
    (tmp_path / "x.json").write_bytes(data)
    with pytest.raises(RecordError, match=f"x\\.json {reason}"):
        load_records(tmp_path)


def test_a_fifo_named_like_a_record_is_refused_without_opening_it(tmp_path):
    import os

    os.mkfifo(tmp_path / "x.json")
    with pytest.raises(RecordError, match=r"x\.json is not a regular file"):
        load_records(tmp_path)


def test_records_with_weights_step_losses_and_a_browser_framework_read(tmp_path):
    record = _record(weights={"file": "results/weights/r.pt", "sha256": "a" * 64, "format": "torch-state-dict"},
                     step_losses=[2.3, 1.1, None])
    browser = _record(config={"device": "webgpu", "path": "tfjs", "framework": "tfjs-webgpu", "amp": "off"},
                      environment={"session": "b1", "cpu": None, "browser": "Mozilla/5.0", "hardware_concurrency": 8,
                                   "gpu_renderer": None})
    write_json_atomic(tmp_path / "r.json", record)
    write_json_atomic(tmp_path / "b.json", browser)
    assert {r["config"]["framework"] for r in load_records(tmp_path)} == {"pytorch", "tfjs-webgpu"}


def test_the_training_side_imports_no_reading_library():
    code = ("import sys, hdr_lib.train, hdr_lib.measure.replicate, hdr_lib.measure.bench, hdr_lib.cli, "
            "hdr_lib.measure.run_record; print(sorted(m for m in ('pandas', 'scipy', 'jsonschema') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
