"""Typed access to a ``#[plexus::service]`` contract, by method name.

``MsgPackService(conn, "greet.Greeter")`` calls ``greet.Greeter/<method>``
with MessagePack arguments packed as the Rust client packs them
(:mod:`plexus.codec`) and decodes the replies::

    greeter = MsgPackService(conn, "greet.Greeter")
    await greeter.unary("hello", "ada")          # -> "hello, ada!"
    await greeter.oneway("wave", "ada")
    async for n in greeter.server_stream("countdown", 3): ...

Pass a :class:`~plexus.connection.Session` instead of the connection to call
inside a session.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional, Union

from . import codec
from .connection import BidiStream, ClientStream, Connection, Session
from .errors import DecodeError

Target = Union[Connection, Session]


class MsgPackService:
    """A MessagePack contract's methods, called on ``target``."""

    def __init__(self, target: Target, service: str) -> None:
        self.target = target
        self.service = service

    def op(self, method: str) -> str:
        """The operation id: ``package.Service/method``."""
        return f"{self.service}/{method}"

    def _decode(self, method: str, data: bytes) -> Any:
        try:
            return codec.unpack(data)
        except ValueError as e:
            conn = self.target if isinstance(self.target, Connection) else self.target.connection
            raise DecodeError(self.op(method), conn.peer, str(e)) from e

    async def unary(self, method: str, *args: Any, timeout: Optional[float] = -1.0,
                    metadata: Optional[list[tuple[str, bytes]]] = None) -> Any:
        """An acked call; returns the decoded reply, raises ``Rejected`` for a rejection."""
        reply = await self.target.call(self.op(method), codec.pack_args(args), timeout=timeout, metadata=metadata)
        return self._decode(method, reply)

    async def oneway(self, method: str, *args: Any,
                     metadata: Optional[list[tuple[str, bytes]]] = None) -> None:
        """A one-way call: sent, not acked."""
        await self.target.oneway(self.op(method), codec.pack_args(args), metadata=metadata)

    async def server_stream(self, method: str, *args: Any, timeout: Optional[float] = None,
                            metadata: Optional[list[tuple[str, bytes]]] = None) -> AsyncIterator[Any]:
        """A server-stream call: yields each decoded reply message."""
        stream = await self.target.server_stream(self.op(method), codec.pack_args(args), timeout=timeout, metadata=metadata)
        async with stream:
            async for message in stream:
                yield self._decode(method, message)

    async def client_stream(self, method: str, *, timeout: Optional[float] = None,
                            metadata: Optional[list[tuple[str, bytes]]] = None) -> "MsgPackClientStream":
        """A client-stream call: ``send`` values, then ``await reply()``."""
        call = await self.target.client_stream(self.op(method), timeout=timeout, metadata=metadata)
        return MsgPackClientStream(self, method, call)

    async def bidi(self, method: str, *, timeout: Optional[float] = None,
                   metadata: Optional[list[tuple[str, bytes]]] = None) -> "MsgPackBidiStream":
        """A bidirectional call: ``send`` values while iterating decoded replies."""
        call = await self.target.bidi(self.op(method), timeout=timeout, metadata=metadata)
        return MsgPackBidiStream(self, method, call)


class MsgPackClientStream:
    """Sends MessagePack values on a client-stream call."""

    def __init__(self, service: MsgPackService, method: str, call: ClientStream) -> None:
        self._service, self._method, self._call = service, method, call

    async def send(self, value: Any) -> None:
        await self._call.send(codec.pack(value))

    async def finish(self) -> None:
        await self._call.finish()

    async def reply(self, *, finish: bool = True) -> Any:
        return self._service._decode(self._method, await self._call.reply(finish=finish))

    def cancel(self) -> None:
        self._call.cancel()


class MsgPackBidiStream:
    """Sends and receives MessagePack values on a bidirectional call."""

    def __init__(self, service: MsgPackService, method: str, call: BidiStream) -> None:
        self._service, self._method, self._call = service, method, call

    async def send(self, value: Any) -> None:
        await self._call.send(codec.pack(value))

    async def finish(self) -> None:
        await self._call.finish()

    def cancel(self) -> None:
        self._call.cancel()

    def __aiter__(self) -> "MsgPackBidiStream":
        return self

    async def __anext__(self) -> Any:
        message = await self._call.__anext__()
        return self._service._decode(self._method, message)
