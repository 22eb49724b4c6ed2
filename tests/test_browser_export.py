"""What the build exports for the page "On your machine": the seed's initial LeNet5 weights in TF.js layouts hold
exactly init_model's numbers (fc1's rows reordered from NCHW to NHWC flattening), the order is batch_order(seed, 1),
and a missing MNIST is one line and exit 2 with nothing written. (The browser test checks the page trains from them.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from hdr_lib.book import browser_export
from hdr_lib.config import TrainConfig
from hdr_lib.train import batch_order, init_model

ROOT = Path(__file__).resolve().parent.parent


def test_weights_in_tfjs_layouts_are_the_reference_start():
    tfjs = browser_export.initial_weights(3)
    torch_state = init_model(TrainConfig(seed=3, device="cpu"), torch.device("cpu")).state_dict()
    assert np.array_equal(tfjs["conv1_w"], torch_state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    assert np.array_equal(tfjs["fc3_w"], torch_state["fc3.weight"].numpy().T)
    # fc1: the same logits from a pooled feature map flattened as PyTorch (c, h, w) and as TF.js (h, w, c) does
    features = torch.randn(2, 16, 4, 4)
    ours = features.permute(0, 2, 3, 1).reshape(2, -1).numpy() @ tfjs["fc1_w"]
    theirs = torch.nn.functional.linear(features.flatten(1), torch_state["fc1.weight"]).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert sum(a.size for a in tfjs.values()) == sum(t.numel() for t in torch_state.values())


def test_the_seed_script_carries_the_first_epochs_order():
    text = browser_export.seed_script(1)
    payload = json.loads(text.split("] = ", 1)[1].rstrip(";\n"))
    order = np.frombuffer(base64.b64decode(payload["order"]), dtype="<u2")
    assert np.array_equal(order, batch_order(1, 1, 60_000).numpy())
    conv2 = np.frombuffer(base64.b64decode(payload["weights"]["conv2_w"]["b64"]), dtype="<f4")
    assert np.array_equal(conv2, browser_export.initial_weights(1)["conv2_w"].ravel())


def test_missing_mnist_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    target = tmp_path / "static"
    out = subprocess.run([sys.executable, "-m", "hdr_lib.book.browser_export", str(target)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "HDR_DATA_DIR": str(tmp_path / "none")})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "MNIST not found" in out.stderr
    assert not target.exists()
