"""hdr_lib.fast.native, the fast path's C++ step on the CPU: it builds here, its TrainStep updates as optimizer.step() does,
and where it cannot be built the fast path still trains. (Its loss and gradients against autograd's, ties included,
and ten training steps: tests/test_torch_cpu.py, beside the Python step's.)"""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.nn import functional as F

from hdr_lib import PAPER
from hdr_lib.fast import native
from hdr_lib.data import to_float
from hdr_lib.model import LeNet5
from hdr_lib.train import train

from conftest import REPO


@pytest.fixture(scope="module", autouse=True)
def built():
    # CI and the build machine have a C++ compiler, OpenMP and ninja: the native step must build there, not fall
    # back in silence.
    assert native.load(), native.reason()


def _batch(mnist, n, start=0):
    return to_float(mnist.train_images[start:start + n]), mnist.train_labels[start:start + n]


def _model_and_sgd(seed=7):
    torch.manual_seed(seed)
    model = LeNet5()
    return model, torch.optim.SGD(model.parameters(), lr=PAPER.lr, momentum=PAPER.momentum, fused=True)


def test_a_train_step_object_updates_exactly_as_optimizer_step_does(mnist):
    # TrainStep keeps the parameter and gradient lists from step to step and, after the first step, calls the fused
    # SGD kernel itself on the optimiser's state. Against optimizer.step() it must give the same weights and the
    # same momentum buffers, bit for bit: across an lr change, after something sets the gradients to None, and
    # after the optimiser's state is loaded from a checkpoint (which replaces the buffers).
    (m_plain, opt_plain), (m_step, opt_step) = _model_and_sgd(), _model_and_sgd()
    step = native.TrainStep(m_step, opt_step)
    assert step.direct
    for i in range(8):
        x, y = _batch(mnist, 64, start=64 * i)
        expected = native.train_step(m_plain, opt_plain, x, y)
        assert torch.equal(step(x, y), expected)
        if i == 2:
            opt_step.zero_grad(set_to_none=True)
        if i == 3:
            for opt in (opt_plain, opt_step):
                opt.param_groups[0]["lr"] = PAPER.lr * 0.1  # what the step decay does between epochs
        if i == 5:
            opt_step.load_state_dict(opt_step.state_dict())
    for (name, a), b in zip(m_plain.named_parameters(), m_step.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(opt_plain.state[a]["momentum_buffer"], opt_step.state[b]["momentum_buffer"]), name


def test_a_train_step_object_leaves_other_optimisers_and_hooks_to_step(mnist):
    model, _ = _model_and_sgd()
    assert not native.TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)).direct  # unfused
    assert not native.TrainStep(model, torch.optim.Adam(model.parameters(), fused=True)).direct
    model, opt = _model_and_sgd()
    step = native.TrainStep(model, opt)
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(1))
    x, y = _batch(mnist, 64)
    for _ in range(3):
        step(x, y)
    assert len(calls) == 3  # a hook makes every update an optimizer.step()


def test_wrong_inputs_get_a_clear_error_not_a_crash(mnist):
    model = LeNet5()
    params = [p.detach() for p in model.parameters()]
    x, y = _batch(mnist, 4)
    with pytest.raises(RuntimeError, match=r"x must be a contiguous float32 tensor \[B, 1, 28, 28\]"):
        torch.ops.hdr_lenet5.loss_and_gradients(F.pad(x, (2, 2, 2, 2)), y, *params)
    with pytest.raises(RuntimeError, match="y must be int64 labels"):
        torch.ops.hdr_lenet5.loss_and_gradients(x, y[:3], *params)
    with pytest.raises(RuntimeError, match="labels must be 0 to 9"):
        torch.ops.hdr_lenet5.loss_and_gradients(x, y + 10, *params)
    # A batch picked by index from the whole set: indices out of the set are refused, before any work.
    grads = [torch.zeros_like(p) for p in params]
    with pytest.raises(RuntimeError, match="index 4 is out of range"):
        torch.ops.hdr_lenet5.gradients_into(x, y, torch.tensor([0, 4]), params, grads)
    assert all(not g.any() for g in grads)
    assert not native.applies(LeNet5("lenet1998"), x) and not native.applies(model, x.double())


@pytest.mark.slow  # builds or trains
@pytest.mark.parametrize("flags, capability, forced, isa", [
    ("fma avx2 avx512f avx512bw", "", "", "avx512"), ("fma avx2", "", "", "avx2"), ("fma avx2", "", "1", "avx2"),
    ("fma avx2 avx512f avx512bw", "avx2", "1", "avx2"), ("fma avx2 avx512f avx512bw", "avx2", "", "avx2"),
    ("fma avx2 avx512f", "default", "", None), ("sse4_2", "", "", None), ("sse4_2", "", "1", "avx512")])
