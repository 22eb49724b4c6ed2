"""`python -m hdr_lib scorecard`: the book's verdict table in a terminal, the same rows, from any results folder."""

from __future__ import annotations

import json
import subprocess
import sys

from hdr_lib.book import scorecard
from tests.test_scorecard import make_record


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hdr_lib", "scorecard", *args], capture_output=True, text=True)


def test_json_has_the_books_rows(tmp_path):
    runs = [make_record("cpu", seconds=100.0 + i, seed=i) for i in range(2)]
    for i, run in enumerate(runs):
        (tmp_path / f"{i}.json").write_text(json.dumps(run))
    done = _run("--results", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    book = scorecard.as_json(scorecard.scorecard(results_dir=tmp_path))
    assert printed["claims"] == json.loads(json.dumps(book))
    assert [c["verdict"] for c in printed["claims"]][:2] == ["not comparable", "not yet measured"]
    assert "GPU: not yet measured" in printed["status"]


def test_text_table_and_a_missing_folder(tmp_path):
    done = _run("--results", str(tmp_path))
    assert done.returncode == 0 and done.stdout.count("not yet measured") >= len(scorecard.CLAIMS)
    missing = _run("--results", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_text_and_json_carry_the_paper_framework_beside_the_cpu_time(tmp_path):
    from tests.test_scorecard import keras_record

    runs = [make_record("cpu", seconds=100.0 + i, seed=i) for i in range(2)] + [keras_record(900.0, 0),
                                                                               keras_record(950.0, 1)]
    for i, run in enumerate(runs):
        (tmp_path / f"{i}.json").write_text(json.dumps(run))
    printed = json.loads(_run("--results", str(tmp_path), "--json").stdout)
    cpu_time = next(c for c in printed["claims"] if c["key"] == "cpu_time")
    assert cpu_time["beside"]["n"] == 2 and cpu_time["beside"]["mean"] == 925.0
    text = _run("--results", str(tmp_path)).stdout
    assert "beside (not scored): Keras/TensorFlow (model.fit)" in text and "925" in text


def _hostile(folder, name):
    """Write one hostile record `name` (the issue's list) into `folder`; return the field or words its line names."""
    import os

    good = make_record("cpu")
    texts = {"non-utf8": (b'{"schema": "hdr-run/2", "kind": "\xff"}', "is not UTF-8 text"),
             "config-string": (json.dumps({**good, "config": "cpu"}).encode(), "field config:"),
             "environment-null": (json.dumps({**good, "environment": None}).encode(), "field environment:"),
             "5000-digits": (b'{"schema": "hdr-run/2", "test_accuracy": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
             "nested": (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
             "accuracy-250": (json.dumps({**good, "test_accuracy": 250}).encode(), "field test_accuracy:"),
             "seconds-negative": (json.dumps({**good, "total_train_seconds": -100}).encode(),
                                  "field total_train_seconds:"),
             "seconds-1e300": (json.dumps({**good, "total_train_seconds": 1e300}).encode(),
                               "field total_train_seconds:"),
             "seconds-string": (json.dumps({**good, "total_train_seconds": "20.5"}).encode(),
                                "field total_train_seconds:")}
    if name == "fifo":
        os.mkfifo(folder / "x.json")
        return folder / "x.json", "is not a regular file"
    data, words = texts[name]
    (folder / "x.json").write_bytes(data)
    return folder / "x.json", words


HOSTILE = ("non-utf8", "config-string", "environment-null", "5000-digits", "nested", "accuracy-250",
           "seconds-negative", "seconds-1e300", "seconds-string", "fifo")


def test_each_hostile_record_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys):
    from hdr_lib.cli import main

    for name in HOSTILE:
        folder = tmp_path / name
        (folder / "backup").mkdir(parents=True)
        (folder / "good.json").write_text(json.dumps(make_record("cpu")))
        path, words = _hostile(folder, name)
        assert main(["scorecard", "--results", str(folder)]) == 2, name
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(path) in err and words in err, (name, err)


def test_a_byte_identical_backup_is_one_run_and_the_folder_is_named_as_given(tmp_path, monkeypatch, capsys):
    from hdr_lib.cli import main

    (tmp_path / "backup").mkdir()
    text = json.dumps(make_record("cpu", seconds=100.0))
    (tmp_path / "a.json").write_text(text)
    (tmp_path / "backup" / "a.json").write_text(text)  # a copy: the same run, not a second one
    rows = {r.claim.key: r for r in scorecard.scorecard(results_dir=tmp_path)}
    assert rows["cpu_time"].cells["reference"].measured["n"] == 1
    monkeypatch.setenv("HDR_RESULTS_DIR", "README.md")
    assert main(["scorecard"]) == 2
    assert capsys.readouterr().err.startswith("error: $HDR_RESULTS_DIR README.md is not a folder")
