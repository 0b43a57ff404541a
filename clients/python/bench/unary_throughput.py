"""Unary throughput and latency of the Python client against the echo example.

    python bench/unary_throughput.py tcp://127.0.0.1:4000            # a running `echo serve`
    python bench/unary_throughput.py --start target/release/echo     # starts one itself

Measures, on one connection: calls per second with 64 calls in flight
(``--in-flight N`` for another number), then calls per second and p50/p99
latency with one in flight, for 64-byte bodies (the Rust benchmark's
payload). Every run is bounded in calls and in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import plexus

BODY = b"x" * 64
OP = "demo.Echo/echo"


async def throughput(conn: plexus.Connection, in_flight: int, calls: int, seconds: float) -> tuple[int, float]:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(share: int) -> None:
        nonlocal done
        for _ in range(share):
            if time.perf_counter() > stop:
                return
            assert await conn.call(OP, BODY) == BODY
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    return done, time.perf_counter() - started


async def latency(conn: plexus.Connection, calls: int, seconds: float) -> list[float]:
    samples = []
    stop = time.perf_counter() + seconds
    for _ in range(calls):
        if time.perf_counter() > stop:
            break
        started = time.perf_counter()
        await conn.call(OP, BODY)
        samples.append(time.perf_counter() - started)
    return samples


async def run(url: str, calls: int, seconds: float, in_flight: int) -> None:
    async with await plexus.connect(url) as conn:
        await throughput(conn, in_flight, min(calls, 2000), 2.0)  # warm up
        done, took = await throughput(conn, in_flight, calls, seconds)
        print(f"unary echo 64 B, {in_flight} in flight: {done} calls in {took:.2f} s = {done / took:,.0f} calls/s")
        samples = sorted(await latency(conn, min(calls, 20_000), seconds))
        p50 = statistics.median(samples) * 1e6
        p99 = samples[int(len(samples) * 0.99) - 1] * 1e6
        rate = len(samples) / sum(samples)
        print(
            f"unary echo 64 B, 1 in flight: {rate:,.0f} calls/s, p50 {p50:.0f} µs, p99 {p99:.0f} µs"
            f" over {len(samples)} calls"
        )


def start_echo(binary: str, scheme: str) -> tuple[subprocess.Popen[bytes], str]:
    log = Path(tempfile.mkdtemp(prefix="plexus-bench-")) / "echo.log"
    bind = f"unix://{log.parent / 'echo.sock'}" if scheme == "unix" else f"{scheme}://127.0.0.1:0"
    out = open(log, "wb")
    process = subprocess.Popen([binary, "serve", bind, "--quiet"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(rf"({scheme}://\S+)", log.read_text())
        if match:
            return process, match.group(1)
        time.sleep(0.02)
    process.kill()
    sys.exit(f"{binary} printed no URL: {log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="a running echo server")
    parser.add_argument("--start", metavar="ECHO", help="start this echo binary instead")
    parser.add_argument("--scheme", default="tcp", choices=["tcp", "unix", "ws"], help="with --start")
    parser.add_argument("--calls", type=int, default=200_000, help="at most this many calls per phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long per phase")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight in the throughput phase")
    args = parser.parse_args()
    process = None
    url = args.url
    if args.start:
        process, url = start_echo(args.start, args.scheme)
    if not url:
        parser.error("give a URL or --start")
    try:
        asyncio.run(run(url, args.calls, args.seconds, args.in_flight))
    finally:
        if process is not None:
            process.terminate()
            process.wait(5)


if __name__ == "__main__":
    main()
