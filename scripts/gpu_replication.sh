#!/usr/bin/env bash
# On the GPU machine (plain python3 with torch and torchvision; pytest where it is there): the CUDA tests, the
# paper's configuration on CUDA (both paths, several seeds, with and without torch.compile), the benchmark, and a
# CPU run on the same host for a same-machine speedup. Needs .gpu/ from scripts/pack_mnist_for_gpu.sh.
#
# The most wanted measurements run first. Each stage runs whatever became of the one before, and its outcome
# goes to stages.txt; the whole output goes to log.txt.
#
# With the device tool:  run(command="bash scripts/gpu_replication.sh", carry=[".gpu"], timeout_s=600)
#   $OUT set (the device tool's folder that comes back, at most 8 files): the records are written elsewhere and,
#   after every stage, packed into $OUT/gpu-<date>.tar.gz, so a command stopped at its time limit still brings
#   back every stage it finished. Here: tar -xzf <files_at>/gpu-*.tar.gz -C results/, then commit.
#   $OUT unset (by hand): the records go straight to results/gpu-<date>/.
#
# DEVICE, SEEDS, REF_SEEDS, COMPILE_SEEDS (also for --no-triton, mixed precision and the residual network), ROUNDS, EPOCHS, TESTS and STAGES override the
# defaults (cuda, 5, 2, 2, 5, 20, the three test files and every stage below), and MAX_STEPS (unset) stops every
# run after that many steps: the test suite runs this script on the CPU with tiny values, so it is known to work
# before a GPU is lent. All stages together may take longer than
# the device tool's 10 minutes a command: split them over two calls, e.g.
# STAGES="fast bench kernels tests fast-aten cpu", then STAGES="amp resnet fast-compiled reference" (each call packs its own
# gpu-<date>.tar.gz).
set -uo pipefail
export PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
SEEDS="${SEEDS:-5}"
REF_SEEDS="${REF_SEEDS:-2}"
COMPILE_SEEDS="${COMPILE_SEEDS:-2}"
ROUNDS="${ROUNDS:-5}"
EPOCHS="${EPOCHS:-20}"
TESTS="${TESTS:-tests/test_cuda.py tests/test_triton_step.py tests/test_cuda_graphs.py}"
STAGES="${STAGES:-fast bench kernels tests fast-aten cpu amp resnet fast-compiled reference}"
# One timing session for every record this script makes (environment.session; the book shows sessions apart).
export HDR_SESSION="${HDR_SESSION:-gpu-replication $(date -u +%Y-%m-%dT%H:%M:%SZ)}"
[ -d .gpu/MNIST/raw ] || { echo "no .gpu/MNIST/raw: run scripts/pack_mnist_for_gpu.sh first, and carry .gpu" >&2; exit 2; }
data="$(mktemp -d)"
mkdir -p "$data/MNIST/raw"
for f in .gpu/MNIST/raw/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)" || exit 2; done
export HDR_DATA_DIR="$data"
[ -f .gpu/COMMIT ] && export HDR_GIT_COMMIT="$(cat .gpu/COMMIT)"
name="gpu-$(date -u +%Y%m%dT%H%M%S)"
if [ -n "${OUT:-}" ]; then out="$(mktemp -d)/$name"; else out="results/$name"; fi
mkdir -p "$out"

pack() {  # the records so far, as one file in $OUT (replaced atomically, so a kill mid-pack loses nothing)
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/.$name.tar.gz" -C "$(dirname "$out")" "$name" && mv "$OUT/.$name.tar.gz" "$OUT/$name.tar.gz"
}

failed=0
stage() {  # stage NAME COMMAND...: run it, log it, note how it ended, pack
  local what="$1" started status
  shift
  started=$(date +%s)
  echo "== $what: $*" | tee -a "$out/log.txt"
  "$@" 2>&1 | tee -a "$out/log.txt"
  status=${PIPESTATUS[0]}
  echo "$what: exit $status after $(( $(date +%s) - started )) s" >> "$out/stages.txt"
  [ "$status" -eq 0 ] || failed=1
  pack
  return "$status"
}

