"""MNIST: locate it, check its four raw files against SHA-256, and load it as tensors or torchvision datasets."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_VAR = "HDR_DATA_DIR"
DEFAULT_DIR = "data"

# SHA-256 of the four original MNIST files, uncompressed, under torchvision's names.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DataError(RuntimeError):
    """MNIST is missing, corrupt or truncated; the message names the file and says how to fix it."""


@dataclass(frozen=True)
class MNISTTensors:
    """The whole of MNIST in memory: images uint8 [N, 28, 28], labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The torchvision root that holds MNIST/raw: the argument, else $HDR_DATA_DIR, else ./data."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(root).expanduser()


def raw_folder(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple, bool] = {}


def verify_raw(root: Path, checksums: dict[str, str] = MNIST_SHA256) -> None:
    """Check that every raw file exists and matches its SHA-256; raise DataError naming the first that does not."""
    folder = raw_folder(root)
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise DataError(_missing_message(root, path))
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
        if _verified.get(key):
            continue
        actual = _sha256(path)
        if actual != expected:
            raise DataError(
                f"MNIST file {path} is corrupt or truncated: its SHA-256 is {actual[:16]}..., "
                f"expected {expected[:16]}... ({stat.st_size:,} bytes on disk). Delete it and download "
                f"MNIST again, or point {ENV_VAR} at a good copy."
            )
        _verified[key] = True


def _missing_message(root: Path, path: Path) -> str:
    return (
        f"MNIST not found: looked for {path} (data root {root.resolve()}, from "
        f"{'$' + ENV_VAR if os.environ.get(ENV_VAR) else 'the default ./' + DEFAULT_DIR}) and could not "
        f"download it. Set {ENV_VAR} to a folder that holds MNIST/raw/ with the four IDX files, or run "
        f"once on a machine with network access so torchvision can download them."
    )


def ensure_mnist(root: str | os.PathLike | None = None, *, download: bool = True,
                 checksums: dict[str, str] = MNIST_SHA256) -> Path:
    """Return the verified data root, downloading through torchvision first if files are missing."""
    root = data_dir(root)
    folder = raw_folder(root)
    if download and not all((folder / name).is_file() for name in checksums):
        try:
            from torchvision.datasets import MNIST

            MNIST(root=str(root), train=True, download=True)
            MNIST(root=str(root), train=False, download=True)
        except Exception:  # no network, no permission: report below as "not found"
            pass
    verify_raw(root, checksums)
    return root


def load_mnist(root: str | os.PathLike | None = None, *, download: bool = True,
               checksums: dict[str, str] = MNIST_SHA256) -> MNISTTensors:
    """Verified MNIST as uint8 image tensors and int64 labels, read by torchvision.datasets.MNIST."""
    from torchvision.datasets import MNIST

    root = ensure_mnist(root, download=download, checksums=checksums)
    try:
        train = MNIST(root=str(root), train=True, download=False)
        test = MNIST(root=str(root), train=False, download=False)
    except Exception as exc:  # a file with the right checksum table but an unreadable IDX header
        raise DataError(f"MNIST files under {raw_folder(root)} could not be read as IDX: {exc}") from exc
    return MNISTTensors(train.data, train.targets.long(), test.data, test.targets.long(), root)


def torchvision_datasets(root: str | os.PathLike | None = None, *, download: bool = True):
    """The plain way: torchvision's MNIST with ToTensor (scales to [0, 1]), as the reference path uses."""
    from torchvision import transforms
    from torchvision.datasets import MNIST

    root = ensure_mnist(root, download=download)
    to_tensor = transforms.ToTensor()
    return (MNIST(root=str(root), train=True, transform=to_tensor),
            MNIST(root=str(root), train=False, transform=to_tensor))


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] on [0, 1] (§3.2), exactly as ToTensor scales."""
    return images.to(device).unsqueeze(1).float().div_(255.0)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (used by tests to build a tiny MNIST)."""
    import struct

    data = array.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.write_bytes(header + data.numpy().tobytes())
