"""The GPU replication script, run here on the CPU with tiny settings: it must work before a GPU is lent.

It runs as on the GPU machine: in a copy of the tree without .git, from the gzipped MNIST that
scripts/pack_mnist_for_gpu.sh writes, with its records going to $OUT (what the device tool brings back).
"""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from hdr_lib.measure.records import load_records, read_record

from conftest import REPO

pytestmark = pytest.mark.slow  # runs the GPU script's stages on the CPU


def _tree(tmp_path):
    tree = tmp_path / "tree"
    for part in ("hdr_lib", "scripts", "tests"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_gpu_replication_script_packs_every_stage_into_one_file_in_out(tmp_path, data_root):
    tree = _tree(tmp_path)
    subprocess.run(["bash", "scripts/pack_mnist_for_gpu.sh", str(data_root)], cwd=tree, check=True,
                   capture_output=True)
    assert sorted(p.name for p in (tree / ".gpu" / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HDR_DATA_DIR"}  # the script must find MNIST in .gpu/
    # Twenty steps a run: the script's stages and records are what is tested, not the training (a full reference
    # epoch took 233 s on a loaded 2-core machine).
    env.update(DEVICE="cpu", SEEDS="1", REF_SEEDS="1", COMPILE_SEEDS="1", ROUNDS="1", EPOCHS="1", MAX_STEPS="20",
               OUT=str(out), TESTS="tests/test_cuda.py tests/test_cuda_graphs.py")
    done = subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:]
    # The device tool brings back at most 8 files from $OUT: everything is in one archive.
    (archive,) = out.iterdir()
    assert archive.name.startswith("gpu-") and archive.name.endswith(".tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (folder,) = (tmp_path / "unpacked").iterdir()
    names = sorted(p.name for p in folder.iterdir())  # a run stopped by MAX_STEPS is named so (-steps20)
    assert names == ["bench-cpu.json", "cpu-fast-e1-b64-bf16-steps20-seed0.json", "cpu-fast-e1-b64-compiled-steps20-seed0.json",
                     "cpu-fast-e1-b64-resnet-steps20-seed0.json", "cpu-fast-e1-b64-steps20-seed0.json",
                     "cpu-reference-e1-b64-steps20-seed0.json", "info.txt", "log.txt", "nvidia-smi.txt", "stages.txt"]
    stages = (folder / "stages.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in stages] == ["nvidia-smi", "info", "fast", "bench", "tests", "amp-bf16",
                                                      "resnet", "fast-compiled", "reference"]
    assert all(": exit 0 after " in line for line in stages), stages
    log = (folder / "log.txt").read_text()
    assert "passed" in log and "skipped" in log  # the CUDA tests skip on the CPU, the emulated graph tests pass
    for name in ("cpu-fast-e1-b64-steps20-seed0.json", "cpu-reference-e1-b64-steps20-seed0.json",
                 "cpu-fast-e1-b64-compiled-steps20-seed0.json", "cpu-fast-e1-b64-bf16-steps20-seed0.json",
                 "cpu-fast-e1-b64-resnet-steps20-seed0.json"):
        record = read_record(folder / name)
        assert record["status"] == "incomplete" and record["max_steps"] == 20  # a check, never a headline record
        assert record["epochs"][0]["steps"] == 20 and 0 <= record["test_accuracy"] <= 100
    assert read_record(folder / "cpu-fast-e1-b64-compiled-steps20-seed0.json")["execution"]["compiled"]
    # The future-work stages: mixed precision and the residual network.
    assert read_record(folder / "cpu-fast-e1-b64-bf16-steps20-seed0.json")["config"]["amp"] == "bf16"
    assert read_record(folder / "cpu-fast-e1-b64-resnet-steps20-seed0.json")["config"]["model"] == "resnet"
    bench = read_record(folder / "bench-cpu.json")
    assert bench["kind"] == "bench" and bench["max_steps"] == 20 and bench["status"] == "incomplete"
    # Unpacked into results/, the folder holds nothing the book's record loader cannot read.
    assert len(load_records(folder, kind=None, status=None)) == 6


def test_a_failing_stage_is_noted_and_the_later_stages_still_run(tmp_path, data_root):
    tree = _tree(tmp_path)
    subprocess.run(["bash", "scripts/pack_mnist_for_gpu.sh", str(data_root)], cwd=tree, check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "HDR_DATA_DIR"}
    # Epochs of 0 fail every training stage at once, with the CLI's clear error: the script must go on to the end.
    env.update(DEVICE="cpu", SEEDS="1", REF_SEEDS="1", COMPILE_SEEDS="1", ROUNDS="1", EPOCHS="0", OUT=str(tmp_path),
               TESTS="tests/test_cuda.py tests/test_cuda_graphs.py")
    done = subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1
    (archive,) = tmp_path.glob("gpu-*.tar.gz")
    with tarfile.open(archive) as tar:
        stages = tar.extractfile(f"{archive.name[:-7]}/stages.txt").read().decode().splitlines()
    assert [line.split(":")[0] for line in stages] == ["nvidia-smi", "info", "fast", "fast-nograph", "bench",
                                                      "tests", "amp-bf16", "resnet", "fast-compiled", "reference"]
    assert [": exit 0 " in line for line in stages] == [True, True, False, False, False, True, False, False, False,
                                                        False]


def test_stages_chosen_by_name_run_alone(tmp_path, data_root):
    # The device tool gives a command 10 minutes: the stages can be split over calls.
    tree = _tree(tmp_path)
    subprocess.run(["bash", "scripts/pack_mnist_for_gpu.sh", str(data_root)], cwd=tree, check=True,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "HDR_DATA_DIR"}
    env.update(DEVICE="cpu", EPOCHS="0", STAGES="bench reference", OUT=str(tmp_path))
    subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=tree, env=env, capture_output=True, timeout=600)
    (archive,) = tmp_path.glob("gpu-*.tar.gz")
    with tarfile.open(archive) as tar:
        stages = tar.extractfile(f"{archive.name[:-7]}/stages.txt").read().decode().splitlines()
    assert [line.split(":")[0] for line in stages] == ["nvidia-smi", "info", "bench", "reference"]


def test_the_kernel_timer_refuses_a_machine_without_a_gpu_and_nonsense_warps_before_any_work(tmp_path):
    # CUDA_VISIBLE_DEVICES hides any GPU, so this checks the refusal on the GPU machine too.
    out = tmp_path / "kernel-times-cuda.json"
    done = subprocess.run([sys.executable, "scripts/cuda_kernel_times.py", "--out", str(out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "cuda_kernel_times: needs a CUDA GPU (none on this machine)"
    assert not out.exists()
    bad = subprocess.run([sys.executable, "scripts/cuda_kernel_times.py", "--out", str(out), "--warps", "8,six"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--warps powers of 2" in bad.stderr and not out.exists()


def test_gpu_replication_script_without_packed_data_says_what_to_run(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu_replication.sh"], cwd=_tree(tmp_path), capture_output=True,
                          text=True, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert done.returncode == 2
    assert "scripts/pack_mnist_for_gpu.sh" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing started
