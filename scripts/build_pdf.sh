#!/usr/bin/env bash
# The whole book as one PDF, _build/pdf/book.pdf (and a copy at _build/html/book.pdf, which the landing page links):
# Debian's chromium prints every page of the built book headless, once its figures have drawn, and pypdf joins
# them behind a title page and a table of contents (scripts/print_book.py). No notebook runs again.
#   Needs: the built book (bash scripts/build_book.sh, which builds it when _build/html is missing: set
#   HDR_BUILD_IF_MISSING=0 to stop with one line instead) and chromium (scripts/install_browser.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f _build/html/index.html ]]; then
    if [[ "${HDR_BUILD_IF_MISSING:-1}" == "1" ]]; then
        bash scripts/build_book.sh
    else
        echo "error: no built book at _build/html: run scripts/build_book.sh first" >&2
        exit 2
    fi
fi
command -v chromium >/dev/null 2>&1 || bash scripts/install_browser.sh
python scripts/print_book.py --html _build/html --out _build/pdf/book.pdf
cp _build/pdf/book.pdf _build/html/book.pdf
