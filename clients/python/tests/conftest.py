"""Fixtures: the Rust example servers as real processes, and bounded asyncio runs.

The examples are built with cargo on first use (or taken from
``PLEXUS_EXAMPLES_DIR``); each server listens on port 0 (or a fresh unix
socket) and the fixture reads the URL it prints. Every server process is
ended when its test ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[3]
#: Bound on every test's asyncio part.
STEP = 30.0
#: Schemes the Python client speaks.
SCHEMES = ("tcp", "unix", "tls", "ws", "wss")

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = STEP) -> T:
    """Runs ``coro`` on a fresh event loop, failing the test after ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def _examples_dir() -> Path:
    given = os.environ.get("PLEXUS_EXAMPLES_DIR")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug"


_BUILT = False


def example(name: str) -> Path:
    """The path of example binary ``name``, building the examples once if needed."""
    global _BUILT
    path = _examples_dir() / name
    if not os.environ.get("PLEXUS_EXAMPLES_DIR") and not _BUILT:
        subprocess.run(
            ["cargo", "build", "-q", "-p", "plexus-examples", "--bins"], cwd=REPO, check=True, timeout=1800
        )
        _BUILT = True
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build -p plexus-examples --bins`")
    return path


class Server:
    """A running example server: its URL and its development CA."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, ca_file: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.ca_file = ca_file
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(name: str, scheme: str, workdir: Path, extra: Optional[list[str]] = None) -> Server:
    """Starts example ``name`` with ``serve`` on ``scheme`` and waits for its URL."""
    bind = f"unix://{workdir / (name + '.sock')}" if scheme == "unix" else f"{scheme}://127.0.0.1:0"
    log = workdir / f"{name}-{scheme}.log"
    tls_dir = workdir / "tls"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(example(name)), "serve", bind, "--tls-dir", str(tls_dir), *(extra or [])],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    pattern = re.compile(rf"({scheme}://\S+)")
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return Server(process, match.group(1), str(tls_dir / "ca.pem"), log)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"{name} serve {bind} printed no URL: {log.read_text(errors='replace')}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="plexus-py-") as path:
        yield Path(path)


@pytest.fixture
def serve(workdir: Path) -> Iterator[Callable[..., Server]]:
    """``serve("greeter", "ws")`` starts a server for this test."""
    started: list[Server] = []

    def start(name: str, scheme: str = "tcp", *extra: str) -> Server:
        server = start_server(name, scheme, workdir, list(extra))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def connect_kwargs(server: Server) -> dict[str, Any]:
    """What ``plexus.connect`` needs to reach ``server`` (its CA for tls and wss)."""
    return {"ca_file": server.ca_file} if server.url.startswith(("tls://", "wss://")) else {}
