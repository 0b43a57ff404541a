"""Who may connect, and what a server at its limits says, against the Rust
examples as processes: session keys (PROTOCOL.md §3.6) both ways, every
refusal a keyed server gives, the downgrade a keyed client refuses, and
Overloaded from a real limit."""

from __future__ import annotations

import secrets
from typing import Callable

import pytest

import plexus
from plexus import wire
from conftest import Server, connect_kwargs, run

#: The key the servers here are started with, and another one.
KEY = secrets.token_hex(32)
OTHER = secrets.token_hex(32)


@pytest.mark.parametrize("scheme", ["tcp", "ws", "tls"])
def test_the_servers_key_is_welcomed(serve: Callable[..., Server], scheme: str) -> None:
    server = serve("echo", scheme, "--quiet", "--key", KEY)

    async def scenario() -> None:
        async with await plexus.connect(server.url, key=KEY, **connect_kwargs(server)) as conn:
            assert await conn.call("demo.Echo/shout", b"keyed") == b"KEYED"
        # The same key as raw bytes is the same key.
        async with await plexus.connect(server.url, key=bytes.fromhex(KEY), **connect_kwargs(server)) as conn:
            assert await conn.call("demo.Echo/echo", b"raw") == b"raw"

    run(scenario())


def test_another_key_is_refused_as_key_mismatch(serve: Callable[..., Server]) -> None:
    server = serve("echo", "tcp", "--quiet", "--key", KEY)

    async def scenario() -> None:
        with pytest.raises(plexus.KeyMismatch) as refused:
            await plexus.connect(server.url, key=OTHER)
        assert refused.value.code == wire.RefusalCode.KEY_MISMATCH
        assert "not the server's" in str(refused.value)

    run(scenario())


def test_no_key_against_a_keyed_server_is_key_required(serve: Callable[..., Server]) -> None:
    server = serve("greeter", "ws", "--key", KEY)

    async def scenario() -> None:
        with pytest.raises(plexus.KeyRequired) as refused:
            await plexus.connect(server.url)
        assert refused.value.code == wire.RefusalCode.KEY_REQUIRED
        assert "key=" in str(refused.value)
        # The refusal harmed nothing: the keyed greeter still serves.
        async with await plexus.connect(server.url, key=KEY) as conn:
            greeter = plexus.MsgPackService(conn, "greet.Greeter")
            assert await greeter.unary("hello", "ada") == "hello, ada!"

    run(scenario())


def test_a_keyed_client_refuses_a_keyless_server(serve: Callable[..., Server]) -> None:
    server = serve("echo", "tcp", "--quiet")

    async def scenario() -> None:
        # The server welcomes (it skips the key extension), this side does not
        # trust a listener that proved no key: no downgrade.
        with pytest.raises(plexus.Untrusted, match="proved no session key"):
            await plexus.connect(server.url, key=KEY)
        async with await plexus.connect(server.url) as conn:
            assert await conn.call("demo.Echo/echo", b"still") == b"still"

    run(scenario())


def test_a_session_beyond_the_servers_limit_is_overloaded(serve: Callable[..., Server]) -> None:
    # The runtime serves at most 1024 sessions a peer opened on one
    # connection (PROTOCOL.md §12, §13.1); the next open is refused with
    # ResourceExhausted and the connection stays usable.
    server = serve("sessions", "tcp")
    limit = 1024

    async def scenario() -> None:
        async with await plexus.connect(server.url) as conn:
            for i in range(limit):
                await conn.open_session(f"s{i}", f"token:s{i}".encode())
            with pytest.raises(plexus.Overloaded) as overloaded:
                await conn.open_session("one-more", b"token:one-more")
            assert overloaded.value.system and overloaded.value.code == wire.SystemCode.RESOURCE_EXHAUSTED
            assert f"{limit} sessions" in overloaded.value.message
            depot = plexus.MsgPackService(conn, "depot.Depot")
            with pytest.raises(plexus.Rejected) as missing:
                await depot.unary("download", "nothing", 1)
            assert missing.value.code == 404

    run(scenario(), timeout=120)
