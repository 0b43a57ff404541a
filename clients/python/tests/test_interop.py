"""The Python client against the Rust examples, as separate processes, over
every scheme the client speaks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import pytest

import plexus
from conftest import SCHEMES, Server, connect_kwargs, example, run


@pytest.mark.parametrize("scheme", SCHEMES)
def test_greeter_every_call_kind(serve: Callable[..., Server], scheme: str) -> None:
    server = serve("greeter", scheme)

    async def scenario() -> None:
        async with await plexus.connect(server.url, **connect_kwargs(server)) as conn:
            greeter = plexus.MsgPackService(conn, "greet.Greeter")
            assert await greeter.unary("hello", "ada") == "hello, ada!"
            with pytest.raises(plexus.Rejected) as rejected:
                await greeter.unary("hello", "")
            assert rejected.value.code == 400
            assert rejected.value.message == "a greeting needs a name"
            assert not rejected.value.system
            before = await greeter.unary("waves")
            await greeter.oneway("wave", "ada")
            assert [n async for n in greeter.server_stream("countdown", 3)] == [3, 2, 1]
            for _ in range(200):
                if await greeter.unary("waves") > before:
                    break
                await asyncio.sleep(0.01)
            assert await greeter.unary("waves") == before + 1

    run(scenario())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_echo_bytes_rejects_and_unknown_operations(serve: Callable[..., Server], scheme: str) -> None:
    server = serve("echo", scheme, "--quiet")

    async def scenario() -> None:
        async with await plexus.connect(server.url, **connect_kwargs(server)) as conn:
            assert conn.peer_data == b""
            assert await conn.call("demo.Echo/echo", b"hi") == b"hi"
            assert await conn.call("demo.Echo/shout", b"hi") == b"HI"
            with pytest.raises(plexus.Rejected) as rejected:
                await conn.call("demo.Echo/shout", b"")
            assert (rejected.value.code, rejected.value.message) == (400, "nothing to shout")
            with pytest.raises(plexus.NoSuchOperation) as missing:
                await conn.call("demo.Echo/missing", b"")
            assert missing.value.system and "demo.Echo/missing" in missing.value.message
            big = bytes(range(256)) * 4096  # 1 MiB, across many WebSocket messages
            assert await conn.call("demo.Echo/echo", big) == big
            with pytest.raises(plexus.MessageTooLarge):
                await conn.call("demo.Echo/echo", b"x" * (17 << 20))
            # Many calls in flight on one connection.
            bodies = [str(i).encode() for i in range(200)]
            replies = await asyncio.gather(*(conn.call("demo.Echo/echo", b) for b in bodies))
            assert replies == bodies

    run(scenario())


def test_a_wrong_ca_is_a_transport_error(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = serve("echo", "tls", "--quiet")
    other = serve("echo", "wss", "--quiet")

    async def scenario() -> None:
        # The system's roots do not know the development CA.
        with pytest.raises(plexus.TransportError) as failed:
            await plexus.connect(server.url)
        assert "TLS" in str(failed.value)
        with pytest.raises(plexus.TransportError):
            await plexus.connect(other.url)

    run(scenario())


def test_a_wrong_websocket_path_is_a_transport_error(serve: Callable[..., Server]) -> None:
    server = serve("echo", "ws", "--quiet")

    async def scenario() -> None:
        with pytest.raises(plexus.TransportError) as failed:
            await plexus.connect(server.url + "/elsewhere")
        assert "404" in str(failed.value)

    run(scenario())


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
def test_inventory_protobuf_every_call_kind(serve: Callable[..., Server], workdir: Path, scheme: str) -> None:
    import subprocess

    fds = workdir / "inventory.fds"
    subprocess.run([str(example("inventory")), "descriptor-set", str(fds)], check=True, timeout=60, capture_output=True)
    server = serve("inventory", scheme)

    async def scenario() -> None:
        async with await plexus.connect(server.url) as conn:
            inventory = plexus.ProtobufService(conn, fds.read_bytes(), "inventory.Inventory")
            apple = await inventory.unary("Lookup", inventory.request("Lookup", sku="apple"))
            assert (apple.sku, apple.name, apple.quantity) == ("apple", "APPLE", 3)  # type: ignore[attr-defined]
            with pytest.raises(plexus.Rejected) as missing:
                await inventory.unary("Lookup", inventory.request("Lookup", sku="kiwi"))
            assert missing.value.code == 404
            with pytest.raises(plexus.Rejected) as negative:
                await inventory.unary("Adjust", inventory.request("Adjust", sku="pear", delta=-5))
            assert negative.value.code == 409
            pear = await inventory.unary("Adjust", inventory.request("Adjust", sku="pear", delta=2))
            assert pear.quantity == 3  # type: ignore[attr-defined]

            before = (await inventory.unary("Touches")).count  # type: ignore[attr-defined]
            await inventory.oneway("Touch", inventory.request("Touch", sku="apple"))
            for _ in range(200):
                if (await inventory.unary("Touches")).count > before:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            assert (await inventory.unary("Touches")).count == before + 1  # type: ignore[attr-defined]

            items = [(i.sku, i.quantity) async for i in inventory.server_stream("List")]  # type: ignore[attr-defined]
            assert items == [("apple", 3), ("pear", 3)]

            restock = await inventory.client_stream("Restock")
            for delta in (1, 2, 3):
                await restock.send(inventory.request("Restock", sku="fig", delta=delta))
            summary = await restock.reply()
            assert (summary.count, summary.total) == (3, 6)  # type: ignore[attr-defined]

            sync = await inventory.bidi("Sync")
            seen = []
            for delta in (4, -1):
                await sync.send(inventory.request("Sync", sku="fig", delta=delta))
                seen.append((await sync.__anext__()).quantity)  # type: ignore[attr-defined]
            await sync.finish()
            assert [m async for m in sync] == []
            assert seen == [4, 3]

            with pytest.raises(TypeError):
                await inventory.unary("Lookup", inventory.request("Adjust", sku="x"))

    run(scenario())


@pytest.mark.parametrize("scheme", ["tcp", "wss"])
def test_sessions_with_data_streams_and_server_push(serve: Callable[..., Server], scheme: str) -> None:
    server = serve("sessions", scheme)

    async def scenario() -> None:
        notices: asyncio.Queue[str] = asyncio.Queue()

        async def notice(body: bytes, ctx: plexus.CallContext) -> None:
            await notices.put(plexus.unpack(body))

        handlers = plexus.Handlers(oneway={"depot.Notices/notice": notice})
        async with await plexus.connect(server.url, handlers=handlers, **connect_kwargs(server)) as conn:
            with pytest.raises(plexus.Rejected) as refused:
                await conn.open_session("team-b", b"token:guess")
            assert (refused.value.code, refused.value.message) == (403, "unknown team token")

            session = await conn.open_session("team-a", b"token:team-a", timeout=5)
            assert session.data == b"welcome, team-a"
            depot = plexus.MsgPackService(session, "depot.Depot")
            data = bytes(i % 251 for i in range(50_000))
            upload = await depot.client_stream("upload")
            await upload.send(list(b"report.bin"))  # Vec<u8>: an array of integers
            for at in range(0, len(data), 8192):
                await upload.send(list(data[at : at + 8192]))
            receipt = await upload.reply()
            assert receipt == {"name": "report.bin", "bytes": len(data), "chunks": 7}
            assert await asyncio.wait_for(notices.get(), 10) == "stored report.bin for session team-a"

            back = bytearray()
            async for part in depot.server_stream("download", "report.bin", 4096):
                back += bytes(part)
            assert back == data

            await session.close("done")
            with pytest.raises(plexus.SessionClosed):
                await depot.unary("download", "report.bin", 1)
            # Outside a session the depot's calls still run.
            with pytest.raises(plexus.Rejected) as missing:
                await plexus.MsgPackService(conn, "depot.Depot").unary("download", "nothing", 1)
            assert missing.value.code == 404

    run(scenario())


def test_deadlines_and_cancellation_against_a_real_server(serve: Callable[..., Server]) -> None:
    server = serve("sessions", "tcp")

    async def scenario() -> None:
        async with await plexus.connect(server.url) as conn:
            depot = plexus.MsgPackService(conn, "depot.Depot")
            # An upload that never finishes holds its handler: the timeout
            # (sent as the call's deadline too) fails it in time.
            upload = await depot.client_stream("upload", timeout=0.3)
            await upload.send(list(b"slow.bin"))
            started = time.monotonic()
            with pytest.raises((plexus.Timeout, plexus.DeadlineExceeded)):
                await upload.reply(finish=False)
            assert time.monotonic() - started < 5

            # Cancelling the awaiting task cancels the call ...
            stuck = await depot.client_stream("upload")
            await stuck.send(list(b"stuck.bin"))
            waiter = asyncio.ensure_future(stuck.reply(finish=False))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            with pytest.raises(plexus.Cancelled):
                await stuck.reply(finish=False)
            # ... and so does cancelling the stream itself.
            other = await depot.client_stream("upload")
            await other.send(list(b"other.bin"))
            other.cancel()
            with pytest.raises(plexus.Cancelled):
                await other.reply()
            # The connection goes on.
            with pytest.raises(plexus.Rejected) as missing:
                await depot.unary("download", "nothing", 1)
            assert missing.value.code == 404

    run(scenario())
