"""HTTP load test of `twinnet serve` on 127.0.0.1 only: bounded concurrent clients for a bounded time.

Starts the service as a real uvicorn process, runs ``--clients`` concurrent asyncio/aiohttp clients posting
one Abt-Buy test pair per request to ``/v1/verify`` for ``--seconds``, and reports throughput, p50/p99 latency
and errors. Then the same load against the service with micro-batching off (``--max-batch 1``) for the
throughput ratio. Each backend in ``--backends`` (torch, torch-bf16, onnx-int8 by default) gets both runs.

    python benchmarks/load.py --model models/abt-buy      # 3 backends x 2 runs x 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RESULTS, write_results  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this benchmark never sends traffic anywhere else
KEY = "load-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, max_batch: int, threads: int, backend: str) -> subprocess.Popen:
    env = {**os.environ, "TWINNET_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "twinnet", "serve", model, "--host", HOST, "--port", str(port),
                             "--max-batch", str(max_batch), "--threads", str(threads), "--backend", backend],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/v1/health", timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


async def load(port: int, pairs: list[tuple[str, str]], clients: int, seconds: float) -> dict:
    """``clients`` concurrent keep-alive connections, each posting one pair per request until time is up.

    aiohttp rather than httpx: the load generator shares the 2 cores with the server, and aiohttp's client costs
    a fraction of httpx's CPU per request, so less of the measurement is the generator itself."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(f"http://{HOST}:{port}", connector=connector, timeout=timeout,
                                     headers={"X-API-Key": KEY}) as session:
        async def worker(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.monotonic() < stop:
                left, right = pairs[rng.randrange(len(pairs))]
                started = time.perf_counter()
                try:
                    async with session.post("/v1/verify", json={"pairs": [{"left": left, "right": right}]}) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 1), "p50_ms": round(pct(0.50), 1),
            "p99_ms": round(pct(0.99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/abt-buy")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--baseline-seconds", type=float, default=120, help="duration of the --max-batch 1 run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="torch,torch-bf16,onnx-int8",
                        help="comma-separated `twinnet serve --backend` values, each measured batched and batch 1")
    args = parser.parse_args()

    from twinnet import SiameseModel, datasets
    from twinnet.model import bf16_cpu_supported

    _, _, test = datasets.load_pairs("abt-buy")
    serializer = SiameseModel.load(args.model).serializer
    pairs = list(zip(serializer.serialize_many(test.left), serializer.serialize_many(test.right)))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "torch-bf16" in backends and not bf16_cpu_supported():
        print("skipping torch-bf16: this CPU has no native bfloat16", flush=True)
        backends.remove("torch-bf16")
    results, speedups = [], {}
    for backend in backends:
        rates = {}
        for max_batch, seconds in ((128, args.seconds), (1, args.baseline_seconds)):
            port = free_port()
            server = start_server(args.model, port, max_batch, args.threads, backend)
            try:
                measured = asyncio.run(load(port, pairs, args.clients, seconds))
            finally:
                server.terminate()
                server.wait(timeout=60)
            method = "twinnet-serve" if max_batch > 1 else "twinnet-serve-batch1"
            for metric in ("requests_per_s", "p99_ms", "errors"):
                results.append({"dataset": "Abt-Buy test pairs", "method": method, "metric": metric,
                                "value": measured[metric], **measured, "clients": args.clients,
                                "max_batch": max_batch, "backend": backend, "threads": args.threads})
            rates[max_batch] = measured["requests_per_s"]
            print(backend, method, measured, flush=True)
        speedups[backend] = round(rates[128] / rates[1], 2)
        results.append({"dataset": "Abt-Buy test pairs", "method": "twinnet-serve", "metric": "microbatch_speedup",
                        "value": speedups[backend], "backend": backend})
    command = (f"python benchmarks/load.py --model {args.model} --clients {args.clients} --seconds {args.seconds} "
               f"--backends {','.join(backends)}")
    path = write_results("load", results, command)
    (RESULTS / "load.md").write_text(
        "| backend | run | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n" + "".join(
            f"| {r['backend']} | {r['method']} (max batch {r['max_batch']}, {r['clients']} clients, {r['wall_s']} s) | "
            f"{r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |\n"
            for r in results if r["metric"] == "requests_per_s")
        + "\nmicro-batching speed-up: " + ", ".join(f"{b}: {v:.2f}×" for b, v in speedups.items()) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
