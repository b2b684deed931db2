"""Shared helpers for benchmarks: machine facts, versions, peak RSS, results files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and its finished children) in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return own / 1024.0  # Linux reports KiB


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for package in ("twinnet", "torch", "transformers", "sentence-transformers", "pytorch-metric-learning",
                    "scikit-learn"):
        try:
            out[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is simply not reported
            pass
    return out


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": None if not torch.cuda.is_available()
            else torch.cuda.get_device_name(0), "platform": platform.platform()}


def write_results(name: str, results: list[dict], command: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
               "date": _dt.date.today().isoformat(), "machine": machine(), "versions": versions(),
               "results": results}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def sentence_transformers_pairs_per_s(left: list[str], right: list[str], targets: list[float], loss: str, *,
                                      batch_size: int, max_length: int, learning_rate: float,
                                      max_steps: int = -1) -> float:
    """Training pairs per second of sentence-transformers' own trainer (SentenceTransformerTrainer) on
    all-MiniLM-L6-v2, the reference twinnet's trainer is compared with: same pairs, batch, length and loss.

    ``loss``: ``cosent`` (graded targets in [0, 1]) or ``online_contrastive`` (0/1 labels). The runtime is the
    trainer's own ``train_runtime`` (its data loading included, as twinnet's epoch seconds include its batching).
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from twinnet.encoders.text import resolve_model_path

    model = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = max_length
    column = "score" if loss == "cosent" else "label"
    data = Dataset.from_dict({"sentence1": [str(x) for x in left], "sentence2": [str(x) for x in right],
                              column: [float(t) if loss == "cosent" else int(t) for t in targets]})
    loss_fn = {"cosent": losses.CoSENTLoss, "online_contrastive": losses.OnlineContrastiveLoss}[loss](model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(RESULTS.parent / ".st-throughput"), per_device_train_batch_size=batch_size,
        num_train_epochs=1, max_steps=max_steps, learning_rate=learning_rate, warmup_steps=0.1, seed=42,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available())
    output = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss_fn).train()
    steps = output.global_step
    pairs = min(len(data), steps * batch_size)
    return pairs / output.metrics["train_runtime"]
