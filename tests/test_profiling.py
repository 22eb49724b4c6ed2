"""hdr_lib.measure.profiling on the real MNIST: a step's time split by kind of operator, evaluation left out."""

import pytest

from hdr_lib import PAPER
from hdr_lib.fast import native
from hdr_lib.data import to_float
from hdr_lib.measure.profiling import MARKS, OUTSIDE, kind_of, native_step_profile, step_profile

pytestmark = pytest.mark.slow  # profiles training steps on the real MNIST

CPU = PAPER.replace(device="cpu")


def test_operator_names_map_to_what_they_do_in_the_network():
    assert kind_of("aten::mkldnn_convolution") == kind_of("aten::convolution_backward")
    assert kind_of("aten::max_pool2d_with_indices").startswith("max pooling")
    assert kind_of("aten::threshold_backward").startswith("ReLU")
    assert kind_of("aten::addmm") == kind_of("aten::mm") == kind_of("aten::t") == "fully connected layers"
    assert kind_of("aten::to") == "other operators"  # a copy to another dtype or device, not the transpose aten::t
    assert kind_of("Optimizer.step#SGD.step") == kind_of("aten::_fused_sgd_")
    assert kind_of("aten::index_select") == kind_of("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__")
    assert kind_of("aten::empty") == "other operators"


def _check_split(profile):
    assert profile["steps"] == 20 and profile["path"] == "fast" and profile["device"] == "cpu"
    kinds, ops = profile["kinds"], profile["ops"]
    assert list(kinds.values()) == sorted(kinds.values(), reverse=True)
    # Each kind's time is the sum of the operators listed under it, and every kind but OUTSIDE lists some.
    assert set(kinds) == set(ops) | {OUTSIDE}
    for kind, by_op in ops.items():
        assert by_op and kinds[kind] == pytest.approx(sum(by_op.values())), kind
    assert all(ms > 0 for by_op in ops.values() for ms in by_op.values())
    assert "aten::_fused_sgd_" in ops["optimiser (fused SGD, zeroing gradients)"]
    every_op = {name for by_op in ops.values() for name in by_op}
    assert "aten::argmax" not in every_op  # evaluation (argmax of the logits) lies outside the profiled steps
    assert not every_op & MARKS  # the spans' own time is code between operators: OUTSIDE
    return ops


def test_fast_path_profile_splits_a_step_and_leaves_evaluation_out(mnist, monkeypatch):
    # The native step (hdr_lib.fast.native): its own loops by what they compute, the ATen operators it calls by name.
    monkeypatch.setenv("HDR_NATIVE", "1")  # on any CPU (by default only where it is the fastest, with AVX-512)
    ops = _check_split(step_profile(CPU, mnist, steps=20))
    # One operator: its parts come from its own clocks, by what they compute (each convolution with its ReLU and
    # pooling).
    conv = ops["convolutions (forward and backward)"]
    for layer in ("conv1", "conv2"):
        assert conv[f"hdr_lenet5: {layer} forward"] > 0 and conv[f"hdr_lenet5: {layer} backward"] > 0
    fc = ops["fully connected layers"]
    assert fc["hdr_lenet5: fully connected forward"] > 0 and fc["hdr_lenet5: fully connected backward"] > 0
    assert ops["loss (softmax, cross-entropy)"]["hdr_lenet5: loss"] > 0
    assert "max pooling (forward and backward)" not in ops and "ReLU (forward and backward)" not in ops
    # The operators' own C++ (the epoch runs train_steps; the first step gradients_into): OUTSIDE.
    assert not [name for name in ops.get("other operators", {}) if name.startswith("hdr_lenet5::")]


def test_explicit_step_profile_sorts_its_operators_by_its_spans(mnist, monkeypatch):
    monkeypatch.setenv("HDR_NATIVE", "0")  # the Python step, where no native step builds
    ops = _check_split(step_profile(CPU, mnist, steps=20))
    conv = ops["convolutions (forward and backward)"]
    assert conv["aten::mkldnn_convolution"] > 0 and conv["aten::convolution_backward"] > 0
    pooling = ops["max pooling (forward and backward)"]  # conv1's pooling is elementwise maxima on this path
    assert "aten::maximum" in pooling and "aten::mul" in pooling and "aten::max_pool2d_with_indices" in pooling
    # The explicit step's spans sort what operator names leave open: the loss gradient's exp_, the bias sums.
    assert "aten::exp_" in ops["loss (softmax, cross-entropy)"] and "aten::sum" in ops["fully connected layers"]
    assert "aten::threshold_backward" in ops["ReLU (forward and backward)"]  # a ReLU inside a layer's span


def test_reference_path_profile_counts_the_dataloader_as_loading(mnist):
    profile = step_profile(CPU.replace(path="reference"), mnist, steps=10)
    loading = profile["ops"]["loading the batch"]
    # The DataLoader's work (ToTensor's copies and divisions, collate's stacking) counts as loading, whatever its
    # operators are called.
    assert any("DataLoader" in name for name in loading) and "aten::div" in loading
    assert profile["kinds"]["loading the batch"] > 0


def test_an_epoch_shorter_than_the_steps_asked_for_is_profiled_whole(mnist):
    profile = step_profile(CPU.replace(batch_size=6000), mnist, steps=60)  # 10 steps per epoch
    assert profile["steps"] == 10


def test_the_native_steps_profile_names_every_part_and_adds_up_to_the_step(mnist):
    # bench --profile: the operator's own clocks per part, the rest of the step beside them.
    x_all = to_float(mnist.train_images[:2048]).view(-1, 1, 28, 28)
    profile = native_step_profile(x_all, mnist.train_labels[:2048], steps=30)
    assert profile["isa"] == native.loaded_isa() and profile["steps"] == 30 and profile["threads"] >= 1
    parts = profile["parts"]
    assert list(parts)[:len(native.PART_NAMES)] == list(native.PART_NAMES)
    assert all(ms >= 0 for ms in parts.values()) and sum(parts.values()) == pytest.approx(profile["ms_per_step"])
    # Every part of the arithmetic ran (each convolution, the fully connected layers, the loss, the update).
    assert all(parts[name] > 0 for name in native.PART_NAMES)

