#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser tests (tests/test_book_browser.py drives chromium
# over the DevTools protocol; tests/test_jupyterlab.py through selenium and /usr/bin/chromedriver, because Selenium
# Manager cannot download a driver here). Does nothing when both are on PATH; otherwise needs root and apt.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium present: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "chromium installed: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1)"
