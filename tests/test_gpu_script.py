"""The GPU replication script, run here on the CPU with tiny settings: it must work before a GPU is lent.

It runs as on the GPU machine: in a copy of the tree without .git, from the gzipped MNIST that
scripts/pack_mnist_for_gpu.sh writes, with its records going to $OUT (what the device tool brings back).
"""

import os
import shutil
import subprocess

from hdr_lib.records import read_record

from conftest import REPO


def _tree(tmp_path):
    tree = tmp_path / "tree"
    for part in ("hdr_lib", "scripts"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_gpu_replication_script_writes_every_record_to_out(tmp_path, data_root):
    tree = _tree(tmp_path)
    subprocess.run(["bash", "scripts/pack_mnist_for_gpu.sh", str(data_root)], cwd=tree, check=True,
                   capture_output=True)
    assert sorted(p.name for p in (tree / ".gpu" / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HDR_DATA_DIR"}  # the script must find MNIST in .gpu/
    env.update(DEVICE="cpu", SEEDS="1", REF_SEEDS="1", ROUNDS="1", EPOCHS="1", OUT=str(out))
    done = subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = out.glob("gpu-*")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["bench-cpu.json", "cpu-fast-e1-b64-seed0.json", "cpu-reference-e1-b64-seed0.json", "info.json",
                     "nvidia-smi.txt"]
    for name in ("cpu-fast-e1-b64-seed0.json", "cpu-reference-e1-b64-seed0.json"):
        record = read_record(folder / name)
        assert record["status"] == "complete" and record["test_accuracy"] > 95  # one epoch of the real MNIST
    assert read_record(folder / "bench-cpu.json")["kind"] == "bench"


def test_gpu_replication_script_without_packed_data_says_what_to_run(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=_tree(tmp_path), capture_output=True,
                          text=True, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert done.returncode == 2
    assert "scripts/pack_mnist_for_gpu.sh" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing started