common=(--device "$DEVICE" --epochs "$EPOCHS" --quiet)
[ -n "${MAX_STEPS:-}" ] && common+=(--max-steps "$MAX_STEPS")
wanted() {  # wanted NAME: whether STAGES names this stage (all of them by default)
  [[ " $STAGES " == *" $1 "* ]]
}
stage nvidia-smi bash -c "nvidia-smi > '$out/nvidia-smi.txt' 2>&1 || echo 'no nvidia-smi on this machine' > '$out/nvidia-smi.txt'"
stage info bash -c "python3 -m hdr_lib info > '$out/info.txt'"
# The paper's configuration, IEEE float32 (no TF32), fast path: several seeds. Where a graph cannot be captured
# the fast path runs eagerly and its records say why; should the run fail outright, it goes again without graphs.
if wanted fast; then
  stage fast python3 -m hdr_lib replicate "${common[@]}" --seeds "$SEEDS" --out-dir "$out" \
    || stage fast-nograph python3 -m hdr_lib replicate "${common[@]}" --seeds "$SEEDS" --out-dir "$out" --no-cuda-graph
fi
# Both paths, alternating, one process; on CUDA with PyTorch's kernels in the graph as a third way (--no-triton).
bench_extra=()
[ "$DEVICE" != cpu ] && bench_extra=(--fast-variant no-triton)
wanted bench && stage bench python3 -m hdr_lib bench "${common[@]}" --rounds "$ROUNDS" "${bench_extra[@]}" \
  --out "$out/bench-$DEVICE.json"
# The Triton step's two kernels timed alone (sample_kernel at 4, 8 and 16 warps): where a step's time goes.
if [ "$DEVICE" != cpu ] && wanted kernels; then
  stage kernels env PYTHONPATH=. python3 scripts/cuda_kernel_times.py --out "$out/kernel-times-cuda.json"
fi
# What CI cannot run: the CUDA tests (graphs against eager steps, the Triton step compiled for this GPU, the
# decaying lr, resume, compile).
if wanted tests && python3 -c "import pytest" 2>/dev/null && [ -d tests ]; then
  # shellcheck disable=SC2086  # TESTS is a list of files
  stage tests python3 -m pytest -q -rs -p no:cacheprovider $TESTS
fi
if [ "$DEVICE" != cpu ]; then
  # The same with PyTorch's own kernels (cuDNN, cuBLAS) in the graph instead of the Triton step: what it gains.
  wanted fast-aten && stage fast-aten python3 -m hdr_lib replicate "${common[@]}" --no-triton --seeds "$COMPILE_SEEDS" \
    --out-dir "$out"
  # The same host's CPU, both paths, two seeds each: CPU vs GPU on one machine (a speedup pairs runs of one host,
  # at least two of each; the headline pairs the reference path, the same software on both devices).
  host_cpu=(--device cpu --epochs "$EPOCHS" --quiet ${MAX_STEPS:+--max-steps "$MAX_STEPS"})
  wanted cpu && stage cpu bash -c "python3 -m hdr_lib replicate ${host_cpu[*]} --seeds 2 --out-dir '$out/host-cpu' \
    && python3 -m hdr_lib replicate ${host_cpu[*]} --path reference --seeds 2 --out-dir '$out/host-cpu'"
fi
# The paper's future work (§5) on this device: mixed precision (bfloat16 autocast; on CUDA also float16 with a
# gradient scaler) and the small residual network (hdr_lib.model.ResNet). One GPU: no data-parallel stage.
if wanted amp; then
  stage amp-bf16 python3 -m hdr_lib replicate "${common[@]}" --amp bf16 --seeds "$COMPILE_SEEDS" --out-dir "$out"
  [ "$DEVICE" != cpu ] && stage amp-fp16 python3 -m hdr_lib replicate "${common[@]}" --amp fp16 \
    --seeds "$COMPILE_SEEDS" --out-dir "$out"
fi
wanted resnet && stage resnet python3 -m hdr_lib replicate "${common[@]}" --model resnet --seeds "$COMPILE_SEEDS" \
  --out-dir "$out"
# PyTorch's kernels compiled by torch.compile (a minute or so of compilation per process).
wanted fast-compiled && stage fast-compiled python3 -m hdr_lib replicate "${common[@]}" --compile --seeds "$COMPILE_SEEDS" \
  --out-dir "$out"
# The plain PyTorch loop on the same device: the slow one, last.
wanted reference && stage reference python3 -m hdr_lib replicate "${common[@]}" --path reference --seeds "$REF_SEEDS" \
  --out-dir "$out"
cat "$out/stages.txt"
ls -lR "$out"
exit "$failed"
