#!/usr/bin/env bash
# Build the book from a fresh checkout: install the pinned Python packages and hdr_lib itself, then run every
# notebook once (the full 20-epoch CPU training of §3.4 included) and write the static site to _build/html.
# The build fails on any failing cell and on any Sphinx warning (-W), e.g. an output it cannot render.
#   MNIST: $HDR_DATA_DIR if set, else ../shared/data beside the checkout, else data/ of the repository (README)
#   HDR_SKIP_INSTALL=1  skip pip install (packages already installed)
set -euo pipefail
# A relative HDR_DATA_DIR means the folder the command was typed in: make it absolute before moving anywhere.
if [[ -n "${HDR_DATA_DIR:-}" && "$HDR_DATA_DIR" != /* ]]; then export HDR_DATA_DIR="$PWD/$HDR_DATA_DIR"; fi
cd "$(dirname "$0")/.."

if [[ "${HDR_SKIP_INSTALL:-0}" != "1" ]]; then
    python -m pip install --quiet -r requirements.txt
    python -m pip install --quiet --no-deps -e .  # hdr_lib, importable from every chapter; `hdr` on PATH
    # TensorFlow.js for the page "On your machine", exactly as package-lock.json pins it (copied into _static).
    command -v npm >/dev/null || { echo "npm not found: install Node.js 20 (Debian: apt-get install nodejs npm)" >&2; exit 2; }
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
# Where MNIST is, by the library's own rule, checked before any notebook starts: one line and exit 2 if absent.
python -m hdr_lib data

# The fast path's native CPU step is compiled once per machine (about 15 s); do it here, so that no chapter's
# output shows the compiler's message. Without a compiler it says why, and the chapters run the Python step.
python -m hdr_lib native

# Every build starts clean, the live-run cache the chapters share included: pages come only from this run.
rm -rf _build/html _build/.doctrees _build/run-cache
start=$(date +%s)
jupyter-book build . -W --keep-going
echo "book built in $(( $(date +%s) - start )) s: _build/html/index.html"
