#!/usr/bin/env bash
# The headless browser the report test (tests/results/test_report.py) opens the HTML report in: Debian's
# Chromium and its WebDriver. Installed with apt-get when missing (root, or sudo without a password);
# otherwise says what to install. `make test` runs this before pytest.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "setup_browser: $(chromium --version 2>/dev/null | head -1) and chromedriver present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: no apt-get here; install Chromium and chromedriver (on PATH as chromium, chromedriver)" >&2
  exit 2
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then as_root=(sudo -n); else
    echo "setup_browser: run as root or: sudo apt-get install -y chromium chromium-driver" >&2
    exit 2
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver
echo "setup_browser: installed $(chromium --version | head -1)"
