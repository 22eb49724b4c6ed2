#!/usr/bin/env bash
# On the GPU machine (plain python3 with torch and torchvision, nothing else): the paper's configuration on
# CUDA, both paths and several seeds, the benchmark, and a CPU run on the same host for a same-machine
# speedup. Needs .gpu/ from scripts/pack_mnist_for_gpu.sh.
#
# Records go to $OUT/gpu-<date>/ when $OUT is set (the device tool's folder that comes back, also when the
# command runs out of time), else to results/gpu-<date>/. Copy that folder into results/ and commit it.
# The most wanted measurements run first: the fast path, then the benchmark, then the slow reference path.
#
# With the device tool:  run(command="bash scripts/gpu_replication.sh", carry=[".gpu"], timeout_s=600)
#
# DEVICE, SEEDS, REF_SEEDS, ROUNDS and EPOCHS override the defaults (cuda, 5, 2, 5, 20): the test suite runs
# this script on the CPU with tiny values, so it is known to work before a GPU is lent.
set -euo pipefail
export PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
SEEDS="${SEEDS:-5}"
REF_SEEDS="${REF_SEEDS:-2}"
ROUNDS="${ROUNDS:-5}"
EPOCHS="${EPOCHS:-20}"
[ -d .gpu/MNIST/raw ] || { echo "no .gpu/MNIST/raw: run scripts/pack_mnist_for_gpu.sh first, and carry .gpu" >&2; exit 2; }
data="$(mktemp -d)"
mkdir -p "$data/MNIST/raw"
for f in .gpu/MNIST/raw/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
export HDR_DATA_DIR="$data"
[ -f .gpu/COMMIT ] && export HDR_GIT_COMMIT="$(cat .gpu/COMMIT)"
out="${OUT:-results}/gpu-$(date -u +%Y%m%dT%H%M)"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 -m hdr_lib info | tee "$out/info.json"
common=(--device "$DEVICE" --epochs "$EPOCHS" --quiet)
# Paper configuration, IEEE float32 (no TF32), fast path: several seeds.
# If CUDA-graph capture fails on this torch, the same runs go eagerly, and the records say so.
python3 -m hdr_lib replicate "${common[@]}" --seeds "$SEEDS" --out-dir "$out" \
  || python3 -m hdr_lib replicate "${common[@]}" --seeds "$SEEDS" --out-dir "$out" --no-cuda-graph
# Both paths, alternating, one process.
python3 -m hdr_lib bench "${common[@]}" --rounds "$ROUNDS" --out "$out/bench-$DEVICE.json"
# The plain PyTorch loop on the same device (it is the slow one).
python3 -m hdr_lib replicate "${common[@]}" --path reference --seeds "$REF_SEEDS" --out-dir "$out"
# The same host's CPU, fast path, one seed: CPU vs GPU on one machine.
if [ "$DEVICE" != cpu ]; then
  python3 -m hdr_lib train --device cpu --epochs "$EPOCHS" --seed 0 --quiet --out "$out/cpu-fast-e$EPOCHS-b64-seed0.json"
fi
ls -l "$out"
