"""The CUDA fast path's graph logic, run on the CPU with capture emulated: a graph replay is its captured Python
work run again, writing into the tensors the capture returned (a real graph writes its static outputs in place,
and reads its inputs, the batch order and the learning rate, from the same tensors at every replay).

What a real capture adds (the CUDA kernels recorded and replayed) is tested in tests/test_cuda.py on a GPU; this
file checks, on every machine, what the fast path builds around it: which steps a graph covers, the batch order and
losses it reads and writes, the weights and momentum it puts back after warm-up, partial epochs, and a failed
capture falling back to eager steps with the reason recorded.
"""

import pytest
import torch

from hdr_lib import PAPER
from hdr_lib.fast import cuda_graphs
from hdr_lib.fast.steps import AutogradStep
from hdr_lib.train import batch_order, init_model, make_optimizer, set_lr

from conftest import emulated_capture

pytestmark = pytest.mark.slow  # epochs on the real MNIST with capture emulated

N, BATCH = 1000, 64  # 16 batches, the last of 40 images: both batch shapes of a real epoch
CONFIG = PAPER.replace(device="cpu", seed=2)


def _fails_to_capture(work, warmup):
    warmup()
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def _stepper(mnist, use_graph, full=True, partial=False):
    model = init_model(CONFIG, torch.device("cpu"))
    optimizer, _ = make_optimizer(model, CONFIG, fused=True, lr_device=torch.device("cpu") if use_graph else None)
    x = mnist.train_images[:N].float().div(255).unsqueeze(1)
    y = mnist.train_labels[:N]
    # The module's forward with autograd: the step the CUDA path captures (not the CPU's own steps).
    step = AutogradStep(model, optimizer, x, y, BATCH, forward=model, config=CONFIG)
    return cuda_graphs.Graphed(step, capture=use_graph, full_epochs=full, partial_epochs=partial), model, optimizer


def _train(stepper, optimizer, limits):
    losses = []
    for epoch, limit in enumerate(limits, start=1):
        set_lr(optimizer, 0.01 * 0.1 ** (epoch - 1))  # a decay every epoch: the graph must read the new lr
        losses.append(stepper.run_epoch(batch_order(CONFIG.seed, epoch, N), limit, lambda n: None)[0].clone())
    return torch.cat(losses)


def test_an_epoch_graph_replays_exactly_the_eager_steps(mnist, monkeypatch):
    eager, eager_model, eager_opt = _stepper(mnist, use_graph=False)
    expected = _train(eager, eager_opt, [16, 16, 16])
    monkeypatch.setattr(cuda_graphs, "capture", emulated_capture)
    graphed, model, optimizer = _stepper(mnist, use_graph=True)
    assert graphed.epoch_graph is not None and graphed.step_graph is None and graphed.how["cuda_graph_error"] is None
    got = _train(graphed, optimizer, [16, 16, 16])
    assert got.shape == (48,) and expected[0] > 2.2  # the first loss is an untrained network's
    assert torch.equal(got, expected)  # warm-up and capture left the weights and momentum as they were
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(a, b)
    assert graphed.steps_run == {"graph-epoch": 48, "graph-step": 0, "eager": 0}
    assert eager.steps_run == {"graph-epoch": 0, "graph-step": 0, "eager": 48}


def test_an_epoch_cut_short_replays_the_step_graph_for_full_batches(mnist, monkeypatch):
    eager, _, eager_opt = _stepper(mnist, use_graph=False)
    expected = _train(eager, eager_opt, [16, 7])
    monkeypatch.setattr(cuda_graphs, "capture", emulated_capture)
    graphed, _, optimizer = _stepper(mnist, use_graph=True, full=True, partial=True)
    assert graphed.epoch_graph is not None and graphed.step_graph is not None
    assert torch.equal(_train(graphed, optimizer, [16, 7]), expected)
    assert graphed.steps_run == {"graph-epoch": 16, "graph-step": 7, "eager": 0}
    # Only partial epochs: no epoch graph; the smaller last batch, where reached, runs eagerly.
    only_steps, _, optimizer = _stepper(mnist, use_graph=True, full=False, partial=True)
    assert only_steps.epoch_graph is None
    _train(only_steps, optimizer, [5])
    only_steps.run_epoch(batch_order(CONFIG.seed, 2, N)[-40:], 1, lambda n: None)
    assert only_steps.steps_run == {"graph-epoch": 0, "graph-step": 5, "eager": 1}


