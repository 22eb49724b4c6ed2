"""The CUDA fast path's Triton step (hdr_lib.fast.triton_step). Without a GPU its two kernels run in Triton's interpreter
(conftest sets TRITON_INTERPRET=1 there), which executes the same kernel code on the CPU: slowly, so batches here
are small. On the GPU machine this file runs the compiled kernels on CUDA."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from hdr_lib import PAPER
from hdr_lib.fast import cuda_graphs, triton_step
from hdr_lib.model import LeNet5
from hdr_lib import fast
from hdr_lib.fast.steps import AutogradStep, TritonStep
from hdr_lib.train import batch_order, set_lr

from conftest import REPO, emulated_capture

pytestmark = pytest.mark.slow  # the Triton kernels in Triton's interpreter

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def ieee_float32_references():
    # On a GPU, cuDNN's convolutions default to TF32, which would make autograd's reference less exact than the
    # kernels it is compared with; train() switches TF32 off the same way for the paper's float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _data(mnist, n=200):
    x = mnist.train_images[:n].to(DEVICE).float().div(255).unsqueeze(1).contiguous()
    return x, mnist.train_labels[:n].to(DEVICE)


def _model(seed=4):
    torch.manual_seed(seed)
    return LeNet5().to(DEVICE)


def _sgd(model, **kwargs):
    return torch.optim.SGD(model.parameters(), lr=torch.tensor(PAPER.lr, device=DEVICE), momentum=PAPER.momentum,
                           **kwargs)


def _gradients(step, x, y, idx):
    grad = torch.empty_like(step.flat)
    loss = step.step(x, y, idx, flat=step.flat.clone(), buf=step.buf.clone(), grad_out=grad)
    return loss, grad


def _assert_same_as_autograd(model, x, y, idx):
    reference = LeNet5().to(DEVICE)
    reference.load_state_dict(model.state_dict())
    step = triton_step.TrainStep(model, _sgd(model), batch_size=idx.shape[0])
    loss, grad = _gradients(step, x, y, idx)
    expected = F.cross_entropy(reference(x[idx]), y[idx])
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-6)
    offset = 0
    for name, p in reference.named_parameters():
        got = grad[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        assert p.grad.abs().max() > 0, name  # a zero gradient would make the comparison empty
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert offset == grad.numel() == 44_426
    assert step.check(x, y, idx) is None
    with pytest.raises(ValueError, match="a batch of 65 images"):
        step.step(x, y, torch.arange(65, device=DEVICE))


# A batch that fills one pass over the update kernel's 64 rows, the epoch's last (smaller) one, and odd sizes.
@pytest.mark.parametrize("n", [64, 7, 1] if DEVICE.type == "cuda" else [16, 7, 1])
def test_loss_and_every_gradient_equal_autograd_on_the_module(mnist, n):
    x, y = _data(mnist)
    _assert_same_as_autograd(_model(), x, y, torch.randperm(200, generator=torch.Generator().manual_seed(n))[:n]
                             .to(DEVICE))


def test_the_update_sums_every_row_of_batches_beyond_64_images_then_steps_with_momentum():
    # The update kernel alone, on made-up scratch rows: 130 of them take its loop over 64-row blocks three times.
    k = triton_step.kernels()
    generator = torch.Generator().manual_seed(3)
    scratch = torch.randn(130, int(k.ROW), generator=generator).to(DEVICE)
    scratch[:, int(k.ONE)] = 1.0
    u, v = triton_step._flat_indices(DEVICE)
    flat, buf = torch.randn(2, u.numel(), generator=generator).to(DEVICE)
    lr, loss, grad = torch.tensor(0.05, device=DEVICE), torch.empty((), device=DEVICE), torch.empty_like(flat)
    new_flat, new_buf = flat.clone(), buf.clone()
    k.update_kernel[(triton_step._cdiv(u.numel(), 128),)](scratch, u, v, new_flat, new_buf, lr, loss, grad, 130,
                                                               u.numel(), 0.9, STORE_GRAD=True)
    expected = (scratch[:, u.long()] * scratch[:, v.long()]).sum(0)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_buf, 0.9 * buf + expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_flat, flat - 0.05 * (0.9 * buf + expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, scratch[:, int(k.LOSS)].sum(), rtol=1e-5, atol=1e-5)


def test_pooling_ties_go_where_max_pool2d_sends_them(mnist):
    # As in tests/test_torch_cpu.py: conv1 reads only its centre tap, so every window whose four centre pixels are
    # equal is a tie between different patches, and conv1's weight gradient shows which corner won.
    x, y = _data(mnist)
    model = _model(6)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[:, :, 2, 2] = torch.linspace(-1.0, 1.0, 6).view(6, 1)
        model.conv1.bias.fill_(0.05)
    _assert_same_as_autograd(model, x, y, torch.arange(40, 48, device=DEVICE))


def test_steps_update_as_pytorch_sgd_does_across_an_lr_change_and_a_reload(mnist):
    x, y = _data(mnist)
    auto, stepped = _model(), _model()
    opt_auto, opt_stepped = _sgd(auto, fused=True), _sgd(stepped)
    step = triton_step.TrainStep(stepped, opt_stepped, batch_size=6)
    names = [name for name, _ in stepped.named_parameters()]
    for i in range(4):
        if i == 2:
            for opt in (opt_auto, opt_stepped):
                opt.param_groups[0]["lr"].fill_(0.05)
        idx = torch.arange(6 * i, 6 * i + 6, device=DEVICE)
        loss = F.cross_entropy(auto(x[idx]), y[idx])
        opt_auto.zero_grad()
        loss.backward()
        opt_auto.step()
        torch.testing.assert_close(step.step(x, y, idx), loss.detach(), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(auto.named_parameters(), stepped.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    # The module's parameters view the flat buffer, and the optimiser's state holds the momentum buffers.
    assert [n for n, _ in stepped.named_parameters()] == names
    assert stepped.conv1.weight.data_ptr() == step.flat.data_ptr()
    saved = opt_stepped.state_dict()
    for key, state in opt_auto.state_dict()["state"].items():
        torch.testing.assert_close(saved["state"][key]["momentum_buffer"], state["momentum_buffer"], rtol=1e-4,
                                   atol=1e-6)
    # A new step on a reloaded optimiser (a resumed run) starts from the saved buffers.
    reloaded = _model()
    reloaded.load_state_dict(stepped.state_dict())
    opt_reloaded = _sgd(reloaded)
    opt_reloaded.load_state_dict(saved)
    again = triton_step.TrainStep(reloaded, opt_reloaded, batch_size=6)
    assert torch.equal(again.buf, step.buf) and torch.equal(again.flat, step.flat)


@pytest.mark.parametrize("change, reason", [
    (lambda m, o: (LeNet5("lenet1998").to(DEVICE), o), "paper's 28x28 LeNet-5 only"),
    (lambda m, o: (m, torch.optim.Adam(m.parameters())), "plain SGD"),
    (lambda m, o: (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)), "learning rate from a tensor"),
    (lambda m, o: (m, torch.optim.SGD(m.parameters(), lr=torch.tensor(0.01, device=DEVICE), momentum=0.9,
                                      weight_decay=1e-4)), "no weight decay"),
])
def test_what_the_triton_step_does_not_compute_is_refused_with_the_reason(mnist, change, reason):
    x, _ = _data(mnist, 8)
    model = _model()
    model, optimizer = change(model, _sgd(model))
    assert reason in triton_step.reason_not_applicable(model, optimizer, x)
    plain = _model()
    assert triton_step.reason_not_applicable(plain, _sgd(plain), x) is None


N, BATCH = 20, 8  # batches of 8, 8 and 4: both batch shapes of a real epoch, in few interpreted steps


def _stepper(mnist, triton, use_graph=False):
    """(the step as the CUDA fast path wraps it, why Triton is not used, the model, the optimiser). Without Triton
    the baseline is the module's step with autograd (not the CPU's own steps)."""
    x, y = _data(mnist, N)
    model = _model(2)
    optimizer = _sgd(model, fused=True)
    kernels, why = fast.try_triton(model, optimizer, x, y, BATCH) if triton else (None, "not asked")
    step = (TritonStep(model, optimizer, x, y, BATCH, kernels=kernels) if kernels is not None
            else AutogradStep(model, optimizer, x, y, BATCH, forward=model, config=PAPER))
    graphed = cuda_graphs.Graphed(step, capture=use_graph, full_epochs=True, partial_epochs=False)
    return graphed, why, model, optimizer


def _train(stepper, optimizer, epochs=2):
    losses = []
    for epoch in range(1, epochs + 1):
        set_lr(optimizer, 0.01 * 0.1 ** (epoch - 1))
        losses.append(stepper.run_epoch(batch_order(1, epoch, N), 3, lambda n: None)[0].clone())
    return torch.cat(losses)


def test_the_fast_path_replays_the_triton_step_as_an_epoch_graph(mnist, monkeypatch):
    plain, _, plain_model, plain_opt = _stepper(mnist, triton=False)
    expected = _train(plain, plain_opt)
    if DEVICE.type != "cuda":
        monkeypatch.setattr(cuda_graphs, "capture", emulated_capture)
    stepper, why, model, optimizer = _stepper(mnist, triton=True, use_graph=True)
    assert why is None and isinstance(stepper.inner, TritonStep)
    assert stepper.epoch_graph is not None and stepper.how["cuda_graph_error"] is None
    torch.testing.assert_close(_train(stepper, optimizer), expected, rtol=1e-5, atol=1e-6)
    assert stepper.steps_run["graph-epoch"] == 6
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_options_that_change_the_arithmetic_keep_the_triton_step_out(mnist):
    x, y = _data(mnist, N)
    model = _model(2)
    kernels, why = fast.try_triton(model, _sgd(model, fused=True), x, y, BATCH, options=["amp"])
    assert kernels is None and "amp" in why


def test_a_triton_step_whose_gradient_is_wrong_is_not_used(mnist, monkeypatch):
    # The reference forward without fc2's ReLU: what a miscompiled kernel would look like to the check.
    def other_forward(params, x):
        w1, b1, w2, b2, f1w, f1b, f2w, f2b, f3w, f3b = params
        x = F.max_pool2d(F.relu(F.conv2d(x, w1, b1)), 2, 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, w2, b2)), 2, 2)
        x = F.relu(F.linear(torch.flatten(x, 1), f1w, f1b))
        return F.linear(F.linear(x, f2w, f2b), f3w, f3b)

    monkeypatch.setattr(triton_step, "_functional_forward", other_forward)
    stepper, why, _, _ = _stepper(mnist, triton=True)
    assert isinstance(stepper.inner, AutogradStep)
    assert why.startswith("the Triton step's first gradient differs from autograd's by")


def test_the_kernels_compile_for_an_h100_here_without_a_gpu():
    # The interpreter runs the kernels' Python; this compiles them (Triton to PTX to machine code, with the ptxas
    # that comes with Triton) for the H100's architecture, the GPU the replication runs on, as Triton will there,
    # and reads their machine code back.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "scripts/triton_sass_counts.py", "--arch", "90"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(" for ")[0] for line in lines] == ["sample_kernel (8 warps)", "update_kernel (4 warps)"]
    for line in lines:
        assert line.split(" for ")[1].startswith("sm_90: ") and "REG:" in line
        assert int(line.split(": ")[1].split(" instructions")[0].replace(",", "")) > 0
