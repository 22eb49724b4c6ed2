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
