"""The data loader on a tiny IDX set the test writes itself, and on the real MNIST."""

import hashlib
import shutil

import pytest
import torch

from hdr_lib.data import load_mnist, to_float
from hdr_lib.mnist_files import MNIST_SHA256, DataError, raw_folder

from conftest import write_idx

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture
def tiny(tmp_path):
    """A six-image training set and a three-image test set in torchvision's layout, with their checksums."""
    g = torch.Generator().manual_seed(0)
    arrays = {
        NAMES[0]: torch.randint(0, 256, (6, 28, 28), generator=g, dtype=torch.uint8),
        NAMES[1]: torch.tensor([0, 1, 2, 3, 4, 5], dtype=torch.uint8),
        NAMES[2]: torch.randint(0, 256, (3, 28, 28), generator=g, dtype=torch.uint8),
        NAMES[3]: torch.tensor([7, 8, 9], dtype=torch.uint8),
    }
    folder = raw_folder(tmp_path)
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(folder / name, array)
    sums = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in NAMES}
    return tmp_path, arrays, sums


def test_tiny_set_loads_exactly(tiny):
    root, arrays, sums = tiny
    data = load_mnist(root, download=False, checksums=sums)
    assert torch.equal(data.train_images, arrays[NAMES[0]])
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert data.train_labels.dtype == torch.int64
    assert torch.equal(data.test_images, arrays[NAMES[2]])
    x = to_float(data.train_images)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0] * 255, arrays[NAMES[0]].float())


def test_truncated_file_is_named_as_corrupt_or_truncated(tiny):
    root, _, sums = tiny
    path = raw_folder(root) / NAMES[2]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is corrupt or truncated"):
        load_mnist(root, download=False, checksums=sums)


def test_wrong_checksum_is_refused(tiny):
    root, _, sums = tiny
    bad = dict(sums, **{NAMES[1]: "0" * 64})
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupt or truncated"):
        load_mnist(root, download=False, checksums=bad)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="MNIST not found: looked for .*train-images-idx3-ubyte.*HDR_DATA_DIR"):
        load_mnist(tmp_path / "nowhere", download=False)


def test_real_mnist_matches_the_published_figures(mnist, data_root):
    for name, digest in MNIST_SHA256.items():
        assert hashlib.sha256((raw_folder(data_root) / name).read_bytes()).hexdigest() == digest
    assert mnist.train_images.shape == (60_000, 28, 28)
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = to_float(mnist.train_images)
    assert x.min() == 0 and x.max() == 1  # §3.2: [0, 1], no other normalisation
    assert abs(x.mean().item() - 0.1307) < 1e-4 and abs(x.std().item() - 0.3081) < 1e-4


def test_corrupt_real_copy_is_refused(tmp_path, data_root):
    folder = raw_folder(tmp_path)
    folder.mkdir(parents=True)
    for name in NAMES:
        shutil.copy(raw_folder(data_root) / name, folder / name)
    with open(folder / NAMES[0], "r+b") as f:
        f.seek(5000)
        f.write(b"\xff")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt or truncated"):
        load_mnist(tmp_path, download=False)
