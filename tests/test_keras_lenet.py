"""The paper's framework beside ours (hdr_lib.keras_lenet): the same network, weights and batches in Keras 3.

Keras reads its backend once per process, so each backend runs in a subprocess. The tolerances are float32's, as
measured on the 2-core CI machine (AMD EPYC, 2026-12-01): the first forward pass differs from PyTorch's by at most
3e-8 (logits of magnitude 0.14) on every backend; after 100 steps the losses differ from the reference path's by
at most 4.6e-5 on TensorFlow and on PyTorch under Keras and 4.8e-7 on JAX (identical to 2.4e-7 for the first 70
steps, then rounding differences grow as they do between any two float32 implementations). The bounds below are
about ten times those.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hdr_lib import keras_lenet, paper
from hdr_lib.config import PAPER
from hdr_lib.measure import queries
from hdr_lib.measure.evidence import is_headline
from hdr_lib.measure.records import read_record
from hdr_lib.measure.replicate import record_name
from hdr_lib.train import init_model

from conftest import REPO

FORWARD_TOLERANCE = 1e-6
LOSS_TOLERANCE = 5e-4
STEPS = 100

_NEEDS = {"keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
BACKENDS = [pytest.param(framework, marks=pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec(module) is None,
    reason=f"keras or {module} is not installed (requirements.txt pins them)")) for framework, module in _NEEDS.items()]


def run(args, timeout=600, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


@pytest.fixture(scope="module")
def reference_losses(data_root):
    return np.array(keras_lenet.reference_losses(steps=STEPS, data_root=data_root))


def test_fc1_columns_follow_keras_flatten_order():
    """Without Keras: fc1's converted kernel applied to a feature map flattened H, W, C (Keras, channels last) gives
    what PyTorch's fc1 gives on the same map flattened C, H, W."""
    model = init_model(PAPER, torch.device("cpu"))
    weights = keras_lenet.torch_weights_to_keras(model)
    assert weights["conv1"][0].shape == (5, 5, 1, 6) and weights["conv2"][0].shape == (5, 5, 6, 16)
    assert weights["fc1"][0].shape == (256, 120) and weights["fc3"][0].shape == (84, 10)
    feature_map = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        expected = model.fc1(feature_map.flatten(1)).numpy()
    got = feature_map.permute(0, 2, 3, 1).reshape(3, -1).numpy() @ weights["fc1"][0] + weights["fc1"][1]
    assert np.abs(got - expected).max() < FORWARD_TOLERANCE
    unpermuted = feature_map.permute(0, 2, 3, 1).reshape(3, -1).numpy() @ model.fc1.weight.detach().T.numpy()
    assert np.abs(unpermuted + weights["fc1"][1] - expected).max() > 1e-2  # the permutation matters


