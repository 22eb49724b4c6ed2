"""Trained weights: `train --weights-out` saves the state dict and names it (SHA-256) in the record; `evaluate`
measures it on MNIST's real test set and agrees with that record; anything that is not this network's weights is
one line and exit 2, with nothing in the file executed."""

import hashlib
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import REPO


def hdr(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "hdr_lib", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real run of the fast path on the CPU (200 steps), its weights and its record."""
    folder = tmp_path_factory.mktemp("run")
    proc = hdr("train", "--device", "cpu", "--epochs", "1", "--max-steps", "200", "--quiet",
               "--out", str(folder / "record.json"), "--weights-out", str(folder / "w.pt"))
    assert proc.returncode == 0, proc.stderr
    return folder, json.loads((folder / "record.json").read_text())


@pytest.mark.slow
def test_the_record_names_the_weights_by_sha256(trained):
    folder, record = trained
    entry = record["weights"]
    assert entry["format"] == "torch-state-dict"
    assert entry["sha256"] == hashlib.sha256((folder / "w.pt").read_bytes()).hexdigest()
    assert entry["file"].endswith("w.pt")
    state = torch.load(folder / "w.pt", weights_only=True)
    assert sorted(state) == sorted(n for n, _ in __import__("hdr_lib.model", fromlist=["LeNet5"]).LeNet5().named_parameters())


@pytest.mark.slow
def test_evaluate_gives_the_accuracy_its_record_states(trained):
    folder, record = trained
    assert record["test_accuracy"] > 50  # 200 steps of SGD learn something: the weights are not the initial ones
    proc = hdr("evaluate", "--weights", str(folder / "w.pt"), "--results", str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"test accuracy {record['test_accuracy']:.2f} %" in proc.stdout
    assert "agrees with its record" in proc.stdout


@pytest.mark.slow
def test_evaluate_says_when_its_record_disagrees(trained, tmp_path):
    folder, record = trained
    (tmp_path / "w.pt").write_bytes((folder / "w.pt").read_bytes())
    (tmp_path / "record.json").write_text(json.dumps({**record, "test_accuracy": record["test_accuracy"] - 5}))
    proc = hdr("evaluate", "--weights", str(tmp_path / "w.pt"), "--results", str(tmp_path))
    assert proc.returncode == 1 and "DIFFERS from its record" in proc.stdout, proc.stdout + proc.stderr


class _Payload:
    """A pickle that would create a file when unpickled: torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(tmp_path):
    good = {k: v.clone() for k, v in __import__("hdr_lib.model", fromlist=["LeNet5"]).LeNet5().state_dict().items()}
    buffer = tmp_path / "good.pt"
    torch.save(good, buffer)
    data = buffer.read_bytes()
    files = {"random.pt": os.urandom(4096), "truncated.pt": data[: len(data) // 2], "empty.pt": b""}
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    marker = tmp_path / "executed"
    with open(tmp_path / "code.pt", "wb") as f:
        pickle.dump({"conv1.weight": _Payload(str(marker))}, f)
    torch.save(torch.nn.Linear(784, 10).state_dict(), tmp_path / "other_network.pt")
    torch.save(torch.zeros(3), tmp_path / "a_tensor.pt")
    nan = dict(good, **{"fc3.bias": torch.full((10,), float("nan"))})
    torch.save(nan, tmp_path / "nan.pt")
    wrong_shape = dict(good, **{"fc1.weight": torch.zeros(120, 300)})
    torch.save(wrong_shape, tmp_path / "wrong_shape.pt")
    return marker, [*files, "code.pt", "other_network.pt", "a_tensor.pt", "nan.pt", "wrong_shape.pt"]


def test_hostile_files_are_refused_in_one_line(tmp_path):
    marker, names = _hostile(tmp_path)
    for name in [*names, "missing.pt"]:
        proc = hdr("evaluate", "--weights", str(tmp_path / name), "--results", str(tmp_path))
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, (name, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, (name, proc.stderr)
    assert not marker.exists(), "a pickle in a weights file ran code"


def test_weights_out_is_refused_where_there_are_no_lenet_weights(tmp_path):
    out = tmp_path / "record.json"
    proc = hdr("train", "--device", "cpu", "--model", "resnet", "--max-steps", "1", "--quiet", "--out", str(out),
               "--weights-out", str(tmp_path / "w.pt"))
    assert proc.returncode == 2 and "--weights-out" in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "w.pt").exists()


@pytest.mark.slow
def test_every_committed_weights_file_evaluates_to_its_records_accuracy():
    # results/weights/*.pt (scripts/train_published_weights.sh): each named by exactly the records that state its
    # accuracy, and that accuracy is what the file gives on the test set now. No stray file without a record.
    from hdr_lib import weights

    named = {r["weights"]["file"]: r for r in weights.published(REPO / "results")}
    files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "results").rglob("*.pt"))
    assert sorted(named) == files, "every committed weights file needs the record that names it, and back"
    for file, record in named.items():
        assert weights.sha256_of(REPO / file) == record["weights"]["sha256"], file
        model, _ = weights.load(REPO / file)
        assert abs(weights.test_accuracy(model) - record["test_accuracy"]) <= weights.ACCURACY_TOLERANCE, file
