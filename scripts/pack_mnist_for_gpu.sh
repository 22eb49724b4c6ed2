#!/usr/bin/env bash
# Here, before a GPU run: gzip MNIST (about 11.5 MB) and the current commit into .gpu/ (git-ignored),
# the folder the device tool carries to the GPU machine. Usage: scripts/pack_mnist_for_gpu.sh [DATA_DIR]
set -euo pipefail
src="${1:-${HDR_DATA_DIR:-../shared/data}}/MNIST/raw"
mkdir -p .gpu/MNIST/raw
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  gzip -9 -c "$src/$f" > ".gpu/MNIST/raw/$f.gz"
done
git rev-parse HEAD > .gpu/COMMIT
du -sh .gpu
