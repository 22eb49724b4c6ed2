"""The model against the paper's §3.3 table and LeNet-5 of 1998."""

import pytest
import torch

from hdr_lib.model import LeNet5, ResNet, build_model, count_parameters


def test_paper_variant_has_the_parameters_of_the_table():
    # conv1 6*(5*5+1) + conv2 16*(6*25+1) + fc1 (16*4*4+1)*120 + fc2 121*84 + out 85*10
    assert count_parameters(LeNet5()) == 156 + 2416 + 30840 + 10164 + 850 == 44_426


def test_1998_variant_pads_to_32x32():
    assert count_parameters(LeNet5("lenet1998")) == 61_706


@pytest.mark.parametrize("variant", ["paper", "lenet1998"])
def test_forward_gives_ten_logits_per_image(variant):
    out = LeNet5(variant)(torch.rand(7, 1, 28, 28))
    assert out.shape == (7, 10)
    assert torch.isfinite(out).all()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        LeNet5("resnet")


def test_the_residual_network_has_the_parameters_of_its_blocks():
    net = ResNet()
    assert isinstance(build_model("resnet"), ResNet) and isinstance(build_model("lenet5", "lenet1998"), LeNet5)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # stem 1->16; stage 1: two 16->16; stage 2: 16->32 (stride 2), 32->32, 1x1 shortcut; stage 3 likewise to 64;
    # batch-norm scale and shift per channel; a 64->10 linear layer.
    convs = 9 * 16 + 2 * 9 * 16 * 16 + 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64
    norms = 2 * (16 + 2 * 16 + 3 * 32 + 3 * 64)
    assert count_parameters(net) == convs + norms + 64 * 10 + 10 == 77_754
    with pytest.raises(ValueError, match="model"):
        build_model("transformer")
