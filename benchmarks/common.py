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