def test_a_failed_capture_runs_eagerly_and_says_why(mnist, monkeypatch):
    eager, _, eager_opt = _stepper(mnist, use_graph=False)
    expected = _train(eager, eager_opt, [16])
    monkeypatch.setattr(cuda_graphs, "capture", _fails_to_capture)
    fallback, _, optimizer = _stepper(mnist, use_graph=True)
    assert fallback.epoch_graph is None and fallback.step_graph is None and not fallback.inner.captured
    reason = "RuntimeError: operation not permitted when stream is capturing"
    assert fallback.how["cuda_graph_error"] == f"epoch graph: {reason}; step graph: {reason}"
    assert torch.equal(_train(fallback, optimizer, [16]), expected)  # the warm-up's steps were undone
    assert fallback.steps_run["eager"] == 16


def test_where_the_epoch_graph_fails_the_step_graph_runs_the_full_batches(mnist, monkeypatch):
    eager, _, eager_opt = _stepper(mnist, use_graph=False)
    expected = _train(eager, eager_opt, [16, 16])
    calls = []

    def epoch_fails(work, warmup):
        calls.append(work)
        return _fails_to_capture(work, warmup) if len(calls) == 1 else emulated_capture(work, warmup)

    monkeypatch.setattr(cuda_graphs, "capture", epoch_fails)
    graphed, _, optimizer = _stepper(mnist, use_graph=True)
    assert graphed.epoch_graph is None and graphed.step_graph is not None
    error = graphed.how["cuda_graph_error"]
    assert error.startswith("epoch graph: RuntimeError") and "step graph" not in error
    assert torch.equal(_train(graphed, optimizer, [16, 16]), expected)
    assert graphed.steps_run == {"graph-epoch": 0, "graph-step": 30, "eager": 2}  # the batches of 40 run eagerly


def test_the_lr_tensor_the_graphs_read_stays_in_the_optimiser():
    # A scheduler that puts a number in place of the tensor (as some torch versions' may) must not leave the graphs
    # reading a stale lr: the epoch's lr goes into the same tensor, and the tensor back into the group.
    model = init_model(CONFIG, torch.device("cpu"))
    optimizer, scheduler = make_optimizer(model, CONFIG, fused=True, lr_device=torch.device("cpu"))
    tensors = [group["lr"] for group in optimizer.param_groups]
    optimizer.param_groups[0]["lr"] = 0.5
    set_lr(optimizer, 0.001, tensors)
    assert optimizer.param_groups[0]["lr"] is tensors[0] and tensors[0].item() == pytest.approx(0.001)
    set_lr(optimizer, 0.002)  # without a list: the group's own tensor, in place
    assert optimizer.param_groups[0]["lr"] is tensors[0] and tensors[0].item() == pytest.approx(0.002)


@pytest.mark.parametrize("n,batch,sizes", [(1000, 64, [64, 40]), (1024, 64, [64]), (50, 64, [50]), (7, 1, [1])])
def test_batches_cover_the_order_once(n, batch, sizes):
    order = torch.randperm(n)
    steps = -(-n // batch)
    parts = cuda_graphs.batches(order, batch, steps)
    assert sorted({p.shape[0] for p in parts}, reverse=True) == sizes
    assert torch.equal(torch.cat(parts), order)
    order[0] = -1  # views: a graph captured over them reads what the order holds at replay
    assert parts[0][0] == -1
