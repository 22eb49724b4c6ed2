#!/usr/bin/env bash
# Every test, with all set-up on a fresh machine: Python packages and hdr_lib, the browser, the built book and its PDF, then
# pytest (unit tests, notebooks through papermill, nbval on the notebooks with checked outputs, the browser tests of
# the built book and of the chapters in JupyterLab). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
if [[ -n "${HDR_DATA_DIR:-}" && "$HDR_DATA_DIR" != /* ]]; then export HDR_DATA_DIR="$PWD/$HDR_DATA_DIR"; fi
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps -e .
# TensorFlow.js for the page "On your machine" and its browser test, exactly as package-lock.json pins it.
command -v npm >/dev/null || { echo "npm not found: install Node.js 20 (Debian: apt-get install nodejs npm)" >&2; exit 2; }
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
bash scripts/install_browser.sh
# The browser test reads the built book: build it unless a build is already there.
[ -f _build/html/index.html ] || HDR_SKIP_INSTALL=1 bash scripts/build_book.sh
# tests/test_pdf.py reads the whole-book PDF: print it from that build (a few minutes; no notebook runs again).
[ -f _build/pdf/book.pdf ] || bash scripts/build_pdf.sh
python3 -m pytest -ra --durations=15 tests \
  --nbval-lax notebooks/02_dataset.ipynb notebooks/03_network.ipynb notebooks/04_training_setup.ipynb "$@"
