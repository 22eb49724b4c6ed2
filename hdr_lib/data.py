"""MNIST as tensors (or torchvision's datasets for the reference path), from its verified raw files
(`hdr_lib.mnist_files`), and the one conversion of its images to the network's input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hdr_lib.mnist_files import MNIST_SHA256, DataError, ensure_mnist, raw_folder


@dataclass(frozen=True)
class MNISTTensors:
    """The whole of MNIST in memory: images uint8 [N, 28, 28], labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path


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
    try:
        return (MNIST(root=str(root), train=True, transform=to_tensor),
                MNIST(root=str(root), train=False, transform=to_tensor))
    except Exception as exc:  # noqa: BLE001 (checked files that still cannot be read: one line naming the folder)
        raise DataError(f"MNIST files under {raw_folder(root)} could not be read as IDX: {exc}") from exc


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] on [0, 1] (§3.2), exactly as ToTensor scales."""
    return images.to(device).unsqueeze(1).float().div_(255.0)
