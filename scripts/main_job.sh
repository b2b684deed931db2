#!/usr/bin/env bash
# The main job on Abt-Buy: install, train (threshold + probability fitted on valid), evaluate on test with the
# stored threshold, and verify a few example pairs. Extra arguments go to `twinnet train`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

twinnet datasets path abt-buy
twinnet train abt-buy -o models/abt-buy --overwrite --attributes name,price --split-codes --max-length 48 \
  --epochs 8 --lr 1e-4 --hard-negatives 1 --seed 42 "$@"
twinnet evaluate models/abt-buy abt-buy --split test -o models/abt-buy/test-report.json --overwrite
twinnet verify models/abt-buy "sony bravia 40 ' lcd hdtv kdl40v5100" "sony kdl-40v5100 bravia v series 40 lcd tv"
twinnet verify models/abt-buy "sony bravia 40 ' lcd hdtv kdl40v5100" "samsung 40 ' lcd hdtv ln40b650"
