"""The network's cost: the §3.3 layer table traced on a forward pass, and the multiply-adds of a training step
counted by hand against hdr_lib.measure.flops."""

from hdr_lib.measure.flops import layer_table, training_flops


def test_layer_output_shapes_follow_section_3_3():
    shapes = {row["layer"]: row["output_shape"] for row in layer_table() if row["layer"] != "ReLU"}
    assert shapes == {
        "Input": (1, 28, 28), "Conv1": (6, 24, 24), "Pool1": (6, 12, 12), "Conv2": (16, 8, 8),
        "Pool2": (16, 4, 4), "Flatten": (256,), "FC1": (120,), "FC2": (84,), "Output": (10,),
    }
    assert sum(row["parameters"] for row in layer_table()) == 44_426


def test_training_flops_count_the_paper_layers_multiply_adds():
    # §3.3 by hand: conv1 24x24x6 outputs of 5x5 taps, conv2 8x8x16 of 6x5x5, then 256x120, 120x84, 84x10.
    conv1, rest = 24 * 24 * 6 * 25, 8 * 8 * 16 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    # A step: the forward pass, each layer's weight gradient (as many multiply-adds), each input gradient but conv1's.
    train = (conv1 + rest) + (conv1 + rest) + rest
    assert training_flops() == {"forward_macs_per_image": conv1 + rest, "train_macs_per_image": train,
                                "train_flops_per_epoch": 2 * train * 60_000}
    assert training_flops(images=10)["train_flops_per_epoch"] == 20 * train



def test_the_residual_network_counts_its_flops_with_the_same_function():
    # Multiply-adds on 28x28, 14x14 and 7x7 maps: every 3x3 tap of every output, the 1x1 shortcuts, the linear layer.
    stem = 28 * 28 * 16 * 9
    forward = (stem + 2 * 28 * 28 * 16 * 144 + 14 * 14 * 32 * (144 + 288 + 16) + 7 * 7 * 64 * (288 + 576 + 32)
               + 64 * 10)
    flops = training_flops(model="resnet")
    assert flops["forward_macs_per_image"] == forward
    assert flops["train_macs_per_image"] == 3 * forward - stem
    assert flops["train_flops_per_epoch"] > 30 * training_flops()["train_flops_per_epoch"]
