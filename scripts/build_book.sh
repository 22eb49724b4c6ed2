#!/usr/bin/env bash
# Build the book from a fresh checkout: install the pinned Python packages, then run every notebook once
# (the full 20-epoch CPU training of §3.4 included) and write the static site to _build/html.
# The build fails on any failing cell and on any Sphinx warning (-W), e.g. an output it cannot render.
#   HDR_DATA_DIR  MNIST root holding MNIST/raw (default: ../shared/data, beside the checkout)
#   HDR_SKIP_INSTALL=1  skip pip install (packages already installed)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${HDR_SKIP_INSTALL:-0}" != "1" ]]; then
    python -m pip install --quiet -r requirements.txt
fi
export HDR_DATA_DIR="${HDR_DATA_DIR:-../shared/data}"
if [[ ! -d "$HDR_DATA_DIR/MNIST/raw" ]]; then
    echo "error: no MNIST under HDR_DATA_DIR=$HDR_DATA_DIR (expected $HDR_DATA_DIR/MNIST/raw); set HDR_DATA_DIR" >&2
    exit 2
fi

# The fast path's native CPU step is compiled once per machine (about 15 s); do it here, so that no chapter's
# output shows the compiler's message. Without a compiler it says why, and the chapters run the Python step.
python -m hdr_lib native

# Every build starts clean, the live-run cache the chapters share included: pages come only from this run.
rm -rf _build/html _build/.doctrees _build/run-cache
start=$(date +%s)
jupyter-book build . -W --keep-going
echo "book built in $(( $(date +%s) - start )) s: _build/html/index.html"
