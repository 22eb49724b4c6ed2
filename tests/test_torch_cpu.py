"""The fast path's CPU step computes what the module and autograd compute, values and gradients, on real digits."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from hdr_lib import PAPER
from hdr_lib.fast import torch_cpu, native
from hdr_lib.data import to_float
from hdr_lib.model import LeNet5
from hdr_lib.train import train

from conftest import REPO


def _batch(mnist, n=64, start=0):
    return to_float(mnist.train_images[start:start + n]), mnist.train_labels[start:start + n]


def test_a_phase_kernel_at_stride_2_gives_that_corner_of_every_pooling_window(mnist):
    x, _ = _batch(mnist, 16)
    conv1 = LeNet5().conv1
    with torch.no_grad():
        full = conv1(x)  # [16, 6, 24, 24]
        _, corners = torch_cpu.conv1_corners(conv1, x)  # [16, 4, 6, 12, 12]
    for k, (pi, pj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        torch.testing.assert_close(corners[:, k], full[:, :, pi::2, pj::2], rtol=1e-5, atol=1e-6)


def test_phase_weight_backward_gives_what_autograd_gives_through_the_padding():
    torch.manual_seed(3)
    weight = torch.randn(6, 1, 5, 5, requires_grad=True)
    grad = torch.randn(24, 1, 6, 6)
    torch_cpu.phase_weight(weight).backward(grad)
    torch.testing.assert_close(torch_cpu.phase_weight_backward(grad), weight.grad)


def test_corner_max_relu_is_max_pool_then_relu_with_its_gradient_rule_on_ties(mnist):
    # conv1 of real digits: the blank margins give four equal values in a window, so ties are everywhere.
    torch.manual_seed(0)
    x, _ = _batch(mnist, 32)
    with torch.no_grad():
        c = LeNet5().conv1(x)  # [32, 6, 24, 24]
    window = c.view(32, 6, 12, 2, 12, 2)
    ties = (window[:, :, :, 0, :, 0] == window[:, :, :, 1, :, 1]).float().mean()
    assert ties > 0.2, "the test needs tied windows"
    corners = torch.stack([window[:, :, :, pi, :, pj] for pi in (0, 1) for pj in (0, 1)], dim=1).contiguous()
    grad = torch.randn(32, 6, 12, 12)

    a = c.clone().requires_grad_()
    expected = F.relu(F.max_pool2d(a, 2, 2))
    expected.backward(grad)
    b = corners.clone().requires_grad_()
    got = torch_cpu.CornerMaxReLU.apply(b)
    got.backward(grad)

    assert torch.equal(got, expected)
    back = b.grad.view(32, 2, 2, 6, 12, 12).permute(0, 3, 4, 1, 5, 2).reshape(32, 6, 24, 24)
    assert torch.equal(back, a.grad)  # the same element of each window gets the gradient, and only one


def test_fast_forward_matches_the_module_in_loss_and_every_gradient(mnist):
    x, y = _batch(mnist, 64, start=640)
    torch.manual_seed(1)
    model = LeNet5()
    F.cross_entropy(model(x), y).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    loss_module = F.cross_entropy(model(x), y)
    model.zero_grad()
    loss_fast = F.cross_entropy(torch_cpu.forward(model, x), y)
    loss_fast.backward()
    torch.testing.assert_close(loss_fast, loss_module, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_1998_variant_runs_as_the_module_does(mnist):
    x, _ = _batch(mnist, 8)
    torch.manual_seed(2)
    model = LeNet5("lenet1998")
    with torch.no_grad():
        assert torch.equal(torch_cpu.forward(model, x), model(x))


# The fast path's CPU steps: the Python one here, and the native one (hdr_lib.fast.native, which must build here),
# in both of its builds: for this CPU, and for AVX2 (compiled with -mno-avx512f: AVX2's 16 registers, whatever
# this CPU has), which an AVX2-only CPU runs.
def _native_avx2(model, x, y):
    out = native.ops("avx2").loss_and_gradients(x.contiguous(), y, *[p.detach() for p in model.parameters()])
    return out[0], list(out[1:])


GRADIENTS = {"explicit": torch_cpu.loss_and_gradients, "native": native.loss_and_gradients,
             "native-avx2": _native_avx2}
STEPS = {"explicit": torch_cpu.train_step, "native": native.train_step}


def _ready(kind):
    assert kind != "native" or native.load(), native.reason()
    if kind == "native-avx2":
        why = native.load_isa("avx2")
        assert why is None, why


def _assert_same_as_autograd(kind, model, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    got_loss, grads = GRADIENTS[kind](model, x, y)
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    assert len(grads) == len(list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        assert g.shape == p.shape and g.is_contiguous(), name
        assert p.grad.abs().max() > 0, name  # a zero gradient would make the comparison empty
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6, msg=name)


# A full batch, the epoch's last one (60000 = 937 * 64 + 32), and sizes that split unevenly over the threads.
@pytest.mark.parametrize("n", [64, 32, 7, 1])
@pytest.mark.parametrize("kind", list(GRADIENTS))
def test_cpu_step_gradients_equal_autograd_on_the_module(mnist, kind, n):
    _ready(kind)
    x, y = _batch(mnist, n, start=1280)
    torch.manual_seed(4)
    _assert_same_as_autograd(kind, LeNet5(), x, y)


@pytest.mark.parametrize("kind", list(GRADIENTS))
def test_pooling_ties_go_where_max_pool2d_sends_them(mnist, kind):
    # max_pool2d gives a window's gradient to its first maximum in row-major order, also on ties, and so must the
    # fast steps. A tie only changes conv1's weight gradient where the tied corners see different patches: with
    # conv1 reading only its centre tap, every window whose four centre pixels are equal (blank paper beside a
    # stroke, the inside of a stroke) is a tie between different patches.
    _ready(kind)
    x, y = _batch(mnist, 16, start=640)
    torch.manual_seed(6)
    model = LeNet5()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[:, :, 2, 2] = torch.linspace(-1.0, 1.0, 6).view(6, 1)
        model.conv1.bias.fill_(0.05)  # blank windows stay above zero, so ReLU lets their gradient through
    _assert_same_as_autograd(kind, model, x, y)


@pytest.mark.slow  # trains or builds
@pytest.mark.parametrize("kind", list(STEPS))
def test_cpu_steps_train_as_autograd_steps_do(mnist, kind):
    # Ten SGD steps with momentum on real batches: the weights stay together, so the momentum buffers do too.
    _ready(kind)
    torch.manual_seed(5)
    start = LeNet5()
    models, optimizers = [], []
    for _ in range(2):
        torch.manual_seed(5)
        models.append(LeNet5())
        optimizers.append(torch.optim.SGD(models[-1].parameters(), lr=PAPER.lr, momentum=PAPER.momentum, fused=True))
    (auto, stepped), (opt_auto, opt_stepped) = models, optimizers
    for i in range(10):
        x, y = _batch(mnist, 64, start=64 * i)
        loss = F.cross_entropy(auto(x), y)
        opt_auto.zero_grad()
        loss.backward()
        opt_auto.step()
        torch.testing.assert_close(STEPS[kind](stepped, opt_stepped, x, y), loss.detach(), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(auto.named_parameters(), stepped.parameters()):
        assert not torch.equal(a, start.get_parameter(name)), name  # the steps moved every parameter
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    assert opt_stepped.state_dict()["state"].keys() == opt_auto.state_dict()["state"].keys()


@pytest.mark.parametrize("options, kind", [
    ({}, "native"),
    ({"amp": "bf16"}, "forward"),
    ({"variant": "lenet1998"}, "module"),
])
@pytest.mark.slow  # trains or builds
def test_the_record_names_the_cpu_step_that_ran(mnist, options, kind, monkeypatch):
    monkeypatch.setenv("HDR_NATIVE", "1")  # the native step on any CPU (by default only where it is the fastest)
    record = train(PAPER.replace(device="cpu", **options), data=mnist, progress=False, max_steps=3)
    assert record["execution"]["cpu_step"] == kind
    assert record["execution"]["native_unavailable"] is None  # built here, and not wanted under the options
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in record["epochs"])


@pytest.mark.slow  # trains or builds
def test_the_ab_script_times_the_four_ways_to_write_a_cpu_step(data_root):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "ab_cpu_step.py"), "--rounds", "2", "--chunk", "3"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "HDR_DATA_DIR": str(data_root)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in ("module + autograd", "torch_cpu.forward + autograd", "torch_cpu.train_step", "native.TrainStep"):
        assert any(line.strip().startswith(f"{name}: median") for line in lines), name
    assert sum("of module + autograd's time per step" in line for line in lines) == 3


@pytest.mark.slow  # trains or builds
def test_the_native_ab_script_checks_the_gradients_before_it_times(data_root, tmp_path):
    # A version whose loss gradient is scaled by 2 must be reported as differing in every gradient, not timed as if
    # it computed the same thing; a revision that does not exist is refused before any build.
    env = {**os.environ, "HDR_DATA_DIR": str(data_root)}
    script = str(REPO / "scripts" / "ab_native_versions.py")
    bad = subprocess.run([sys.executable, script, "--base", "no-such-revision"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert bad.returncode == 2 and "cannot read hdr_lib/fast/csrc/lenet5_cpu.cpp at 'no-such-revision'" in bad.stderr
    source = (REPO / "hdr_lib" / "fast" / "csrc" / "lenet5_cpu.cpp").read_text()
    scale = "const float scale = 1.f / static_cast<float>(batch);"
    assert scale in source
    mutated = tmp_path / "lenet5_cpu.cpp"
    mutated.write_text(source.replace(scale, scale.replace("1.f", "2.f")))
    out = subprocess.run([sys.executable, script, "--base", "HEAD", "--new", str(mutated), "--rounds", "1",
                          "--batch-size", "8"], capture_output=True, text=True, timeout=1200, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("loss and gradients: differ: conv1.weight by ")
    assert "loss by" not in lines[0] and "fc3.bias by" in lines[0]
    assert any(line.startswith("whole step") and line.rstrip().endswith(")") for line in lines)
