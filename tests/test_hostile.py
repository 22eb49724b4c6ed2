"""Hostile input and faults (issue 17): nothing runs code from a file we read, nothing hangs, nothing is silently
wrong, and every error a user can cause is one line on stderr with exit status 2, before any work."""

import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hdr_lib import checkpoint, cli, paths
from hdr_lib.book import chapter as nb
from hdr_lib.config import PAPER
from hdr_lib.validation import RANGES, ConfigError, check
from hdr_lib.data import MNISTTensors
from hdr_lib.mnist_files import DataError, raw_folder
from hdr_lib.model import LeNet5
from hdr_lib.measure.records import RecordError, write_json_atomic
from hdr_lib.train import make_optimizer, train

from conftest import REPO

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def run_main(capsys, *argv):
    """`python -m hdr_lib ...` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def run_cli(*argv, env=None, preexec_fn=None, cwd=REPO, timeout=240):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hdr_lib", *map(str, argv)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def train_state(config, *, model=None, epochs_done=1):
    """A training checkpoint's content as hdr_lib.train writes it, for a model of `config` (fresh weights)."""
    model = model or LeNet5(config.variant)
    optimizer, scheduler = make_optimizer(model, config, fused=True)
    return {"config": config.as_dict(), "epoch": epochs_done, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "epochs": [{"epoch": e + 1, "train_loss": 2.3, "train_seconds": 1.0, "test_accuracy": 10.0,
                        "eval_seconds": 0.1, "lr": config.lr, "steps": 1} for e in range(epochs_done)],
            "setup_seconds": {}}


CONFIG = PAPER.replace(device="cpu", epochs=2)
RESUME = ["train", "--device", "cpu", "--epochs", "2", "--resume", "--quiet"]


# ---------------------------------------------------------------- 1. no code runs from a checkpoint

class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_does_not_run(tmp_path, capsys, data_root):
    marker = tmp_path / "marker"
    plain, wrapped = tmp_path / "plain", tmp_path / "wrapped"
    plain.mkdir()
    torch.save({"config": {}, "payload": _WritesMarker(marker)}, plain / "checkpoint.pt")
    # The same pickle inside our own format, with a correct digest: the digest says "unchanged", not "safe".
    body = io.BytesIO()
    torch.save(_WritesMarker(marker), body)
    wrapped.mkdir()
    torch.save({"format": checkpoint.FORMAT, "sha256": hashlib.sha256(body.getvalue()).hexdigest(),
                "state": torch.frombuffer(bytearray(body.getvalue()), dtype=torch.uint8)}, wrapped / "checkpoint.pt")
    for folder in (plain, wrapped):
        code, _, err = run_main(capsys, *RESUME, "--checkpoint-dir", folder, "--out", tmp_path / "r.json",
                                "--data-dir", data_root)
        one_line_error(code, err, str(folder / "checkpoint.pt"))
        assert not marker.exists(), f"code ran from {folder}"
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_the_notebook_run_cache_does_not_run_code_either(tmp_path, mnist):
    # A tenth of MNIST, one step an epoch: the cache's reading is what is tested, not the training.
    small = MNISTTensors(mnist.train_images[:6000], mnist.train_labels[:6000], mnist.test_images[:1000],
                         mnist.test_labels[:1000], mnist.root)
    config = PAPER.replace(device="cpu", epochs=1, batch_size=6000)
    cache = tmp_path / "cache"
    record, _ = nb.cached_run(config, cache, data=small, verbose=False)
    weights = Path(record["_path"]).with_suffix(".pt")
    marker = tmp_path / "marker"
    torch.save(_WritesMarker(marker), weights)
    again, model = nb.cached_run(config, cache, data=small, verbose=False)  # refused, trained again
    assert not marker.exists()
    assert checkpoint.load(weights).keys() == model.state_dict().keys()


# ---------------------------------------------------------------- 2. every number has a range, checked first

