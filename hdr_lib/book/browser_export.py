"""What the page "On your machine" needs, written at build time into the site's `_static/hdr-browser/`: TensorFlow.js
(from node_modules, installed by `npm ci` from the lockfile), MNIST's four files as gzipped IDX (decompressed in the
browser), and for each seed the reference path's start: the initial `LeNet5` weights in TF.js layouts and the first
epoch's `batch_order(seed, 1)` permutation. Nothing here is committed; nothing in the page comes from the network.

Served over HTTP the page fetches the `.gz` files; opened from disk (`file://`, where Chromium refuses `fetch()`)
it loads the same bytes from `.js` files that hand them over as base64 (`window.hdrBrowserFiles[name]`).

Layouts: a PyTorch conv weight [out, in, kh, kw] becomes TF.js's [kh, kw, in, out]; a linear weight [out, in]
becomes [in, out]; fc1's input rows are reordered from PyTorch's NCHW flattening (c, h, w) to TF.js's NHWC one
(h, w, c), so the same numbers meet the same pixels."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from pathlib import Path

from hdr_lib.paths import REPOSITORY

SEEDS = range(5)  # the seeds the page offers (0-4), each about 300 kB
EPOCH = 1  # the page trains at most one epoch
TFJS_FILES = {"tf.min.js": "@tensorflow/tfjs/dist/tf.min.js",
              "tf-backend-webgpu.min.js": "@tensorflow/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js"}
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PAGE_SCRIPT = REPOSITORY / "book" / "_static" / "hdr_browser.js"


class AssetError(RuntimeError):
    """A file the page needs is missing (TensorFlow.js not installed, MNIST absent); one line naming the fix."""


def tfjs_versions(node_modules: Path = REPOSITORY / "node_modules") -> dict:
    """The installed TensorFlow.js packages' versions (their package.json)."""
    out = {}
    for package in ("tfjs", "tfjs-backend-webgpu"):
        meta = node_modules / "@tensorflow" / package / "package.json"
        if not meta.is_file():
            raise AssetError(f"{meta} is missing: run `npm ci` in {REPOSITORY} (scripts/build_book.sh does)")
        out["@tensorflow/" + package] = json.loads(meta.read_text())["version"]
    return out


def initial_weights(seed: int) -> dict:
    """The seed's initial LeNet5 weights (hdr_lib.train.init_model: the reference path's start) in TF.js layouts,
    which are Keras' (`hdr_lib.keras_lenet.torch_weights_to_keras`), as {name: float32 numpy array}."""
    import torch

    from hdr_lib.config import TrainConfig
    from hdr_lib.keras_lenet import torch_weights_to_keras
    from hdr_lib.train import init_model

    model = init_model(TrainConfig(seed=seed, device="cpu"), torch.device("cpu"))
    return {f"{layer}_{part}": array for layer, arrays in torch_weights_to_keras(model).items()
            for part, array in zip("wb", arrays)}


def first_epoch_order(seed: int, n: int = 60_000):
    """hdr_lib.train.batch_order(seed, 1, n) as uint16 (every index is below 65,536)."""
    import numpy as np

    from hdr_lib.train import batch_order

    order = batch_order(seed, EPOCH, n).numpy()
    assert order.max() < 65_536
    return order.astype(np.uint16)


def _b64(array) -> str:
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def seed_script(seed: int) -> str:
    """The JS that registers the seed's start: window.hdrBrowserSeeds[seed] = {weights, order}."""
    weights = {name: {"shape": list(a.shape), "b64": _b64(a.astype("float32"))} for name, a in initial_weights(seed).items()}
    payload = {"seed": seed, "epoch": EPOCH, "weights": weights, "order": _b64(first_epoch_order(seed))}
    return ("window.hdrBrowserSeeds = window.hdrBrowserSeeds || {};\n"
            f"window.hdrBrowserSeeds[{seed}] = {json.dumps(payload, separators=(',', ':'))};\n")


def write_assets(static: Path, *, data_root=None, node_modules: Path = REPOSITORY / "node_modules",
                 seeds=SEEDS) -> Path:
    """Everything the page loads, into `static` (the site's _static): hdr_browser.js, tf.min.js,
    tf-backend-webgpu.min.js, and hdr-browser/ (MNIST .gz and .gz.js, seed<N>.js, versions.js). Returns hdr-browser/."""
    from hdr_lib import mnist_files

    versions = tfjs_versions(node_modules)  # everything checked before anything is written
    raw = mnist_files.raw_folder(mnist_files.ensure_mnist(data_root, download=False))
    static = Path(static)
    folder = static / "hdr-browser"
    folder.mkdir(parents=True, exist_ok=True)
    for target, source in TFJS_FILES.items():
        shutil.copyfile(node_modules / source, static / target)
    shutil.copyfile(PAGE_SCRIPT, static / PAGE_SCRIPT.name)
    for name in MNIST_NAMES:
        gz = gzip.compress((raw / name).read_bytes(), compresslevel=9, mtime=0)
        (folder / f"{name}.gz").write_bytes(gz)
        (folder / f"{name}.gz.js").write_text("window.hdrBrowserFiles = window.hdrBrowserFiles || {};\n"
                                              f"window.hdrBrowserFiles[{json.dumps(name)}] = \"{base64.b64encode(gz).decode()}\";\n")
    for seed in seeds:
        (folder / f"seed{seed}.js").write_text(seed_script(seed))
    (folder / "versions.js").write_text(f"window.hdrBrowserVersions = {json.dumps(versions)};\n")
    return folder


def main(argv=None) -> int:
    import argparse
    import sys

    from hdr_lib.mnist_files import DataError

    parser = argparse.ArgumentParser(description="write the page 'On your machine''s assets into a _static folder")
    parser.add_argument("static", help="the folder to write into (the site's _static)")
    args = parser.parse_args(argv)
    try:
        print(write_assets(Path(args.static)))
    except (AssetError, DataError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
