"""The ten-line greeter script of README.md (and of this package's README),
run as written against a real greeter, so the documents cannot drift from
the package: it must print what its comments say, and its one-way wave must
land."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import plexus
from conftest import REPO, Server, run

#: Where the script stands in each document, and the URL it dials.
DOCUMENTS = [REPO / "README.md", REPO / "clients" / "python" / "README.md"]
README_URL = "tcp://127.0.0.1:4000"


def script_in(document: Path) -> str:
    """The first ```python block after the `pip install ./clients/python` line."""
    text = document.read_text()
    at = text.index("pip install ./clients/python")
    block = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert block, f"{document}: no python block after `pip install ./clients/python`"
    return block.group(1)


def expected_output(script: str) -> list[str]:
    """What the script's print lines say they print, in their comments."""
    return [line.split("#", 1)[1].strip() for line in script.splitlines() if line.strip().startswith("print(")]


def test_both_readmes_show_the_same_ten_lines() -> None:
    scripts = [script_in(d) for d in DOCUMENTS]
    assert scripts[0] == scripts[1]
    assert len(scripts[0].rstrip("\n").splitlines()) <= 10
    assert README_URL in scripts[0]
    assert expected_output(scripts[0]) == ["hello, ada!", "[3, 2, 1]"]


def test_the_readme_script_calls_hello_wave_and_countdown(serve: Callable[..., Server]) -> None:
    server = serve("greeter", "tcp")
    script = script_in(DOCUMENTS[0])
    # The server listens on a free port rather than 4000; nothing else changes.
    done = subprocess.run(
        [sys.executable, "-c", script.replace(README_URL, server.url)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected_output(script)

    async def waves() -> int:
        # One-way calls are not acked: the greeter counts the wave when its
        # handler has run, which may be just after the script ended.
        async with await plexus.connect(server.url) as conn:
            greeter = plexus.MsgPackService(conn, "greet.Greeter")
            for _ in range(500):
                count: int = await greeter.unary("waves")
                if count:
                    return count
                await asyncio.sleep(0.01)
            return 0

    # The wave was sent before the script's connection closed.
    assert run(waves()) == 1
