#!/usr/bin/env bash
# Here, before a GPU run: gzip MNIST (about 11.5 MB) and the current commit into .gpu/ (git-ignored),
# the folder the device tool carries to the GPU machine. Usage: scripts/pack_mnist_for_gpu.sh [DATA_DIR]
set -euo pipefail
src="${1:-${HDR_DATA_DIR:-../shared/data}}/MNIST/raw"
mkdir -p .gpu/MNIST/raw
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  gzip -9 -c "$src/$f" > ".gpu/MNIST/raw/$f.gz"
done
# The commit the GPU records will name (the GPU machine's copy of the tree has no .git), with "+dirty" where the
# code has uncommitted changes: hdr_lib's own answer, so a record never names a commit that lacks the code it ran.
commit="$(python3 -c 'from hdr_lib.measure.machine import git_commit; print(git_commit() or "")')"
if [ -n "$commit" ]; then echo "$commit" > .gpu/COMMIT; else rm -f .gpu/COMMIT; fi
du -sh .gpu
