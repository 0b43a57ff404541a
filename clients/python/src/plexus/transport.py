"""Transports by URL: ``tcp://``, ``tls://``, ``unix://``, ``ws://`` and ``wss://``.

Each yields one ordered byte stream, which is all the protocol needs. This
module knows no frames. ``ws``/``wss`` carry the bytes in binary WebSocket
messages whose boundaries mean nothing (the ``plexus`` subprotocol);
``quic://`` has no pure-Python implementation and is refused with a remedy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Optional, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from .errors import TransportError

#: Bytes read from a stream socket at a time.
READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Url:
    """A parsed transport URL. ``host``/``port`` for socket schemes, ``path``
    for ``unix`` (the socket file) and ``ws``/``wss`` (the request path)."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.scheme in ("ws", "wss") and self.path != "/" else ""
        return f"{self.scheme}://{host}:{self.port}{path}"


SCHEMES = ("tcp", "tls", "unix", "ws", "wss")


def parse_url(text: str) -> Url:
    """Parses ``scheme://address`` as the Rust runtime does; raises ``ValueError`` with the reason."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"invalid transport URL {text!r}: missing `://`, e.g. tcp://127.0.0.1:4000")
    if scheme == "quic":
        raise ValueError(
            f"{text}: quic:// needs a QUIC stack this pure-Python client does not have; "
            "connect over tls:// or wss:// to the same server instead"
        )
    if scheme not in SCHEMES:
        raise ValueError(f"invalid transport URL {text!r}: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme == "unix":
        if not rest:
            raise ValueError(f"invalid transport URL {text!r}: the unix socket path is empty")
        return Url("unix", path=rest)
    path = "/"
    if scheme in ("ws", "wss") and "/" in rest:
        at = rest.index("/")
        rest, path = rest[:at], rest[at:]
    if rest.startswith("["):
        inside, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"invalid transport URL {text!r}: `[` without `]`")
        ipaddress.IPv6Address(inside)
        host, port_text = inside, after[1:] if after.startswith(":") else after
        if after and not after.startswith(":"):
            raise ValueError(f"invalid transport URL {text!r}: expected `:PORT` after `]`")
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ValueError(f"invalid transport URL {text!r}: the host is missing")
    if not port_text:
        defaults = {"ws": 80, "wss": 443}
        if scheme not in defaults:
            raise ValueError(f"invalid transport URL {text!r}: missing port")
        port = defaults[scheme]
    elif not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid transport URL {text!r}: port {port_text!r} is not a number from 0 to 65535")
    else:
        port = int(port_text)
    return Url(scheme, host.lower(), port, path)


class ByteStream(Protocol):
    """One connected, ordered, reliable byte stream."""

    async def read(self) -> bytes:
        """The next bytes; ``b""`` once the peer has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Writes ``data`` in order, waiting while the transport is full."""
        ...

    async def close(self) -> None:
        """Closes the stream (after what was written)."""
        ...


class SocketStream:
    """A TCP, TLS or Unix stream through asyncio."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        return await self._reader.read(READ_CHUNK)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
        except (OSError, RuntimeError):
            pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 5.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


class WebSocketStream:
    """The byte stream in binary WebSocket messages (``websockets``)."""

    def __init__(self, websocket: ClientConnection, url: str) -> None:
        self._socket = websocket
        self._url = url

    async def read(self) -> bytes:
        try:
            message = await self._socket.recv()
        except ConnectionClosed:
            return b""
        if isinstance(message, str):
            raise TransportError(self._url, "the peer sent a text WebSocket message; Plexus travels in binary messages only")
        return bytes(message)

    async def write(self, data: bytes) -> None:
        try:
            await self._socket.send(data)
        except ConnectionClosed as e:
            raise ConnectionResetError(f"{self._url}: the WebSocket closed") from e

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._socket.close(), 5.0)
        except (OSError, asyncio.TimeoutError):
            pass


def client_tls(ca_file: Optional[str] = None) -> ssl.SSLContext:
    """A TLS context that trusts ``ca_file`` (or the system's roots), as a dialer."""
    return ssl.create_default_context(cafile=ca_file)


async def open_stream(
    url: Url,
    *,
    tls: Optional[ssl.SSLContext],
    server_hostname: Optional[str],
    timeout: float,
    ws_max_message: int,
) -> ByteStream:
    """Connects to ``url``; raises :class:`TransportError` naming it on failure."""
    where = str(url)
    needs_tls = url.scheme in ("tls", "wss")
    context = tls if tls is not None else (client_tls() if needs_tls else None)
    try:
        if url.scheme == "unix":
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(url.path), timeout)
            return SocketStream(reader, writer)
        if url.scheme in ("tcp", "tls"):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    url.host,
                    url.port,
                    ssl=context if needs_tls else None,
                    server_hostname=(server_hostname or url.host) if needs_tls else None,
                ),
                timeout,
            )
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            return SocketStream(reader, writer)
        host = f"[{url.host}]" if ":" in url.host else url.host
        websocket = await connect(
            f"{url.scheme}://{host}:{url.port}{url.path}",
            subprotocols=[Subprotocol("plexus")],
            ssl=context if needs_tls else None,
            server_hostname=(server_hostname or url.host) if needs_tls else None,
            open_timeout=timeout,
            ping_interval=None,
            compression=None,
            max_size=ws_max_message,
        )
        return WebSocketStream(websocket, where)
    except asyncio.TimeoutError:
        raise TransportError(where, f"no connection within {timeout:g} s") from None
    except ssl.SSLError as e:
        raise TransportError(
            where, f"TLS handshake failed: {e} — check that the CA given trusts the server's certificate"
        ) from e
    except OSError as e:
        raise TransportError(where, f"connecting failed: {e}") from e
    except WebSocketException as e:
        raise TransportError(where, f"WebSocket upgrade failed: {e}") from e
