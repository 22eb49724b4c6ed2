"""The training-step interface: which fast way `hdr_lib.fast.choose` picks and why, the reference step, and the short
keys a record names them by (with the prose of older records read as those keys)."""

import json

import pytest
import torch

from hdr_lib import PAPER, fast
from hdr_lib.data import to_float
from hdr_lib.fast import cuda_graphs
from hdr_lib.fast.steps import AutogradStep, ExplicitStep, FastStep
from hdr_lib.steps import ReferenceStep, Step
from hdr_lib.train import batch_order, init_model, make_optimizer

from conftest import REPO

CPU = PAPER.replace(device="cpu")
N = 640  # ten batches of 64


def _chosen(mnist, config, **kwargs):
    model = init_model(config, torch.device("cpu"))
    optimizer, _ = make_optimizer(model, config, fused=True)
    x, y = to_float(mnist.train_images[:N]), mnist.train_labels[:N]
    return fast.choose(config, model, optimizer, x, y, batch_size=config.batch_size, total_steps=10, **kwargs)


@pytest.mark.parametrize("changes, key, kind, why", [
    ({}, "explicit", ExplicitStep, "HDR_NATIVE=0"),
    ({"amp": "bf16"}, "forward", AutogradStep, "amp"),
    ({"variant": "lenet1998"}, "module", AutogradStep, "28x28"),
    ({"model": "resnet"}, "module", AutogradStep, "28x28"),
])
def test_choose_names_the_cpu_step_by_its_key_and_says_why(mnist, monkeypatch, changes, key, kind, why):
    monkeypatch.setenv("HDR_NATIVE", "0")
    step, reason = _chosen(mnist, CPU.replace(**changes))
    assert isinstance(step, kind) and isinstance(step, Step)
    assert step.how["cpu_step"] == key and key in fast.CPU_STEPS and step.how["cuda_kernels"] is None
    assert reason.startswith(f"{key}: ") and why in reason
    assert set(step.setup_seconds) == {"native_cpu_step", "triton_step", "compile", "cuda_graph_capture"}


def test_every_fast_step_runs_an_epoch_of_losses_and_batch_sizes(mnist, monkeypatch):
    monkeypatch.setenv("HDR_NATIVE", "0")
    step, _ = _chosen(mnist, CPU)
    losses, weights = step.run_epoch(batch_order(0, 1, N), 7, lambda n: None)
    assert losses.shape == (7,) and bool(torch.isfinite(losses).all()) and losses[0] > 2.2
    assert weights.tolist() == [64.0] * 7


def test_the_reference_step_and_the_fast_steps_follow_the_same_losses(mnist, data_root, monkeypatch):
    from hdr_lib.data import torchvision_datasets

    monkeypatch.setenv("HDR_NATIVE", "0")
    train_set, _ = torchvision_datasets(data_root)
    order = batch_order(0, 1, len(train_set))
    runs = {}
    for name in ("reference", "explicit", "forward"):
        model = init_model(CPU, torch.device("cpu"))
        optimizer, _ = make_optimizer(model, CPU, fused=name != "reference")
        if name == "reference":
            step = ReferenceStep(model, optimizer, train_set, 64, CPU, torch.device("cpu"))
        else:
            x, y = to_float(train_set.data), train_set.targets.long()
            step = (ExplicitStep(model, optimizer, x, y, 64) if name == "explicit" else
                    AutogradStep(model, optimizer, x, y, 64, forward=model, config=CPU))
        runs[name] = step.run_epoch(order, 5, lambda n: None)[0]
    for name in ("explicit", "forward"):
        torch.testing.assert_close(runs[name], runs["reference"], rtol=1e-5, atol=1e-5)
    assert len(set(runs["reference"].tolist())) == 5  # the losses move: agreement is not a constant


def test_a_cpu_step_wrapped_for_cuda_graphs_counts_its_eager_steps(mnist):
    model = init_model(CPU, torch.device("cpu"))
    optimizer, _ = make_optimizer(model, CPU, fused=True)
    x, y = to_float(mnist.train_images[:N]), mnist.train_labels[:N]
    step = AutogradStep(model, optimizer, x, y, 64, forward=model, config=CPU)
    graphed = cuda_graphs.Graphed(step, capture=False, full_epochs=True, partial_epochs=False)
    assert isinstance(step, FastStep) and graphed.inner is step
    graphed.run_epoch(batch_order(0, 1, N), 3, lambda n: None)
    assert graphed.how["cuda_steps"] == {"graph-epoch": 0, "graph-step": 0, "eager": 3}


# The prose that records made before the short keys stored, as the code of each time wrote it.
OLD_PROSE = {
    "native": ["hdr_lib.native: the loss and gradients in one C++ operator compiled for this CPU (conv1 with its "
               "ReLU and pooling", "hdr_lib.fast.native: the loss and gradients in one C++ operator compiled for "
               "this CPU (each convolution with its ReLU and pooling as one hand-vectorised loop"],
    "explicit": ["hdr_lib.fastcpu.train_step: conv1 computed per pooling corner, pooling as elementwise maxima, "
                 "gradients written out layer by layer (no autograd graph)",
                 "hdr_lib.fast.torch_cpu.train_step: conv1 computed per pooling corner, pooling as elementwise maxima"],
    "compiled": ["the module compiled by torch.compile (Inductor) with autograd"],
    "forward": ["hdr_lib.fastcpu.forward with autograd: conv1 computed per pooling corner, pooling as elementwise "
                "maxima", "hdr_lib.fast.torch_cpu.forward with autograd: conv1 computed per pooling corner"],
    "module": ["the module's forward with autograd"],
}
OLD_KERNELS = {
    "triton": ["hdr_lib.tritonstep: two Triton kernels per step (one program per image for the forward and backward",
               "hdr_lib.fast.triton_step: two Triton kernels per step"],
    "aten": ["PyTorch's own CUDA kernels (cuDNN convolutions, cuBLAS matrix products, elementwise kernels, fused SGD)"],
}


def _migration():
    import importlib.util

    spec = importlib.util.spec_from_file_location("migrate", REPO / "scripts" / "migrate_records_v2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", sorted(OLD_PROSE))
def test_the_migration_files_old_records_prose_under_the_cpu_steps_key(key):
    migrate = _migration()
    for prose in OLD_PROSE[key]:
        assert migrate.step_key(prose, migrate.OLD_CPU_STEPS) == key, prose
    assert migrate.step_key(key, migrate.OLD_CPU_STEPS) == key  # a key, as it is


@pytest.mark.parametrize("key", sorted(OLD_KERNELS))
def test_the_migration_files_old_records_prose_under_the_cuda_kernels_key(key):
    migrate = _migration()
    for prose in OLD_KERNELS[key]:
        assert migrate.step_key(prose, migrate.OLD_CUDA_KERNELS) == key, prose


def test_committed_records_are_filed_under_a_key():
    keys = {}
    for path in sorted((REPO / "results").glob("cpu-fast-*.json")):
        keys[path.name] = json.loads(path.read_text())["execution"]["cpu_step"]
    assert keys and all(key in fast.CPU_STEPS for key in keys.values()), keys
