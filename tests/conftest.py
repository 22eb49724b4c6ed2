"""Shared fixtures: the real MNIST (from $HDR_DATA_DIR, as CI sets it) loaded once per session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def emulated_capture(work, warmup):
    """hdr_lib.cudagraphs.capture on the CPU: warm up, run the work once, and return a "graph" whose replay runs the
    work again into the tensor the first run returned, as a real replay writes its static outputs in place (and
    reads its inputs, the batch order and the lr, from the same tensors each time)."""
    warmup()
    out = work()

    class Replay:
        def replay(self):
            out.copy_(work())

    return Replay(), out


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("HDR_DATA_DIR")
    if not root:
        pytest.fail("set HDR_DATA_DIR to the folder holding MNIST/raw (CI: ../shared/data)")
    return Path(root)


@pytest.fixture(scope="session")
def mnist(data_root):
    from hdr_lib.data import load_mnist

    return load_mnist(data_root, download=False)


# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_tritonstep.py): it must be chosen before
# hdr_lib.tritonkernels is first imported, which nothing does before the tests run.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