def test_the_fast_path_runs_the_native_build_for_the_cpus_vectors_and_says_which(mnist, monkeypatch, flags,
                                                                                  capability, forced, isa):
    # Which build runs depends on the CPU's vector registers (its flags) and on PyTorch's own limit
    # (ATEN_CPU_CAPABILITY), not on the machine the test runs on; HDR_NATIVE=1 runs it on any CPU.
    monkeypatch.setattr(native, "_cpu_flags", lambda: f"flags\t\t: {flags}")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    monkeypatch.setenv("HDR_NATIVE", forced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the LR scheduler's, were optimizer.step() never called
        record = train(PAPER.replace(device="cpu", epochs=2), data=mnist, progress=False, max_steps=5)
    execution = record["execution"]
    assert execution["cpu_step"] == ("native" if isa else "explicit")
    assert execution["isa"] == isa
    if isa:
        assert execution["native_unavailable"] is None and isa in execution["step_reason"]
        assert "native_cpu_step" in record["setup_seconds"]  # the one-time load (or build), apart from training
    else:
        assert "neither AVX-512 nor AVX2" in execution["native_unavailable"]
    # The threads each epoch ran with, and why (hdr_lib.fast.threads): here 5 steps, all in the first epoch.
    assert len(execution["threads_per_epoch"]) == 1 and execution["threads_per_epoch"][0] >= 1
    assert sum(execution["thread_steps_per_epoch"][0].values()) == 5 and execution["thread_reason"]


def test_the_avx2_build_computes_the_same_bits_as_this_cpus(mnist):
    # Built with -mno-avx512f, the AVX2 build keeps fewer sums in registers at a time, but adds the same terms in
    # the same order: the same loss and gradients, bit for bit, as the AVX-512 build (ties and an uneven last
    # batch included). Against autograd both are checked in tests/test_torch_cpu.py.
    for isa in ("avx512", "avx2"):
        assert native.load_isa(isa) is None, native.load_isa(isa)
    torch.manual_seed(3)
    params = [p.detach() for p in LeNet5().parameters()]
    for n, start in ((64, 0), (32, 640), (7, 99)):
        x, y = _batch(mnist, n, start=start)
        wide = native.ops("avx512").loss_and_gradients(x, y, *params)
        narrow = native.ops("avx2").loss_and_gradients(x, y, *params)
        assert all(torch.equal(a, b) for a, b in zip(wide, narrow)), n


def test_the_native_step_computes_the_same_whatever_the_thread_count(mnist):
    # hdr_lib.fast.threads changes the thread count during a run: the sums must not depend on it.
    x, y = _batch(mnist, 64, start=128)
    torch.manual_seed(5)
    params = [p.detach() for p in LeNet5().parameters()]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(native.ops().loss_and_gradients(x, y, *params))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_switched_off_the_fast_path_runs_the_explicit_step_and_says_why(mnist, monkeypatch):
    monkeypatch.setenv("HDR_NATIVE", "0")
    record = train(PAPER.replace(device="cpu"), data=mnist, progress=False, max_steps=5)
    assert record["execution"]["cpu_step"] == "explicit"
    assert "HDR_NATIVE=0" in record["execution"]["native_unavailable"]


def test_without_a_compiler_the_fast_path_falls_back_and_says_why(mnist, monkeypatch, tmp_path):
    # A fresh cache and a compiler that does not exist: the build fails, the reason is kept, training goes on.
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("HDR_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    record = train(PAPER.replace(device="cpu"), data=mnist, progress=False, max_steps=3)
    assert record["execution"]["cpu_step"] == "explicit"
    assert record["execution"]["native_unavailable"].startswith("could not build lenet5_cpu.cpp")
    assert record["epochs"][0]["train_loss"] > 0


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one(monkeypatch, tmp_path):
    # torch.utils.cpp_extension waits while its lock file exists: one that a killed build left behind would make
    # every later run wait forever. (The compiler here does not exist, so the build then fails at once.)
    monkeypatch.setenv("HDR_NATIVE_CACHE", str(tmp_path))
    folder = native.build_directory()
    assert folder.parent == tmp_path  # $HDR_NATIVE_CACHE, read by hdr_lib.settings
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.touch()  # just left: no age rule, the build's flock tells a dead build from a live one
    out = subprocess.run([sys.executable, "-c", "from hdr_lib.fast import native; print(native.load(), native.reason())"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "CXX": str(tmp_path / "no-such-compiler")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False could not build lenet5_cpu.cpp")


@pytest.mark.slow  # builds or trains
def test_the_command_line_builds_it_and_says_where(data_root):
    out = subprocess.run([sys.executable, "-m", "hdr_lib", "native"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1200)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("native CPU step") and str(native.build_directory()) in out.stdout


def test_a_batch_picked_by_index_gives_what_the_gathered_batch_gives(mnist):
    # The fast path hands the operator the whole training set and each batch's indices (no copy of the batch):
    # the loss and every gradient must be those of the gathered batch, bit for bit, an uneven last chunk included.
    x, y = _batch(mnist, 256)
    torch.manual_seed(7)
    params = [p.detach() for p in LeNet5().parameters()]
    idx = torch.randperm(256)[:37]
    expected = native.ops().loss_and_gradients(x.index_select(0, idx).contiguous(), y.index_select(0, idx), *params)
    grads = [torch.empty_like(p) for p in params]
    loss = native.ops().gradients_into(x, y, idx, params, grads)
    assert torch.equal(loss, expected[0]) and all(torch.equal(a, b) for a, b in zip(grads, expected[1:]))



def test_steps_in_one_call_update_exactly_as_one_step_at_a_time(mnist):
    # The fast path runs an epoch's steps in blocks, each one call of the operator (TrainStep.steps, train_steps):
    # each step's loss, the weights and the momentum buffers must be those of optimizer.step() after each batch, bit
    # for bit: across calls of several sizes, a short last batch, an lr change between calls, and a call that a
    # slow step ends early (stop_after 0: each step is "slow", so one runs).
    x, y = _batch(mnist, 1000)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:700]  # 10 batches of 64, then 60
    (m_plain, opt_plain), (m_steps, opt_steps) = _model_and_sgd(), _model_and_sgd()
    expected = []
    for i in range(11):
        if i == 6:
            for opt in (opt_plain, opt_steps):
                opt.param_groups[0]["lr"] = PAPER.lr * 0.1
        idx = order[64 * i:64 * (i + 1)]
        expected.append(native.train_step(m_plain, opt_plain, x.index_select(0, idx).contiguous(), y[idx]))
    step = native.TrainStep(m_steps, opt_steps)
    opt_steps.param_groups[0]["lr"] = PAPER.lr
    losses, seconds = torch.full((11,), float("nan")), torch.zeros(11, dtype=torch.float64)
    done, calls = 0, []
    for count, stop_after in ((1, math.inf), (3, math.inf), (2, 0.0), (1, math.inf), (5, math.inf)):
        if done == 6:
            opt_steps.param_groups[0]["lr"] = PAPER.lr * 0.1
        ran = step.steps(x, y, order[64 * done:64 * (done + count)], 64, losses[done:], seconds[done:], stop_after)
        calls.append(ran)
        done += ran
    assert calls == [1, 3, 1, 1, 5] and done == 11  # the first step is optimizer.step(); (2, 0.0) stopped after one
    assert torch.equal(losses, torch.stack(expected)) and bool((seconds > 0).all())
    for (name, a), b in zip(m_plain.named_parameters(), m_steps.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(opt_plain.state[a]["momentum_buffer"], opt_steps.state[b]["momentum_buffer"]), name


def test_steps_in_one_call_refuse_bad_input_before_any_work(mnist):
    x, y = _batch(mnist, 256)
    model, opt = _model_and_sgd()
    step = native.TrainStep(model, opt)
    step(x, y, torch.arange(64))  # the first step makes the momentum buffers
    before = [p.detach().clone() for p in model.parameters()]
    losses, seconds = torch.zeros(4), torch.zeros(4, dtype=torch.float64)
    order = torch.arange(256)
    with pytest.raises(RuntimeError, match="index 256 is out of range"):
        step.steps(x, y, torch.cat([order[:200], torch.tensor([256])]), 64, losses, seconds)
    with pytest.raises(RuntimeError, match="need room for 4 steps"):
        step.steps(x, y, order, 64, losses[:3], seconds)
    with pytest.raises(RuntimeError, match="batch_size must be positive"):
        step.steps(x, y, order, 0, losses, seconds)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and not losses.any()


def test_the_fast_paths_epoch_in_blocks_follows_one_step_at_a_time(mnist):
    # NativeStep.run_epoch cuts the epoch into the governor's blocks (threads.Governor.next_block), each one call of
    # train_steps: its losses and final weights must be those of optimizer.step() after each batch, in order, the
    # short last batch included, bit for bit; the progress callback hears of every step.
    from hdr_lib.fast import threads
    from hdr_lib.fast.steps import NativeStep

    x, y = _batch(mnist, 700)
    order = torch.randperm(700, generator=torch.Generator().manual_seed(5))
    (m_plain, opt_plain), (m_fast, opt_fast) = _model_and_sgd(), _model_and_sgd()
    expected = [native.train_step(m_plain, opt_plain, x.index_select(0, idx).contiguous(), y[idx])
                for idx in order.split(64)]
    fast = NativeStep(m_fast, opt_fast, x.contiguous(), y.long().contiguous(), 64)
    heard = []
    losses, weights = fast.run_epoch(order, 11, heard.append)
    # In blocks no longer than the governor's (the first step alone: optimizer.step() makes the buffers).
    assert fast.indexed and sum(heard) == 11 and heard[0] == 1 and 1 < max(heard) <= threads.BLOCK
    assert torch.equal(losses, torch.stack(expected)) and weights.tolist() == [64.0] * 10 + [60.0]
    assert all(torch.equal(a, b) for a, b in zip(m_plain.parameters(), m_fast.parameters()))