def test_absurd_epochs_and_seeds_are_refused_at_once(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"  # no MNIST: a check made after the data load would say "MNIST not found"
    # In a process of its own, with a time limit: e351dc1 hung here, building a list of 10**22 epochs.
    proc = run_cli("train", "--device", "cpu", "--out", tmp_path / "r.json", "--epochs", "1" + "0" * 22,
                   env={"HDR_DATA_DIR": empty}, timeout=60)
    one_line_error(proc.returncode, proc.stderr, "--epochs: must be an integer from 1 to 1,000")
    monkeypatch.setenv("HDR_DATA_DIR", str(empty))
    for argv, fragment in [(["--seed", "20000000000000"], "--seed: must be an integer from 0 to 4,294,967,295"),
                           (["--max-steps", "0"], "--max-steps: must be an integer from 1")]:
        code, _, err = run_main(capsys, "train", "--device", "cpu", "--out", tmp_path / "r.json", *argv)
        one_line_error(code, err, fragment)
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("name", ["epochs", "batch_size", "lr", "seed"])
def test_one_range_for_the_cli_the_notebooks_and_the_api(name, capsys):
    rule = RANGES[name]
    for value in (rule.high * 2 if rule.kind is float else rule.high + 1, rule.low - 1):
        code, _, err = run_main(capsys, "train", "--device", "cpu", f"--{name.replace('_', '-')}", value)
        one_line_error(code, err, rule.describe())
        with pytest.raises(ConfigError, match=f"parameter {name} must be"):
            nb.check_parameters(needs_data=False, **{name: value})
        with pytest.raises(ConfigError, match=f"{name} must be"):
            PAPER.replace(**{name: value}).validate()
    assert check(name, rule.high) == rule.high


def test_run_counts_of_the_api_are_checked_too(mnist, tmp_path, capsys):
    with pytest.raises(ConfigError, match="max_steps must be an integer"):
        train(CONFIG, data=mnist, max_steps=0)
    code, _, err = run_main(capsys, "replicate", "--device", "cpu", "--first-seed", RANGES["seed"].high, "--seeds", 2,
                            "--out-dir", tmp_path)
    one_line_error(code, err, "the last seed")
    code, _, err = run_main(capsys, "bench", "--device", "cpu", "--rounds", 100000, "--out", tmp_path / "b.json")
    one_line_error(code, err, "--rounds: must be an integer from 1 to 1,000")
    assert files_under(tmp_path) == set()


# ---------------------------------------------------------------- 3. output paths refused before any work

def _shapes(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not a record\n")
    return [
        (["train", "--out", tmp_path / "folder"], "is a folder"),
        (["train", "--out", tmp_path / "file.txt" / "r.json"], "is a file, not a folder"),
        (["train", "--out", tmp_path / "file.txt"], "is not a run record"),
        (["train", "--out", ""], "--out is empty"),
        (["train", "--out", tmp_path / ("x" * 300 + ".json")], "choose a shorter name"),
        (["train", "--out", "/proc/hdr-record.json"], "cannot write in /proc"),
        (["train", "--checkpoint-dir", tmp_path / "file.txt"], "is a file, not a folder"),
        (["train", "--checkpoint-dir", ""], "--checkpoint-dir is empty"),
        (["train", "--checkpoint-dir", tmp_path / "file.txt" / "ck"], "is a file, not a folder"),
        (["replicate", "--out-dir", tmp_path / "file.txt"], "is a file, not a folder"),
        (["replicate", "--out-dir", "/proc/hdr-records"], "cannot write in /proc"),
        (["bench", "--out", tmp_path / "folder"], "is a folder"),
        (["train", "--data-dir", ""], "--data-dir is empty"),
    ]


def test_impossible_output_paths_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    results = REPO / "results"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*")}
    monkeypatch.setenv("HDR_DATA_DIR", str(tmp_path / "no-mnist"))  # a later check would say "MNIST not found"
    for argv, fragment in _shapes(tmp_path):
        ahead = files_under(tmp_path)
        code, _, err = run_main(capsys, argv[0], "--device", "cpu", *argv[1:])
        one_line_error(code, err, fragment)
        assert files_under(tmp_path) == ahead, argv
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*")} == before
    assert not (tmp_path / "no-mnist").exists()


def test_reading_never_creates_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HDR_DATA_DIR", str(tmp_path / "elsewhere"))
    code, _, err = run_main(capsys, "train", "--device", "cpu", "--data-dir", tmp_path / "nope", "--out",
                            tmp_path / "r.json")
    one_line_error(code, err, "MNIST not found", str(tmp_path / "nope"), "given as the data folder")
    assert "$HDR_DATA_DIR" not in err  # 8: the path came from --data-dir, and the message says so
    with pytest.raises(DataError, match="given as the data folder"):
        nb.check_parameters(data_dir=str(tmp_path / "nonexistent"))
    assert files_under(tmp_path) == set()


# ---------------------------------------------------------------- 4. checkpoints: digest, structure, lock, faults

def test_a_flipped_bit_in_a_checkpoint_is_caught(tmp_path, capsys, data_root):
    state = train_state(CONFIG)
    checkpoint.save(tmp_path / "checkpoint.pt", state)
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] == 1
    raw = bytearray((tmp_path / "checkpoint.pt").read_bytes())
    weights = state["model"]["conv1.weight"].numpy().tobytes()
    at = raw.find(weights)
    assert at > 0
    raw[at + len(weights) // 2] ^= 0x04  # one bit of one weight
    (tmp_path / "checkpoint.pt").write_bytes(bytes(raw))
    code, _, err = run_main(capsys, *RESUME, "--checkpoint-dir", tmp_path, "--out", tmp_path / "r.json",
                            "--data-dir", data_root)
    one_line_error(code, err, "fails its SHA-256 check")
    assert not (tmp_path / "r.json").exists()


def _wrong_shape():
    state = train_state(CONFIG)
    state["model"]["conv1.weight"] = torch.zeros(3, 3)
    return state


@pytest.mark.parametrize("content, fragment", [
    (lambda: [1, 2, 3], "holds a list"),
    (lambda: {k: v for k, v in train_state(CONFIG).items() if k != "optimizer"}, "lacks 'optimizer'"),
    (_wrong_shape, "does not fit this model (first difference: conv1.weight)"),
    (lambda: {**train_state(CONFIG), "epoch": 5}, "says epoch 5 but holds 1"),
])
def test_a_checkpoint_of_the_wrong_structure_is_one_line(tmp_path, capsys, data_root, content, fragment):
    checkpoint.save(tmp_path / "checkpoint.pt", content())
    code, _, err = run_main(capsys, *RESUME, "--checkpoint-dir", tmp_path, "--out", tmp_path / "r.json",
                            "--data-dir", data_root)
    one_line_error(code, err, fragment)


def test_truncated_and_foreign_checkpoints_are_one_line(tmp_path, capsys, data_root):
    checkpoint.save(tmp_path / "checkpoint.pt", train_state(CONFIG))
    data = (tmp_path / "checkpoint.pt").read_bytes()
    for content, fragment in [(data[:len(data) // 2], "corrupt, truncated"), (b"", "corrupt, truncated"),
                              (b"{}", "corrupt, truncated")]:
        (tmp_path / "checkpoint.pt").write_bytes(content)
        code, _, err = run_main(capsys, *RESUME, "--checkpoint-dir", tmp_path, "--out", tmp_path / "r.json",
                                "--data-dir", data_root)
        one_line_error(code, err, fragment)
    torch.save(train_state(CONFIG), tmp_path / "checkpoint.pt")  # the old format: no digest
    code, _, err = run_main(capsys, *RESUME, "--checkpoint-dir", tmp_path, "--out", tmp_path / "r.json",
                            "--data-dir", data_root)
    one_line_error(code, err, "with a digest")


def test_a_second_live_run_on_one_checkpoint_folder_is_refused(tmp_path, capsys, data_root):
    folder = tmp_path / "ck"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hdr_lib.paths import FolderLock; "
                               f"FolderLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_main(capsys, "train", "--device", "cpu", "--checkpoint-dir", folder, "--out",
                                tmp_path / "r.json", "--data-dir", data_root, "--max-steps", 1, "--quiet")
        one_line_error(code, err, f"is in use by another run (pid {holder.pid})")
        assert not (tmp_path / "r.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert set(os.listdir(folder)) == {paths.LOCK_NAME}


@pytest.mark.parametrize("kind", ["checkpoint folder", "record"])
def test_a_lock_refuses_a_live_holder_not_a_dead_one(tmp_path, kind):
    """Both locks (one code, paths.WriteLock): a live holder in another process refuses a second with its pid; a
    holder killed without releasing leaves its lock file, which does not block. In this process the record's lock
    may be taken again (a replicate's folder, then its records), the checkpoint folder's may not."""
    folder = kind == "checkpoint folder"
    target = tmp_path / ("ck" if folder else "run.json")
    make = f"paths.FolderLock({str(target)!r})" if folder else f"paths.WriteLock({str(target)!r}, 'record')"
    busy = "is in use by another run" if folder else "is being written by another run"

    def lock():
        return paths.FolderLock(target) if folder else paths.WriteLock(target, "record")

    holder = subprocess.Popen([sys.executable, "-c", f"import time; from hdr_lib import paths; {make}.acquire(); "
                               "print('locked', flush=True); time.sleep(120)"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(paths.PathError, match=f"{busy} \\(pid {holder.pid}\\)"):
            lock().acquire()
    finally:
        holder.kill()  # SIGKILL: no release, its lock file stays
        holder.wait()
    assert lock().file.read_text() == str(holder.pid)
    with lock() as mine:
        assert mine.file.read_text() == str(os.getpid())
        again = lock()
        if folder:
            with pytest.raises(paths.PathError, match=f"{busy} \\(pid {os.getpid()}\\)"):
                again.acquire()
        else:
            with again:
                assert again.held
            assert mine.file.exists()  # still held by the first
    assert mine.file.exists() == folder  # a record's lock file goes with its last release; a checkpoint folder's stays


def _file_size_limit(limit):
    def preexec():  # a file system that fills up after `limit` bytes: writes beyond it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, data_root):
    # A checkpoint (~0.4 MB) does not fit in 100 kB; a record (a few kB) does not fit in 1 kB.
    ck = tmp_path / "ck"
    common = ["train", "--device", "cpu", "--max-steps", "2", "--batch-size", "32", "--quiet", "--data-dir", data_root]
    env = {"HDR_NATIVE": "0"}
    proc = run_cli(*common, "--out", tmp_path / "a.json", "--checkpoint-dir", ck, env=env,
                   preexec_fn=_file_size_limit(100_000))
    one_line_error(proc.returncode, proc.stderr, f"cannot write checkpoint {ck / 'checkpoint.pt'}", "File too large",
                   "free disk space")
    assert set(os.listdir(ck)) == {paths.LOCK_NAME}  # no partial temporary file
    proc = run_cli(*common, "--out", tmp_path / "b.json", env=env, preexec_fn=_file_size_limit(1000))
    one_line_error(proc.returncode, proc.stderr, f"cannot write run record {tmp_path / 'b.json'}", "File too large")
    assert sorted(os.listdir(tmp_path)) == ["a.json", "ck"]


# ---------------------------------------------------------------- 5. unreadable inputs

def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, capsys, data_root):
    folder = raw_folder(tmp_path)
    folder.mkdir(parents=True)
    for name in NAMES:
        os.symlink(raw_folder(data_root) / name, folder / name)
    bad = folder / NAMES[1]
    bad.unlink()
    if os.geteuid() == 0:  # root reads any file: a file whose read fails for every user instead
        os.symlink("/proc/self/mem", bad)
    else:
        bad.write_bytes((raw_folder(data_root) / NAMES[1]).read_bytes())
        bad.chmod(0)
    code, _, err = run_main(capsys, "train", "--device", "cpu", "--data-dir", tmp_path, "--out", tmp_path / "r.json")
    one_line_error(code, err, f"cannot read MNIST file {bad}")
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- 6. strict JSON, a diverged run said so

def _strict(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_records_are_strict_json_with_the_reason_beside_a_null(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"loss": float("nan"), "epochs": [{"x": float("inf")}],
                                            "t": torch.tensor(float("-inf"))})
    record = _strict((tmp_path / "r.json").read_text())
    assert record == {"loss": None, "loss_not_finite": "nan", "epochs": [{"x": None, "x_not_finite": "inf"}],
                      "t": None, "t_not_finite": "-inf"}
    with pytest.raises(RecordError, match="cannot write run record"):
        write_json_atomic("/proc/r.json", {})


def test_a_diverged_run_says_so_and_its_record_is_strict_json(tmp_path, capsys, data_root):
    code, out, err = run_main(capsys, "train", "--device", "cpu", "--lr", 10000, "--max-steps", 3, "--quiet",
                              "--data-dir", data_root, "--out", tmp_path / "r.json")
    assert code == 1 and "the run diverged: train loss became nan in epoch 1" in err, err
    record = _strict((tmp_path / "r.json").read_text())
    assert record["epochs"][0]["train_loss"] is None and record["epochs"][0]["train_loss_not_finite"] == "nan"
    assert "diverged" in record


# ---------------------------------------------------------------- 7. a typo in a notebook parameter stops it

def test_an_unknown_notebook_parameter_stops_the_check():
    with pytest.raises(ConfigError, match="unknown parameter 'epoch' \\(did you mean 'epochs'\\?\\)"):
        nb.check_parameters(needs_data=False, injected=["epoch"])
    assert nb.check_parameters(needs_data=False, injected=["epochs", "bench_steps"], bench_steps=5) == PAPER


@pytest.mark.slow
def test_papermill_with_a_misspelt_parameter_stops_in_the_check_cell(tmp_path):
    import nbformat
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as caught:
        pm.execute_notebook(str(REPO / "notebooks" / "01_introduction.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"epoch": 1}, cwd=str(REPO / "notebooks"), kernel_name="python3",
                            progress_bar=False)
    assert caught.value.ename == "ConfigError" and "unknown parameter 'epoch'" in caught.value.evalue
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    failed = [c for c in cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "nb.check_parameters(" in failed[0].source


# ---------------------------------------------------------------- 8. messages that are true

def test_usage_errors_are_one_line(capsys):
    for argv in (["train", "--epochs", "x"], ["train", "--bogus"], [], ["train", "--device", "tpu"]):
        code, out, err = run_main(capsys, *argv)
        one_line_error(code, err)
        assert "usage:" not in err and out == ""


def test_an_interrupt_before_the_record_says_no_record_and_no_resume(tmp_path, capsys, monkeypatch):
    import hdr_lib.data

    def interrupted(*args, **kwargs):  # Ctrl-C while MNIST loads
        raise KeyboardInterrupt

    monkeypatch.setattr(hdr_lib.data, "load_mnist", interrupted)
    code, _, err = run_main(capsys, "train", "--device", "cpu", "--out", tmp_path / "r.json", "--quiet")
    assert code == 130 and "no record was written" in err and "--resume" not in err, err
    code, _, err = run_main(capsys, "train", "--device", "cpu", "--out", tmp_path / "r.json", "--quiet",
                            "--checkpoint-dir", tmp_path / "ck")
    assert code == 130 and f"--resume and --checkpoint-dir {tmp_path / 'ck'}" in err, err


@pytest.mark.slow
def test_sigint_during_training_names_the_record_it_wrote(tmp_path, data_root):
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "hdr_lib", "train", "--device", "cpu", "--epochs", "3",
                             "--quiet", "--out", str(out), "--data-dir", str(data_root)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored, and then Python never turns it
                            # into KeyboardInterrupt: give the run the default handling a terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no record appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"the record {out} says status 'incomplete'" in err, err
    assert "--resume" not in err and "Traceback" not in err
    assert _strict(out.read_text())["status"] == "incomplete"


def test_a_notebook_cache_error_names_the_parameter(tmp_path):
    with pytest.raises(ConfigError) as caught:
        nb.check_parameters(needs_data=False, cache_dir="/proc/hdr-cache")
    assert "parameter cache_dir" in str(caught.value) and "--" not in str(caught.value)
