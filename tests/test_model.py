"""The model against the paper's §3.3 table and LeNet-5 of 1998."""

import pytest
import torch

from hdr_lib.model import LeNet5, count_parameters, layer_table


def test_paper_variant_has_the_parameters_of_the_table():
    # conv1 6*(5*5+1) + conv2 16*(6*25+1) + fc1 (16*4*4+1)*120 + fc2 121*84 + out 85*10
    assert count_parameters(LeNet5()) == 156 + 2416 + 30840 + 10164 + 850 == 44_426


def test_1998_variant_pads_to_32x32():
    assert count_parameters(LeNet5("lenet1998")) == 61_706


def test_layer_output_shapes_follow_section_3_3():
    shapes = {row["layer"]: row["output_shape"] for row in layer_table() if row["layer"] != "ReLU"}
    assert shapes == {
        "Input": (1, 28, 28), "Conv1": (6, 24, 24), "Pool1": (6, 12, 12), "Conv2": (16, 8, 8),
        "Pool2": (16, 4, 4), "Flatten": (256,), "FC1": (120,), "FC2": (84,), "Output": (10,),
    }
    assert sum(row["parameters"] for row in layer_table()) == 44_426


@pytest.mark.parametrize("variant", ["paper", "lenet1998"])
def test_forward_gives_ten_logits_per_image(variant):
    out = LeNet5(variant)(torch.rand(7, 1, 28, 28))
    assert out.shape == (7, 10)
    assert torch.isfinite(out).all()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        LeNet5("resnet")


def test_training_flops_count_the_paper_layers_multiply_adds():
    from hdr_lib.model import training_flops

    # §3.3 by hand: conv1 24x24x6 outputs of 5x5 taps, conv2 8x8x16 of 6x5x5, then 256x120, 120x84, 84x10.
    conv1, rest = 24 * 24 * 6 * 25, 8 * 8 * 16 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    # A step: the forward pass, each layer's weight gradient (as many multiply-adds), each input gradient but conv1's.
    train = (conv1 + rest) + (conv1 + rest) + rest
    assert training_flops() == {"forward_macs_per_image": conv1 + rest, "train_macs_per_image": train,
                                "train_flops_per_epoch": 2 * train * 60_000}
    assert training_flops(images=10)["train_flops_per_epoch"] == 20 * train


def test_the_residual_network_counts_its_flops_with_the_same_function():
    from hdr_lib.model import ResNet, build_model, training_flops

    net = ResNet()
    assert isinstance(build_model("resnet"), ResNet) and isinstance(build_model("lenet5", "lenet1998"), LeNet5)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # stem 1->16; stage 1: two 16->16; stage 2: 16->32 (stride 2), 32->32, 1x1 shortcut; stage 3 likewise to 64;
    # batch-norm scale and shift per channel; a 64->10 linear layer.
    convs = 9 * 16 + 2 * 9 * 16 * 16 + 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64
    norms = 2 * (16 + 2 * 16 + 3 * 32 + 3 * 64)
    assert count_parameters(net) == convs + norms + 64 * 10 + 10 == 77_754
    # Multiply-adds on 28x28, 14x14 and 7x7 maps: every 3x3 tap of every output, the 1x1 shortcuts, the linear layer.
    stem = 28 * 28 * 16 * 9
    forward = (stem + 2 * 28 * 28 * 16 * 144 + 14 * 14 * 32 * (144 + 288 + 16) + 7 * 7 * 64 * (288 + 576 + 32)
               + 64 * 10)
    flops = training_flops(model="resnet")
    assert flops["forward_macs_per_image"] == forward
    assert flops["train_macs_per_image"] == 3 * forward - stem
    assert flops["train_flops_per_epoch"] > 30 * training_flops()["train_flops_per_epoch"]
    with pytest.raises(ValueError, match="model"):
        build_model("transformer")
