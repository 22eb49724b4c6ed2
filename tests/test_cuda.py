"""The CUDA fast path on a real GPU: CUDA graphs replay the eager steps, the Triton step trains as PyTorch's kernels
do, the graph reads the learning rate as it decays, runs resume and compile, and the record holds the GPU's
measurements (tests/test_triton_step.py checks the Triton step's gradients, on the GPU there). Every test here
needs a GPU and skips without one; scripts/gpu_replication.sh runs this file on the GPU machine (plain torch and
pytest) and keeps its log."""

import os
import subprocess
import sys

import pytest
import torch

from hdr_lib import PAPER
from hdr_lib.measure import queries
from hdr_lib.measure.records import read_record
from hdr_lib.train import init_model, train, train_model

from conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

CUDA = PAPER.replace(device="cuda")
STEPS = 938  # per epoch at batch 64: 937 full batches and one of 32


def _losses(record):
    return torch.tensor(record["step_losses"])


def test_cuda_starts_from_the_cpu_weights_and_tracks_the_cpu_losses(mnist):
    cpu = init_model(CUDA.replace(seed=4), torch.device("cpu"))
    gpu = init_model(CUDA.replace(seed=4), torch.device("cuda"))
    assert all(torch.equal(x, y.cpu()) for x, y in zip(cpu.parameters(), gpu.parameters()))
    a = train(CUDA.replace(seed=4, device="cpu"), data=mnist, progress=False, max_steps=50, keep_step_losses=True)
    b = train(CUDA.replace(seed=4), data=mnist, progress=False, max_steps=50, keep_step_losses=True)
    assert b["execution"]["cuda_steps"] == {"graph-epoch": 0, "graph-step": 50, "eager": 0}
    torch.testing.assert_close(_losses(a), _losses(b), rtol=1e-3, atol=1e-3)


def test_an_epoch_graph_replays_the_eager_steps(mnist):
    config = CUDA.replace(epochs=2, seed=1)
    graphed = train(config, data=mnist, progress=False, keep_step_losses=True)
    eager = train(config.replace(cuda_graph=False), data=mnist, progress=False, keep_step_losses=True)
    execution = graphed["execution"]
    assert execution["cuda_graph_error"] is None
    assert execution["cuda_steps"] == {"graph-epoch": 2 * STEPS, "graph-step": 0, "eager": 0}
    assert eager["execution"]["cuda_steps"] == {"graph-epoch": 0, "graph-step": 0, "eager": 2 * STEPS}
    assert graphed["setup_seconds"]["cuda_graph_capture"] > 0 and eager["setup_seconds"]["cuda_graph_capture"] == 0
    a, b = _losses(graphed), _losses(eager)
    assert a.shape == (2 * STEPS,) and a[0] > 2.2
    # The same kernels in the same order; cuDNN's backward may sum in another order from run to run.
    torch.testing.assert_close(a[:200], b[:200], rtol=1e-4, atol=1e-4)
    assert abs(graphed["test_accuracy"] - eager["test_accuracy"]) < 0.5
    assert graphed["test_accuracy"] > 97


def test_the_triton_step_trains_as_pytorchs_kernels_do(mnist):
    config = CUDA.replace(epochs=1, seed=6)
    triton = train(config, data=mnist, progress=False, keep_step_losses=True)
    aten = train(config.replace(triton=False), data=mnist, progress=False, keep_step_losses=True)
    assert triton["execution"]["cuda_kernels"] == "triton", triton["execution"]["triton_unavailable"]
    assert aten["execution"]["cuda_kernels"] == "aten"
    assert triton["setup_seconds"]["triton_step"] > 0 and aten["setup_seconds"]["triton_step"] == 0
    assert triton["execution"]["cuda_steps"]["graph-epoch"] == STEPS
    torch.testing.assert_close(_losses(triton)[:100], _losses(aten)[:100], rtol=1e-3, atol=1e-3)
    assert abs(triton["test_accuracy"] - aten["test_accuracy"]) < 0.5