@pytest.fixture(scope="module", params=BACKENDS)
def backend_run(request, tmp_path_factory):
    """One process per backend (Keras takes one backend per process, and its import is most of the time): the
    first forward pass and 100 steps of the loop way (keras_lenet.first_steps), then the command line's train with
    model.fit for 20 steps of 256 images, then its bench for 5 steps of each way."""
    framework = request.param
    folder = tmp_path_factory.mktemp(framework)
    out, bench_out = folder / "record.json", folder / "bench.json"
    argv = ["train", "--framework", framework, "--device", "cpu", "--epochs", "1", "--max-steps", "20",
            "--batch-size", "256", "--out", str(out), "--quiet"]
    bench_argv = ["bench", "--framework", framework, "--device", "cpu", "--rounds", "2", "--max-steps", "5",
                  "--batch-size", "256", "--out", str(bench_out), "--quiet"]
    code = ("import json; from hdr_lib import keras_lenet; from hdr_lib.cli import main; "
            f"result = keras_lenet.first_steps({framework!r}, steps={STEPS}); result['cli_exit'] = main({argv!r}); "
            f"result['bench_exit'] = main({bench_argv!r}); print(json.dumps(result))")
    proc = run(["-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["bench_out"] = str(bench_out)
    return framework, result, out


@pytest.mark.slow  # a process per Keras backend that trains 100 steps and runs the command line
def test_same_start_and_same_first_100_steps_as_the_reference_path(backend_run, reference_losses):
    _, out, _ = backend_run
    assert out["parameters"] == 44_426  # §3.3
    assert out["forward_max_abs_diff"] < FORWARD_TOLERANCE, out
    assert out["forward_logit_scale"] > 100 * FORWARD_TOLERANCE  # the logits are not all zero
    losses = np.array(out["step_losses"])
    assert losses.shape == reference_losses.shape == (STEPS,)
    assert np.abs(losses - reference_losses).max() < LOSS_TOLERANCE
    assert losses[-1] < losses[0]  # it trains


@pytest.mark.slow  # a process per Keras backend that trains 100 steps and runs the command line
def test_cli_one_epoch_cut_short_writes_a_record_of_the_framework(backend_run):
    framework, result, out = backend_run
    assert result["cli_exit"] == 0  # a --max-steps check that ran: exit 0, its record says incomplete
    record = read_record(out)
    env = record["environment"]
    assert env["framework"] == framework and env["keras_backend"] == _NEEDS[framework]
    assert env["keras"] and env["backend_version"] and len(env["load_average"]) == 3
    assert record["execution"]["framework"] == framework and record["execution"]["keras_way"] == "fit"
    assert record["config"]["path"] == f"{framework}-fit" and record["config"]["batch_size"] == 256
    (epoch,) = record["epochs"]
    assert epoch["steps"] == 20 and epoch["train_seconds"] > 0 and epoch["eval_seconds"] > 0
    assert np.isfinite(epoch["train_loss"]) and 0 <= epoch["test_accuracy"] <= 100
    assert record["status"] == "incomplete" and record["max_steps"] == 20
    assert not is_headline(record)  # shown beside the PyTorch runs, never pooled with them


@pytest.mark.slow  # a process per Keras backend that trains 100 steps and runs the command line
def test_bench_alternates_the_framework_ways_with_the_pytorch_paths(backend_run):
    framework, result, _ = backend_run
    assert result["bench_exit"] == 0
    record = read_record(result["bench_out"])
    ways = [f"{framework} fit", f"{framework} loop"]
    assert list(record["runs"]) == ["reference", "fast", *ways]
    assert record["config"]["framework"] == framework and record["config"]["keras_ways"] == ["fit", "loop"]
    for name, runs in record["runs"].items():
        assert [run["round"] for run in runs] == [1, 2]
        assert all(run["train_seconds"] > 0 and 0 <= run["test_accuracy"] <= 100 for run in runs)
    for way, name in zip(("fit", "loop"), ways):
        assert {run["execution"]["keras_way"] for run in record["runs"][name]} == {way}
    assert record["runs"]["fast"][0]["execution"].get("framework", "torch") == "torch"
    assert set(record["speedup_over_reference"]) == {"fast", *ways}
    assert set(record["ceiling"]["gflops"]) == {"reference", "fast", *ways}
    assert record["status"] == "incomplete" and record["max_steps"] == 5


@pytest.mark.parametrize("args, fragment", [
    (["--keras-way", "loop"], "--keras-way applies to a Keras --framework only"),
    (["--framework", "keras-jax", "--amp", "bf16"], "--amp bf16 applies to the PyTorch runs only"),
    (["--framework", "keras-tensorflow", "--keras-way", "eager"], "invalid choice: 'eager'"),
])
def test_bench_refuses_bad_framework_input_before_any_work(args, fragment, tmp_path, capsys):
    from hdr_lib.cli import main

    out = tmp_path / "bench.json"
    try:
        status = main(["bench", "--device", "cpu", "--rounds", "1", *args, "--out", str(out), "--quiet"])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and fragment in err and "Traceback" not in err
    assert not out.exists() and sys.modules.get("keras") is None


def test_record_names_do_not_collide():
    torch_name = record_name(PAPER, "cpu")
    names = {record_name(PAPER, "cpu", f, w) for f in _NEEDS for w in keras_lenet.KERAS_WAYS}
    assert len(names) == 6 and torch_name not in names
    assert record_name(PAPER, "cpu", "keras-tensorflow", "fit") == "cpu-keras-tensorflow-fit-e20-b64-seed0.json"


@pytest.mark.parametrize("args, fragment", [
    (["--framework", "bogus"], "invalid choice: 'bogus'"),
    (["--framework", "keras-tensorflow", "--keras-way", "eager"], "invalid choice: 'eager'"),
    (["--framework", "keras-jax", "--amp"], "--amp bf16 applies to the PyTorch runs only"),
    (["--framework", "keras-tensorflow", "--path", "reference"], "--path reference applies to the PyTorch runs"),
    (["--framework", "keras-torch", "--device", "cuda"], "runs on the CPU here"),
    (["--framework", "keras-tensorflow", "--resume", "--checkpoint-dir", "ck"], "apply to the PyTorch runs only"),
    (["--framework", "keras-tensorflow", "--max-steps", "0"], "argument --max-steps: must be an integer from 1"),
])
def test_bad_input_is_one_clear_error_and_exit_2(args, fragment, tmp_path, capsys):
    """In this process: each of these is refused before Keras is imported or anything is read."""
    from hdr_lib.cli import main

    out = tmp_path / "record.json"
    try:
        status = main(["train", "--device", "cpu", *args, "--out", str(out), "--quiet"])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and fragment in err and "Traceback" not in err
    assert not out.exists() and sys.modules.get("keras") is None  # refused before Keras was imported


@pytest.mark.parametrize("command", [["train", "--out", "unused.json"], ["replicate", "--out-dir", "unused"],
                                     ["bench", "--out", "unused.json"]])
def test_framework_not_installed_is_one_line_and_exit_2(command, tmp_path, monkeypatch, capsys):
    """Keras made unimportable (as on the GPU machine, which has only torch and torchvision)."""
    from hdr_lib.cli import main

    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.chdir(tmp_path)
    status = main(command + ["--framework", "keras-tensorflow", "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert "needs keras and tensorflow-cpu" in lines[0] and "pip install" in lines[0]
    assert not (tmp_path / "unused.json").exists() and not (tmp_path / "unused").exists()


def _record(framework="torch", way="fast", seconds=100.0, accuracy=99.0, seed=0):
    from hdr_lib.measure.records import SCHEMA

    config = {**PAPER.as_dict(), "device": "cpu", "seed": seed,
              "path": way if framework == "torch" else f"{framework}-{way}"}
    config.update(framework="pytorch") if framework == "torch" else config.update(framework=framework, keras_way=way)
    return {"schema": SCHEMA, "kind": "train", "status": "complete", "config": config, "deviations_from_paper": {},
            "environment": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "gpu": None, "keras": "3.x",
                            "backend_version": "2.x", "keras_backend": "tensorflow", "load_average": [3.0, 2.0, 1.0],
                            "created_at": "2026-12-01T08:00:00+00:00", "session": "s"}, "execution": {},
            "epochs": [{"epoch": e} for e in range(1, 21)], "total_train_seconds": seconds, "test_accuracy": accuracy,
            "memory": {}, "utilisation": {"gpu": {"utilisation_mean_percent": None, "reason": "CPU run: no GPU"}}}


def test_scorecard_shows_tensorflow_beside_the_pytorch_cpu_time_without_scoring_it():
    from hdr_lib.book import scorecard

    torch_runs = [_record(seconds=20.0 + i, seed=i) for i in range(3)]
    keras_runs = [_record("keras-tensorflow", "fit", seconds=s, seed=i) for i, s in enumerate((300.0, 360.0))]
    others = [_record("keras-jax", "fit", seconds=50.0), _record("keras-tensorflow", "loop", seconds=10.0)]
    rows = {r.claim.key: r for r in scorecard.scorecard(torch_runs + keras_runs + others)}
    assert rows["cpu_time"].cells["fast"].measured["n"] == 3  # the Keras runs are not pooled with PyTorch's
    assert rows["cpu_time"].cells["fast"].measured["mean"] == pytest.approx(21.0)
    beside = rows["cpu_time"].beside
    assert beside["n"] == 2 and beside["mean"] == pytest.approx(330.0) and beside["load_average"] == 3.0
    # The scorecard page states it in a line under the table, from `beside` (its notes stay short).
    assert rows["cpu_accuracy"].beside is None
    assert scorecard.scorecard(torch_runs)[0].beside is None


def test_scorecard_cpu_cells_are_the_machine_that_ran_tensorflow_beside_them():
    """Machine A has the most PyTorch runs; machine B ran chapter 10's comparison (PyTorch and Keras/TensorFlow in
    one session): every CPU cell, both paths, is B's, the CPU the Keras/TensorFlow time beside them comes from."""
    from hdr_lib.book import scorecard

    def on(cpu, record):
        record["environment"] = {**record["environment"], "cpu": cpu, "session": cpu}
        return record

    a = [on("CPU A", _record(way=way, seconds=20.0 + i, seed=i)) for way in ("fast", "reference") for i in range(5)]
    b = [on("CPU B", _record(way=way, seconds=s, seed=0)) for way, s in (("fast", 130.0), ("reference", 330.0))]
    tf = [on("CPU B", _record("keras-tensorflow", "fit", seconds=300.0))]
    rows = {r.claim.key: r for r in scorecard.scorecard(a + b + tf)}
    for key in ("cpu_time", "cpu_accuracy"):
        for path, cell in rows[key].cells.items():
            assert "CPU B" in cell.hardware and "CPU A" not in cell.hardware and cell.measured["n"] == 1, (key, path)
    assert rows["cpu_time"].cells["reference"].measured["mean"] == pytest.approx(330.0)
    assert "CPU B" in rows["cpu_time"].beside["hardware"]
    # Without the Keras run, or where its CPU ran no PyTorch run or the runs of one path only, the most runs: A.
    for runs in (a + b, a + tf, a + b[:1] + tf):
        cell = next(r for r in scorecard.scorecard(runs) if r.claim.key == "cpu_time").cells["fast"]
        assert "CPU A" in cell.hardware and cell.measured["n"] == 5


def test_chapter_rows_group_by_framework_and_way(tmp_path):
    import json

    from hdr_lib.book import figures
    from hdr_lib.measure import frameworks

    runs = ([_record(seconds=20.0 + i, seed=i) for i in range(2)]
            + [_record("keras-tensorflow", "fit", seconds=s, accuracy=98.9 + i / 10, seed=i)
               for i, s in enumerate((300.0, 340.0))])
    for i, record in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(record))
    table = frameworks.rows(tmp_path)
    assert [row["key"] for row in table] == ["keras-tensorflow fit", "pytorch fast"]
    tf = table[0]
    assert tf["n"] == 2 and tf["seconds_per_epoch"]["mean"] == pytest.approx(16.0)
    assert tf["gflops"] == pytest.approx(frameworks.training_flops()["train_flops_per_epoch"] / 16.0 / 1e9)
    assert paper.CPU_SECONDS / tf["total_seconds"]["mean"] == pytest.approx(11.25)  # chapter 10: "11.2 times faster"
    assert queries.recorded(tmp_path, "keras-equivalence") == []  # chapter 10: "not yet measured"
    assert len(figures.frameworks_figure(table).data) == 2


def test_the_chapter_compares_within_one_session_and_shows_every_session_apart(tmp_path):
    import json

    from hdr_lib.measure import frameworks

    def run(framework, way, seconds, session, created, seed=0):
        record = _record(framework, way, seconds=seconds, seed=seed)
        record["environment"].update(session=session, created_at=created)
        return record

    loaded = [run("keras-tensorflow", "fit", s, "loaded", f"2026-12-01T08:0{i}:00+00:00", seed=i)
              for i, s in enumerate((900.0, 1000.0, 800.0))]
    quiet = [run("keras-tensorflow", "fit", 300.0, "quiet", "2026-12-01T11:00:00+00:00"),
             run("keras-jax", "fit", 200.0, "quiet", "2026-12-01T11:10:00+00:00"),
             run("torch", "fast", 130.0, "quiet", "2026-12-01T11:20:00+00:00")]
    for i, record in enumerate(loaded + quiet):
        (tmp_path / f"r{i}.json").write_text(json.dumps(record))
    # The comparison is the session that ran the most frameworks and ways, whatever has the most seeds.
    assert frameworks.comparison_session(tmp_path) == "quiet"
    table = frameworks.rows(tmp_path, session="quiet")
    tf = next(row for row in table if row["key"] == "keras-tensorflow fit")
    assert tf["n"] == 1 and tf["total_seconds"]["mean"] == pytest.approx(300.0)
    assert paper.CPU_SECONDS / tf["total_seconds"]["mean"] == pytest.approx(12.0)
    # Apart: the loaded session's three seeds are a row of their own, never pooled with the quiet run.
    apart = frameworks.rows_by_session(tmp_path)
    assert [(row["sessions"], row["key"], row["n"]) for row in apart] == [
        (["loaded"], "keras-tensorflow fit", 3), (["quiet"], "keras-tensorflow fit", 1),
        (["quiet"], "keras-jax fit", 1), (["quiet"], "pytorch fast", 1)]
    # The scorecard's CPU-time row shows the same comparison's Keras/TensorFlow time, not the loaded session's.
    from hdr_lib.book import scorecard

    beside = next(r for r in scorecard.scorecard(loaded + quiet) if r.claim.key == "cpu_time").beside
    assert (beside["n"], beside["mean"], beside["session"]) == (1, pytest.approx(300.0), "quiet")
