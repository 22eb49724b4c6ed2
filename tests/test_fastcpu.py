"""The fast path's CPU forward pass computes what the module computes, values and gradients, on real digits."""

import torch
from torch.nn import functional as F

from hdr_lib import fastcpu
from hdr_lib.data import to_float
from hdr_lib.model import LeNet5


def _batch(mnist, n=64, start=0):
    return to_float(mnist.train_images[start:start + n]), mnist.train_labels[start:start + n]


def test_a_phase_kernel_at_stride_2_gives_that_corner_of_every_pooling_window(mnist):
    x, _ = _batch(mnist, 16)
    conv1 = LeNet5().conv1
    with torch.no_grad():
        full = conv1(x)  # [16, 6, 24, 24]
        corners = F.conv2d(x, fastcpu.phase_weight(conv1.weight), conv1.bias.repeat(4), stride=2)
    for k, (pi, pj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        torch.testing.assert_close(corners[:, 6 * k:6 * (k + 1)], full[:, :, pi::2, pj::2], rtol=1e-5, atol=1e-6)


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
    got = fastcpu.CornerMaxReLU.apply(b)
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
    loss_fast = F.cross_entropy(fastcpu.forward(model, x), y)
    loss_fast.backward()
    torch.testing.assert_close(loss_fast, loss_module, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_1998_variant_runs_as_the_module_does(mnist):
    x, _ = _batch(mnist, 8)
    torch.manual_seed(2)
    model = LeNet5("lenet1998")
    with torch.no_grad():
        assert torch.equal(fastcpu.forward(model, x), model(x))