def test_the_graph_reads_the_learning_rate_as_it_decays(mnist):
    # With a decay of 1e-9 after epoch 1, epoch 2 must leave the weights where epoch 1 left them. A graph that
    # kept reading epoch 1's lr would move them as much as epoch 1 did.
    _, one = train_model(CUDA.replace(epochs=1, seed=2), data=mnist, progress=False)
    record, two = train_model(CUDA.replace(epochs=2, seed=2, lr_step_epochs=1, lr_gamma=1e-9), data=mnist,
                              progress=False)
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([0.01, 1e-11])
    assert record["execution"]["cuda_steps"]["graph-epoch"] == 2 * STEPS
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    _, moved = train_model(CUDA.replace(epochs=2, seed=2, lr_step_epochs=1, lr_gamma=1.0), data=mnist,
                           progress=False)
    assert max((a - b).abs().max().item() for a, b in zip(one.parameters(), moved.parameters())) > 1e-3


def test_a_resumed_cuda_run_ends_where_an_uninterrupted_one_does(mnist, tmp_path):
    config = CUDA.replace(epochs=2, seed=3, lr_step_epochs=1)
    straight = train(config, data=mnist, progress=False)
    train(config, data=mnist, progress=False, checkpoint_dir=tmp_path, max_steps=STEPS)  # stops after epoch 1
    resumed = train(config, data=mnist, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert resumed["resumed_from_epoch"] == 1 and resumed["status"] == "complete"
    assert resumed["epochs"][1]["lr"] == pytest.approx(0.001)
    assert resumed["execution"]["cuda_steps"]["graph-epoch"] == STEPS
    assert abs(resumed["test_accuracy"] - straight["test_accuracy"]) < 0.3


def test_a_compiled_model_in_the_graph_tracks_the_eager_module(mnist):
    config = CUDA.replace(epochs=1, seed=5)
    compiled = train(config.replace(compile=True), data=mnist, progress=False, keep_step_losses=True)
    plain = train(config, data=mnist, progress=False, keep_step_losses=True)
    assert compiled["execution"]["compiled"] and compiled["setup_seconds"]["compile"] > 0
    assert compiled["execution"]["cuda_graph_error"] is None
    assert compiled["execution"]["cuda_steps"]["graph-epoch"] == STEPS
    torch.testing.assert_close(_losses(compiled)[:100], _losses(plain)[:100], rtol=1e-3, atol=1e-3)
    assert abs(compiled["test_accuracy"] - plain["test_accuracy"]) < 0.5


def test_the_cuda_record_holds_the_gpu_measurements(mnist, tmp_path):
    record = train(CUDA.replace(epochs=1), data=mnist, progress=False)
    assert record["config"]["device"] == "cuda" and record["environment"]["gpu"]["name"]
    assert record["memory"]["cuda_peak_allocated_bytes"] > 188e6  # the training images as float32 alone
    assert record["memory"]["cuda_peak_reserved_bytes"] >= record["memory"]["cuda_peak_allocated_bytes"]
    gpu = record["utilisation"]["gpu"]
    assert gpu["utilisation_mean_percent"] is not None, gpu["reason"]  # on a GPU, a value: a reason is not enough
    assert 0 <= gpu["utilisation_mean_percent"] <= 100
    assert record["numerics"]["tf32_matmul"] is False and record["numerics"]["tf32_cudnn"] is False


def test_the_kernel_timer_writes_a_record_of_each_kernels_time(tmp_path):
    out = tmp_path / "kernel-times-cuda.json"
    done = subprocess.run([sys.executable, "scripts/cuda_kernel_times.py", "--out", str(out), "--launches", "5",
                           "--repeats", "2", "--warps", "8"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_record(out)
    assert record["kind"] == "kernel-times" and record["environment"]["gpu"]["name"]
    times = record["microseconds_per_launch"]
    assert set(times) == {"sample_kernel, 8 warps", "update_kernel", "whole step (both, as trained)"}
    assert all(0 < t["min"] <= t["median"] <= t["max"] for t in times.values())
    assert record["projected_steps"] == 20 * 938
    assert record["projected_seconds_20_epochs"] == pytest.approx(
        times["whole step (both, as trained)"]["median"] * 20 * 938 / 1e6)
    assert "update_kernel" in queries.recorded(tmp_path, "kernel-times")[0]["microseconds_per_launch"]  # chapter 09 tables it
