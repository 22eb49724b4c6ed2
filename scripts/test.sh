#!/usr/bin/env bash
# Every test, with all set-up on a fresh machine: Python packages, the browser, the built book, then pytest
# (unit tests, notebooks through papermill, nbval on the notebooks with checked outputs, the browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
export HDR_DATA_DIR="${HDR_DATA_DIR:-$(cd .. && pwd)/shared/data}"
python3 -m pip install -q -r requirements.txt
bash scripts/install_browser.sh
# The browser test reads the built book: build it unless a build is already there (CI: always a fresh one).
[ -f _build/html/index.html ] || HDR_SKIP_INSTALL=1 bash scripts/build_book.sh
python3 -m pytest -ra tests \
  --nbval-lax notebooks/02_dataset.ipynb notebooks/03_network.ipynb notebooks/04_training_setup.ipynb "$@"
