#!/usr/bin/env bash
# On the GPU machine (plain python3 with torch and torchvision, nothing else): the paper's configuration on
# CUDA, both paths and several seeds, the benchmark, and a CPU run on the same host for a same-machine
# speedup. Records go to results/gpu-<date>/. Needs .gpu/ from scripts/pack_mnist_for_gpu.sh.
#
# With the device tool:  run(command="bash scripts/gpu_replication.sh && tar czf $OUT/records.tgz results/gpu-*",
#                            carry=[".gpu"], timeout_s=600)
set -euo pipefail
export PYTHONUNBUFFERED=1
SEEDS="${SEEDS:-5}"
data=/tmp/hdr-mnist
mkdir -p "$data/MNIST/raw"
for f in .gpu/MNIST/raw/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
export HDR_DATA_DIR="$data"
[ -f .gpu/COMMIT ] && export HDR_GIT_COMMIT="$(cat .gpu/COMMIT)"
out="results/gpu-$(date -u +%Y%m%dT%H%M)"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 -m hdr_lib info | tee "$out/info.json"
# Paper configuration, IEEE float32 (no TF32), fast path: several seeds.
# If CUDA-graph capture fails on this torch, the same runs go eagerly, and the records say so.
python3 -m hdr_lib replicate --device cuda --seeds "$SEEDS" --quiet --out-dir "$out" \
  || python3 -m hdr_lib replicate --device cuda --seeds "$SEEDS" --quiet --out-dir "$out" --no-cuda-graph
# The plain PyTorch loop on the same GPU, two seeds (it is the slow one).
python3 -m hdr_lib replicate --device cuda --path reference --seeds 2 --quiet --out-dir "$out"
# Both paths, alternating, one process.
python3 -m hdr_lib bench --device cuda --rounds 5 --quiet --out "$out/bench-cuda.json"
# The same host's CPU, fast path, one seed: CPU vs GPU on one machine.
python3 -m hdr_lib train --device cpu --seed 0 --quiet --out "$out/cpu-fast-e20-b64-seed0.json"
ls -l "$out"
