"""Benchmark: /health latency while idle sockets and a slow-body client sit on the web service.

    .venv/bin/python benchmarks/serve_idle.py [--idle 200] [--probes 200] [--device cpu]

Starts `python -m face_generation.serve` (port 0) on 127.0.0.1 with the smallest model, as
benchmarks/serve.py does, and asks GET /health --probes times in three phases: alone; with
--idle sockets that connect and send nothing plus one client that sends a POST /generate head
and then its body one byte every --drip-s seconds; and once those are gone. Each phase also
sends one POST /generate, which must answer 200. Prints a table (p50/p99/max latency and
errors per phase) and writes benchmarks/results/serve_idle.json. Issue 19's aim: /health under
50 ms on an idle machine with 200 idle sockets and a slow-body client.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from benchmarks.serve import percentile, smallest_model, start_service  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "serve_idle.json"


def probe(url: str, name: str, probes: int) -> dict[str, Any]:
    """/health `probes` times on one keep-alive connection, then one /generate.

    http.client with TCP_NODELAY: httpx sends a request in two writes, and the second waits
    for the server's delayed ACK (a steady 40 ms that would measure the client, not us)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    latencies, errors = [], 0
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.connect()
    assert connection.sock is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(probes):
        start = time.perf_counter()
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        latencies.append(1000 * (time.perf_counter() - start))
        errors += not ok
    connection.close()
    with httpx.Client(base_url=url, timeout=30) as client:
        generated = client.post("/generate", json={"model": name, "n": 1, "seed": 0})
    return {
        "probes": probes,
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "generate_status": generated.status_code,
    }


def drip(sock: socket.socket, stop: threading.Event, every_s: float) -> None:
    """A slow-body client: a head promising 10,000 bytes, then one byte at a time."""
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000\r\n\r\n"
    )
    while not stop.wait(every_s):
        try:
            sock.sendall(b" ")
        except OSError:  # the service gave up on it (serve.body_timeout_s)
            return


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, default=200, help="idle sockets")
    parser.add_argument("--probes", type=int, default=200, help="/health requests per phase")
    parser.add_argument("--drip-s", type=float, default=0.5, help="seconds between body bytes")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint instead")
    parser.add_argument("--device", default="cpu", help="serve.device: cpu | cuda | auto")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    checkpoint = args.checkpoint or smallest_model(args.models)
    name = checkpoint.parent.name
    process, url = start_service(checkpoint, name, args.device)
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    phases: dict[str, Any] = {}
    try:
        phases["alone"] = probe(url, name, args.probes)
        stop = threading.Event()
        with ExitStack() as sockets:
            for _ in range(args.idle):
                sockets.enter_context(socket.create_connection((host, int(port))))
            slow = sockets.enter_context(socket.create_connection((host, int(port))))
            dripper = threading.Thread(target=drip, args=(slow, stop, args.drip_s))
            dripper.start()
            try:
                phases["idle sockets + slow body"] = probe(url, name, args.probes)
            finally:
                stop.set()
                dripper.join()
        phases["after"] = probe(url, name, args.probes)
    finally:
        process.terminate()
        process.wait(timeout=60)

    result = {
        "model": name,
        "idle_sockets": args.idle,
        "drip_s": args.drip_s,
        "phases": phases,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "machine": machine(httpx=httpx.__version__),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"{name}: GET /health, {args.probes} per phase; {args.idle} idle sockets + 1 slow body")
    print("| phase | errors | p50 ms | p99 ms | max ms | /generate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for phase, numbers in phases.items():
        print(
            f"| {phase} | {numbers['errors']} | {numbers['p50_ms']:.2f} | "
            f"{numbers['p99_ms']:.2f} | {numbers['max_ms']:.2f} | {numbers['generate_status']} |"
        )
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
