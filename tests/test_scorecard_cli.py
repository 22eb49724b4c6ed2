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
