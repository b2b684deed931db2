"""Data-parallel training under torchrun: 2 CPU processes (gloo) on a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_two_ranks_share_the_data_sync_gradients_and_only_rank0_writes(tmp_path):
    worker = Path(__file__).resolve().parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # different data: each rank trains on its own batches, and as many as the other
    first, second = ([tuple(map(tuple, b)) for b in r["batches"]] for r in ranks)
    assert len(first) == len(second) > 0
    assert not set(first) & set(second)
    # synchronised gradients: both ranks end with the same parameters, which did change
    assert ranks[0]["after"] == ranks[1]["after"] != ranks[0]["before"]
    # only rank 0 writes: one model, one log line per epoch (0 = before training, 1), its checkpoint
    assert [r["saved"] for r in ranks] == [True, False]
    assert (tmp_path / "model" / "model.safetensors").exists()
    log_lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log_lines] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-1"]
