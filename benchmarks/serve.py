"""Benchmark: a bounded load test of the web service on loopback.

    .venv/bin/python benchmarks/serve.py [--requests 200] [--clients 8] [--n 1] [--device cpu]

Starts `python -m face_generation.serve` (port 0, access log off, --device) on 127.0.0.1 with the
smallest model (fewest generator parameters) among <--models>/<name>/model.pt, or
--checkpoint PATH, sends --warmup untimed requests, then --requests POST /generate requests
(n images each, PNG grid, seeds 0, 1, 2, ...) from --clients concurrent clients, each with its
own keep-alive connection. Meanwhile one more client asks GET /health every --health-every-s
seconds, to show that inference does not hold it up.
Records every request's latency (client side: send to full response), the errors (any
answer but 200, any exception), p50/p90/p99/max latency, requests/s and images/s over the
whole run. Prints a table and writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from face_generation.runtime.generator import load_generator  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "serve.json"


def smallest_model(models: Path) -> Path:
    """The checkpoint whose generator has the fewest parameters."""
    checkpoints = sorted(models.glob("*/model.pt"))
    if not checkpoints:
        raise SystemExit(f"no {models}/<name>/model.pt: train one first (make run)")

    def size(path: Path) -> int:
        return sum(p.numel() for p in load_generator(path).network.parameters())

    return min(checkpoints, key=size)


def start_service(checkpoint: Path, name: str, device: str) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "face_generation.serve",
        "serve.port=0",
        "serve.log_level=warning",
        f"serve.device={device}",
        f"+serve.models.{name}={checkpoint.resolve()}",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # the service prints its URL once it listens
        if line.startswith("[serve]") and " at http://" in line:
            return process, line.split(" at ")[1].split()[0]
    raise SystemExit(f"the service did not start (exit {process.wait()})")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint instead")
    parser.add_argument("--health-every-s", type=float, default=0.05)
    parser.add_argument("--device", default="cpu", help="serve.device: cpu | cuda | auto")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews every number
    checkpoint = args.checkpoint or smallest_model(args.models)
    name = checkpoint.parent.name
    parameters = sum(p.numel() for p in load_generator(checkpoint).network.parameters())
    process, url = start_service(checkpoint, name, args.device)
    try:
        with httpx.Client(timeout=120) as warm:
            for seed in range(args.warmup):
                warm.post(url + "generate", json={"model": name, "n": args.n, "seed": seed})

        work: queue.Queue[int] = queue.Queue()
        for seed in range(args.requests):
            work.put(seed)
        latencies: list[float] = []
        errors: list[str] = []
        health: list[float] = []
        done = threading.Event()
        record = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while True:
                    try:
                        seed = work.get_nowait()
                    except queue.Empty:
                        return
                    start = time.perf_counter()
                    try:
                        response = http.post(
                            url + "generate", json={"model": name, "n": args.n, "seed": seed}
                        )
                        failure = (
                            None
                            if response.status_code == 200
                            else f"{response.status_code} {response.text[:80]}"
                        )
                    except httpx.HTTPError as error:
                        failure = f"{type(error).__name__}: {error}"
                    with record:
                        latencies.append(time.perf_counter() - start)
                        if failure:
                            errors.append(failure)

        def health_client() -> None:
            with httpx.Client(timeout=120) as http:
                while not done.wait(args.health_every_s):
                    start = time.perf_counter()
                    http.get(url + "health").raise_for_status()
                    health.append(time.perf_counter() - start)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        prober = threading.Thread(target=health_client)
        prober.start()
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        done.set()
        prober.join()
    finally:
        process.terminate()
        process.wait(timeout=60)

    ms = [1000 * value for value in latencies]
    health_ms = [1000 * value for value in health]
    result: dict[str, Any] = {
        "model": name,
        "generator_parameters": parameters,
        "requests": args.requests,
        "clients": args.clients,
        "images_per_request": args.n,
        "errors": len(errors),
        "error_examples": errors[:5],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "images_per_s": len(latencies) * args.n / wall,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": max(ms),
            "mean": statistics.fmean(ms),
        },
        "health_ms": {
            "probes": len(health_ms),
            "p50": percentile(health_ms, 50),
            "p99": percentile(health_ms, 99),
            "max": max(health_ms, default=float("nan")),
        },
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "machine": machine(httpx=httpx.__version__),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    latency = result["latency_ms"]
    print(
        f"{name} ({parameters:,} parameters), {args.requests} requests of n={args.n} from {args.clients} clients"
    )
    print(
        "| errors | req/s | images/s | p50 ms | p90 ms | p99 ms | max ms | /health p50 ms | /health p99 ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(errors)} | {result['requests_per_s']:.1f} | {result['images_per_s']:.1f} | "
        f"{latency['p50']:.1f} | {latency['p90']:.1f} | {latency['p99']:.1f} | {latency['max']:.1f} | "
        f"{result['health_ms']['p50']:.1f} | {result['health_ms']['p99']:.1f} |"
    )
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
