"""Two loops held out from the library, timed beside its paths by the benchmark (`bench --loops`): what a reader
would write without it, with the paper's LeNet-5, batch and SGD.

- `tight`: all of MNIST in one float tensor, batches cut by index from a random order, model(x), backward, step;
  what a competent user writes in 20 lines.
- `canonical`: torchvision's MNIST dataset through a shuffling DataLoader, the tutorial loop.

`busy_core` makes one core busy for the benchmark's contended rounds: one process spinning in Python, stopped when
the block ends and in any case after `limit` seconds.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import torch
from torch.nn import functional as F

from hdr_lib import data as mnist
from hdr_lib.model import LeNet5

LOOPS = ("tight", "canonical")


def _accuracy(model, x_test, y_test) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                      for i in range(0, len(x_test), 1000))
    model.train()
    return 100.0 * correct / len(x_test)


def run_loop(name: str, config, data, max_steps: int | None = None) -> dict:
    """One epoch of loop `name` (LOOPS) with `config`'s seed, batch, lr and momentum: a record like train's, with
    the one epoch's seconds, loss and test accuracy."""
    torch.manual_seed(config.seed)
    model = LeNet5(config.variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    x_test, y_test = mnist.to_float(data.test_images), data.test_labels
    setup = time.perf_counter()
    if name == "tight":
        x, y = mnist.to_float(data.train_images), data.train_labels
        batches = ((x[idx], y[idx]) for idx in torch.randperm(len(x)).split(config.batch_size))
    elif name == "canonical":
        train_set, _ = mnist.torchvision_datasets(data.root, download=False)
        batches = iter(torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True))
    else:
        raise ValueError(f"unknown loop {name!r}; choose from {', '.join(LOOPS)}")
    setup = time.perf_counter() - setup
    losses, start = [], time.perf_counter()
    for step, (xb, yb) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    epoch = {"epoch": 1, "train_seconds": seconds, "train_loss": sum(losses) / len(losses),
             "test_accuracy": _accuracy(model, x_test, y_test)}
    return {"epochs": [epoch], "setup_seconds": {"data": setup},
            "execution": {"loop": name, "threads": torch.get_num_threads()}}


SPIN = "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n"


@contextlib.contextmanager
def busy_core(limit: float = 900.0):
    """One core made busy while the block runs: a Python process spinning, ended when the block ends (and by
    itself after `limit` seconds, were this process killed)."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(limit=float(limit))])
    try:
        time.sleep(0.2)  # let it start spinning before the timed work
        yield spinner.pid
    finally:
        spinner.terminate()
        spinner.wait(timeout=10)
