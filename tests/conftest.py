"""Shared fixtures: the real MNIST, found by the library's own rule (hdr_lib.mnist_files.locate: $HDR_DATA_DIR, else
../shared/data beside the checkout, as in CI), loaded once per session; headless Chromium for the browser tests, and
what they do where it is missing (`missing`)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def emulated_capture(work, warmup):
    """hdr_lib.fast.cuda_graphs.capture on the CPU: warm up, run the work once, and return a "graph" whose replay runs the
    work again into the tensor the first run returned, as a real replay writes its static outputs in place (and
    reads its inputs, the batch order and the lr, from the same tensors each time)."""
    warmup()
    out = work()

    class Replay:
        def replay(self):
            out.copy_(work())

    return Replay(), out


def write_idx(path: Path, array) -> None:
    """Write a uint8 tensor as an IDX file (to build a tiny MNIST)."""
    import struct

    import torch

    data = array.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.write_bytes(header + data.numpy().tobytes())


@pytest.fixture(scope="session")
def data_root() -> Path:
    from hdr_lib.mnist_files import locate, raw_folder

    location = locate()
    if not raw_folder(location.root).is_dir():
        pytest.fail(f"no MNIST/raw under {location.root} ({location.why}): set HDR_DATA_DIR to the folder "
                    "holding MNIST/raw, or put ../shared/data beside the checkout")
    return location.root


@pytest.fixture(scope="session")
def mnist(data_root):
    from hdr_lib.data import load_mnist

    return load_mnist(data_root, download=False)


def missing(reason: str):
    """What the browser tests do without their browser, driver or built book: skip with the reason locally, fail
    where CI is set (CI installs them all: scripts/install_browser.sh, scripts/build_book.sh)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def headless_chromium():
    """Headless Chromium with its DevTools port (scripts/chromium.py: Browser), one per test module."""
    from scripts import chromium

    try:
        browser = chromium.Browser()
    except chromium.Missing as exc:
        missing(str(exc))
    except chromium.NotStarted as exc:
        pytest.fail(f"chromium did not start: {exc}")
    with browser:
        yield browser


# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_triton_step.py): it must be chosen before
# hdr_lib.fast.triton_kernels is first imported, which nothing does before the tests run.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
