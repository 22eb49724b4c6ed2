"""Bad input: a clear one-line error, exit status 2, no traceback, no record written."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from hdr_lib.mnist_files import raw_folder
from hdr_lib.measure.records import read_record

from conftest import REPO

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def run_cli(args, tmp_path, data_dir=None):
    env = dict(os.environ)
    if data_dir is not None:
        env["HDR_DATA_DIR"] = str(data_dir)
    out = tmp_path / "record.json"
    proc = subprocess.run([sys.executable, "-m", "hdr_lib", *args, "--out", str(out), "--quiet"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    return proc, out


def assert_clean_failure(proc, out, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path):
    proc, out = run_cli(["train", "--device", "cuda"], tmp_path)
    assert_clean_failure(proc, out, "CUDA is not available", "'cpu'")


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "0"], "--epochs: must be an integer from 1 to 1,000"),
    (["--epochs", "-3"], "--epochs: must be an integer from 1 to 1,000"),
    (["--epochs", "2.5"], "--epochs: must be an integer from 1 to 1,000"),
    (["--batch-size", "0"], "--batch-size: must be an integer from 1 to 60,000"),
    (["--batch-size", "sixty"], "--batch-size: must be an integer from 1 to 60,000"),
    (["--lr", "nan"], "--lr: must be a number greater than 0"),
    (["--lr", "inf"], "--lr: must be a number greater than 0"),
    (["--lr", "-0.01"], "--lr: must be a number greater than 0"),
    (["--lr", "0"], "--lr: must be a number greater than 0"),
    (["--batch-size", "70000"], "--batch-size: must be an integer from 1 to 60,000 (at most the training set)"),
])
def test_nonsense_numbers(tmp_path, args, fragment):
    proc, out = run_cli(["train", "--device", "cpu", *args], tmp_path)
    assert_clean_failure(proc, out, fragment)


def test_missing_mnist_says_where_it_looked_and_how_to_fix_it(tmp_path):
    proc, out = run_cli(["train", "--device", "cpu"], tmp_path, data_dir=tmp_path / "empty")
    assert_clean_failure(proc, out, "MNIST not found", str(tmp_path / "empty"), "HDR_DATA_DIR")


def test_corrupt_file_is_named(tmp_path, data_root):
    root = tmp_path / "copy"
    folder = raw_folder(root)
    folder.mkdir(parents=True)
    for name in NAMES:
        shutil.copy(raw_folder(data_root) / name, folder / name)
    (folder / NAMES[3]).write_bytes((folder / NAMES[3]).read_bytes()[:-100])  # truncated
    proc, out = run_cli(["train", "--device", "cpu"], tmp_path, data_dir=root)
    assert_clean_failure(proc, out, "t10k-labels-idx1-ubyte is corrupt or truncated")


def test_info_prints_the_provenance_a_record_holds():
    proc = subprocess.run([sys.executable, "-m", "hdr_lib", "info"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for key in ('"torch"', '"torchvision"', '"cpu"', '"threads"', '"gpu"', '"git_commit"'):
        assert key in proc.stdout


@pytest.mark.slow  # benchmarks on the real MNIST
def test_bench_times_a_fast_variant_from_the_command_line(tmp_path, data_root):
    # Ten big batches an epoch: the command's options, not the training, are what is tested here.
    proc, out = run_cli(["bench", "--device", "cpu", "--rounds", "1", "--batch-size", "6000", "--lr", "0.05",
                         "--fast-variant", "no-cuda-graph"], tmp_path, data_root)
    assert proc.returncode == 0, proc.stderr
    record = read_record(out)
    assert record["config"]["variants"] == ["no-cuda-graph"] and set(record["runs"]) == {
        "reference", "fast", "fast no-cuda-graph"}
    assert "fast no-cuda-graph:" in proc.stdout
    (tmp_path / "bad").mkdir()
    proc, out = run_cli(["bench", "--device", "cpu", "--fast-variant", "bogus"], tmp_path / "bad", data_root)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr and not out.exists()
