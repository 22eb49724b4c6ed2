"""What runs write (issue 29): a run never replaces a finished record or another kind's, a resume cannot lie, two
writers cannot collide, a killed native build does not hang the next one, every HDR_* variable is parsed by one
rule, records go where scorecard reads them, replicate goes on where it stopped, and chapter 08 checks its cache
folder. Real runs on the real MNIST, cut short with --max-steps (or a full epoch of 10 steps of 6000 images)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hdr_lib import paths
from hdr_lib.book import chapter as nb
from hdr_lib.config import PAPER
from hdr_lib.measure.replicate import record_name

from conftest import REPO

QUICK = ["--device", "cpu", "--quiet"]
FULL_TINY = ["--epochs", "1", "--batch-size", "6000"]  # a whole epoch in 10 steps: a complete record, quickly


def hdr(*args, cwd=None, env=None, **kwargs):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HDR_") or k == "HDR_DATA_DIR"}
    environ.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "hdr_lib", *map(str, args)], cwd=cwd or REPO, env=environ,
                          capture_output=True, text=True, timeout=900, **kwargs)


def one_error_line(out) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


# 1 -------------------------------------------------------------------------------------------------------------

def test_a_run_never_replaces_a_finished_record_nor_another_kind(tmp_path):
    paper = tmp_path / "cpu-fast-e20-b64-seed0.json"
    bench = tmp_path / "bench-cpu.json"
    shutil.copy(REPO / "results" / paper.name, paper)
    shutil.copy(REPO / "results" / bench.name, bench)
    before = {p: p.read_bytes() for p in (paper, bench)}
    for target in (paper, bench):
        line = one_error_line(hdr("train", *QUICK, "--max-steps", 3, "--out", target))
        assert "it was kept" in line and str(target) in line
    assert "bench record, not a train record" in line
    # the default name of a quick check cannot be a paper run's name, so it never meets the committed records
    out = hdr("train", *QUICK, "--max-steps", 3, env={"HDR_RESULTS_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    written = tmp_path / record_name(PAPER.replace(device="cpu"), "cpu", max_steps=3)
    assert written.name == "cpu-fast-e20-b64-steps3-seed0.json" and str(written) in out.stdout
    assert json.loads(written.read_text())["status"] == "incomplete"
    assert {p: p.read_bytes() for p in (paper, bench)} == before
    # an incomplete record of the same kind is rewritten (the same quick check again)
    assert hdr("train", *QUICK, "--max-steps", 3, env={"HDR_RESULTS_DIR": str(tmp_path)}).returncode == 0


# 2 -------------------------------------------------------------------------------------------------------------

def test_a_resume_after_a_cut_epoch_is_refused_and_a_new_run_keeps_another_runs_checkpoint(tmp_path):
    folder, out = tmp_path / "ckpt", tmp_path / "run.json"
    assert hdr("train", *QUICK, "--max-steps", 20, "--checkpoint-dir", folder, "--out", out).returncode == 0
    record = json.loads(out.read_text())
    assert record["status"] == "incomplete" and record["deviations_from_paper"]["max_steps"] == 20
    saved = (folder / "checkpoint.pt").read_bytes()
    line = one_error_line(hdr("train", *QUICK, "--checkpoint-dir", folder, "--resume", "--out", out))
    assert "stopped after 20 of its 938 steps" in line
    assert json.loads(out.read_text())["status"] == "incomplete"  # not turned into a 'complete' paper run
    line = one_error_line(hdr("train", *QUICK, "--max-steps", 5, "--checkpoint-dir", folder,
                              "--out", tmp_path / "other.json"))
    assert "another run's checkpoint" in line and "--overwrite-checkpoint" in line
    assert (folder / "checkpoint.pt").read_bytes() == saved and not (tmp_path / "other.json").exists()
    assert hdr("train", *QUICK, "--max-steps", 5, "--checkpoint-dir", folder, "--overwrite-checkpoint",
               "--out", tmp_path / "other.json").returncode == 0
    assert (folder / "checkpoint.pt").read_bytes() != saved


def test_a_resume_from_an_epochs_end_is_complete_only_when_every_epoch_is_whole(tmp_path):
    folder, out = tmp_path / "ckpt", tmp_path / "run.json"
    tiny = ["--epochs", "2", "--batch-size", "6000"]
    assert hdr("train", *QUICK, *tiny, "--max-steps", 10, "--checkpoint-dir", folder, "--out", out).returncode == 0
    assert json.loads(out.read_text())["status"] == "incomplete"
    done = hdr("train", *QUICK, *tiny, "--checkpoint-dir", folder, "--resume", "--out", out)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "complete" and [e["steps"] for e in record["epochs"]] == [10, 10]
    assert record["resumed_from_epoch"] == 1


# 3 -------------------------------------------------------------------------------------------------------------

def test_a_second_writer_of_a_record_or_an_out_dir_is_refused_and_sessions_differ(tmp_path):
    out = tmp_path / "same.json"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HDR_") or k == "HDR_DATA_DIR"}
    first = subprocess.Popen([sys.executable, "-m", "hdr_lib", "train", *QUICK, "--max-steps", "30", "--out", str(out)],
                             cwd=REPO, env={**environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = out.parent / f".{out.name}.lock"
    try:
        while not lock.exists() and first.poll() is None:
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # the first writer holds the record, paused there
        line = one_error_line(hdr("train", *QUICK, "--max-steps", 3, "--out", out))
        assert "being written by another run" in line and f"pid {first.pid}" in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, stderr
    assert json.loads(out.read_text())["config"]["seed"] == 0 and not lock.exists()

    folder = tmp_path / "records"
    with paths.WriteLock(folder, "out_dir", folder=True):  # this process writes the folder
        line = one_error_line(hdr("replicate", *QUICK, "--seeds", 1, "--max-steps", 2, "--out-dir", folder))
        assert "being written by another run" in line
    # two replicates one after the other: each its own session, though started in the same second or not
    sessions = set()
    for sub in ("a", "b"):
        assert hdr("replicate", *QUICK, "--seeds", 1, "--max-steps", 2, "--out-dir", folder / sub).returncode == 0
        (record,) = (folder / sub).glob("*.json")
        sessions.add(json.loads(record.read_text())["environment"]["session"])
    assert len(sessions) == 2
    from hdr_lib.measure import machine

    assert str(os.getpid()) in machine.SESSION


# 4 -------------------------------------------------------------------------------------------------------------

def test_a_native_build_waits_only_for_a_live_build_and_says_so(tmp_path):
    from hdr_lib.fast import native

    environ = {**os.environ, "PYTHONPATH": str(REPO), "HDR_NATIVE_CACHE": str(tmp_path),
               "CXX": str(tmp_path / "no-such-compiler")}  # the build then fails at once
    code = "from hdr_lib.fast import native; print(native.load(), native.reason())"
    os.environ["HDR_NATIVE_CACHE"] = str(tmp_path)
    try:
        folder = native.build_directory()
    finally:
        del os.environ["HDR_NATIVE_CACHE"]
    folder.mkdir(parents=True)
    (folder / "lock").touch()  # cpp_extension's lock, fresh, left by a build killed a moment ago (Ctrl-C)
    import fcntl

    with open(folder / native.BUILD_LOCK, "w") as held:  # a build that is still running: this process
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getpid()))
        held.flush()
        waiting = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=environ, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        said = waiting.stderr.readline() + waiting.stderr.readline()
        assert f"waiting for another process (pid {os.getpid()}) that is compiling" in said
    stdout, _ = waiting.communicate(timeout=600)
    assert stdout.startswith("False could not build lenet5_cpu.cpp")  # went on once the live build ended
    (folder / "lock").touch()  # left by a dead build: no live holder, so it is not waited for at all
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True,
                         timeout=120)  # a hang guard: a stale lock used to be waited on for 180 s
    assert out.stdout.startswith("False could not build lenet5_cpu.cpp") and "waiting" not in out.stderr


# 5 -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("HDR_NATIVE", "banana"), ("HDR_PROGRESS", "maybe"),
                                         ("HDR_DIST_TIMEOUT", "abc"), ("HDR_NATIVE", "2"),
                                         ("HDR_SESSION", "a\nb"), ("HDR_RESULTS_DIR", "a\0b")])
def test_every_environment_variable_is_parsed_by_one_rule(tmp_path, name, value):
    from hdr_lib import settings

    with pytest.raises(settings.SettingError, match=name):
        settings.check_environment({name: value})
    if "\0" in value:
        return  # an environment cannot hold a NUL: checked above only
    out = hdr("train", *QUICK, "--max-steps", 2, "--out", tmp_path / "r.json", env={name: value})
    assert name in one_error_line(out) and not (tmp_path / "r.json").exists()


def test_switches_take_the_same_words_everywhere():
    from hdr_lib import settings

    for word, meant in [("1", True), ("Yes", True), ("on", True), ("0", False), ("FALSE", False), ("", None)]:
        assert settings.switch("HDR_NATIVE", {"HDR_NATIVE": word}) is meant
        assert settings.switch("HDR_PROGRESS", {"HDR_PROGRESS": word}) is meant


# 6 -------------------------------------------------------------------------------------------------------------

def test_records_are_written_where_scorecard_reads_them_wherever_the_command_starts(tmp_path):
    elsewhere, records = tmp_path / "elsewhere", tmp_path / "records"
    elsewhere.mkdir()
    env = {"HDR_RESULTS_DIR": str(records)}
    out = hdr("train", *QUICK, "--max-steps", 2, "--seed", 7, "--epochs", 1, cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stderr
    assert not (elsewhere / "results").exists()
    assert [p.name for p in records.glob("*.json")] == ["cpu-fast-e1-b64-steps2-seed7.json"]
    card = hdr("scorecard", cwd=elsewhere, env=env)
    assert card.returncode == 0 and card.stdout.startswith(f"Records: {records}")
    helptext = " ".join(hdr("train", "--help").stdout.split())
    compact = "".join(helptext.split())  # argparse wraps long names at their hyphens
    assert "<device>-<path>-e<epochs>-b<batch>" in compact and "results/<device>-<path>-seed<seed>.json" not in compact
    assert "$HDR_RESULTS_DIR when set, else results/ of the checkout" in helptext
    assert "read by scorecard" in helptext


# 7 -------------------------------------------------------------------------------------------------------------

def test_replicate_goes_on_where_it_stopped(tmp_path):
    folder = tmp_path / "records"
    first = hdr("replicate", *QUICK, *FULL_TINY, "--seeds", 1, "--out-dir", folder)
    assert first.returncode == 0, first.stderr
    names = [record_name(PAPER.replace(device="cpu", epochs=1, batch_size=6000, seed=s), "cpu") for s in range(3)]
    kept = (folder / names[0]).read_bytes()
    assert json.loads(kept)["status"] == "complete"
    # seed 1 as a SIGKILL leaves it: an incomplete record of that seed
    cut = hdr("train", *QUICK, *FULL_TINY, "--seed", 1, "--max-steps", 3, "--out", folder / names[1])
    assert cut.returncode == 0 and json.loads((folder / names[1]).read_text())["status"] == "incomplete"
    again = hdr("replicate", *QUICK, *FULL_TINY, "--seeds", 3, "--out-dir", folder)
    assert again.returncode == 0, again.stderr
    assert "1 of 3 seeds already have a complete record, kept and skipped (0)" in again.stdout
    assert "seed 0: complete record kept, skipped" in again.stdout
    assert "seed 1: its record" in again.stdout and "running it again" in again.stdout
    assert (folder / names[0]).read_bytes() == kept
    for name in names:
        assert json.loads((folder / name).read_text())["status"] == "complete"


# 8 -------------------------------------------------------------------------------------------------------------

def _cells(notebook: str) -> dict:
    cells = json.loads((REPO / "notebooks" / notebook).read_text())["cells"]
    return {c.get("id"): "".join(c["source"]) for c in cells}


def test_chapter_08_checks_its_cache_folder_by_its_parameter(tmp_path, monkeypatch, data_root):
    cells = _cells("08_discussion.ipynb")
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the default cache folder would lie under a file: as unwritable as a read-only checkout
    monkeypatch.setattr(nb, "REPOSITORY", blocked)
    scope = {"nb": nb}
    exec(cells["08-02"], scope)
    scope.update(device="cpu", data_dir=str(data_root))
    with pytest.raises(paths.PathError, match="^parameter cache_dir "):
        exec(cells["08-03"], scope)


def test_a_cached_runs_path_is_printed_with_its_separator(tmp_path, mnist, capsys):
    cache = tmp_path / "cache"
    config = PAPER.replace(device="cpu", epochs=1, batch_size=6000)
    nb.cached_run(config, cache, data=mnist, verbose=False)
    nb.cached_run(config, cache, data=mnist, verbose=True)
    said = capsys.readouterr().out
    assert f"{cache}{os.sep}cpu-fast-e1-b6000-seed0-" in said and f"{cache}cpu" not in said
