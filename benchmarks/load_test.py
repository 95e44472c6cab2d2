"""Load test of `draftwise serve` on loopback: many concurrent clients for a bounded time.

Starts the server (the embedded pair by default) as a subprocess on 127.0.0.1, runs ``--clients``
concurrent clients for ``--seconds`` seconds, each sending short chat requests one after the other
(honouring ``Retry-After`` on 429), then stops the server and reports requests served, errors by kind,
latency percentiles of served requests, and whether every accepted request got a complete answer.

    .venv/bin/python benchmarks/load_test.py --clients 32 --seconds 150 --out docs/results/load.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

try:
    import httpx2 as httpx  # the name httpx is published under in this environment
except ImportError:  # pragma: no cover
    import httpx

QUESTIONS = [
    "Name three prime numbers.",
    "What is the capital of Italy?",
    "Write a haiku about tea.",
    "What does HTTP stand for?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(base: str, model: str, deadline: float, results: list, max_tokens: int, method: str) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        i = 0
        while time.monotonic() < deadline:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": max_tokens,
                "draftwise": {"method": method},
            }
            i += 1
            start = time.monotonic()
            try:
                response = await http.post(f"{base}/v1/chat/completions", json=body)
            except Exception as error:  # noqa: BLE001 - every failure is a result here
                results.append({"kind": type(error).__name__, "seconds": time.monotonic() - start})
                await asyncio.sleep(1)
                continue
            seconds = time.monotonic() - start
            record = {"kind": str(response.status_code), "seconds": seconds}
            if response.status_code == 200:
                choice = response.json()["choices"][0]
                record["complete"] = bool(choice["message"]["content"]) and choice["finish_reason"] in (
                    "stop",
                    "length",
                )
            results.append(record)
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--method", default="speckv")
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "draftwise.cli",
        "serve",
        "--port",
        str(port),
        "--max-queue",
        str(args.max_queue),
        "--max-batch",
        str(args.max_batch),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                health = httpx.get(base + "/health", timeout=2).json()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")
        model = health["model"]
        results: list[dict] = []
        deadline = time.monotonic() + args.seconds

        async def run() -> None:
            await asyncio.gather(
                *(
                    client(base, model, deadline, results, args.max_tokens, args.method)
                    for _ in range(args.clients)
                )
            )

        started = time.monotonic()
        asyncio.run(run())
        wall = time.monotonic() - started
        still_up = httpx.get(base + "/health", timeout=5).json()["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)

    kinds = Counter(r["kind"] for r in results)
    served = [r for r in results if r["kind"] == "200"]
    latencies = sorted(r["seconds"] for r in served)

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")
        )

    report = {
        "clients": args.clients,
        "max_batch": args.max_batch,
        "seconds": round(wall, 1),
        "requests": len(results),
        "served": len(served),
        "by_status": dict(kinds),
        "complete_answers": sum(r.get("complete", False) for r in served),
        "latency_s": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": latencies[-1] if latencies else None,
        },
        "mean_latency_s": statistics.mean(latencies) if latencies else None,
        "server_healthy_after": still_up,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(
            "# Load test: `draftwise serve` on loopback\n\n"
            f"- Command: `python {' '.join(sys.argv)}`\n"
            f"- Server: `draftwise serve` (embedded pair, method {args.method}, continuous batching of up "
            f"to {args.max_batch} rows, queue {args.max_queue}); {args.clients} clients, short chat prompts, "
            f"max_tokens {args.max_tokens}; "
            "clients wait `Retry-After` after a 429.\n- Machine: this project's 2-core CPU machine.\n\n"
            f"```json\n{json.dumps(report, indent=2)}\n```\n"
        )


if __name__ == "__main__":
    main()
