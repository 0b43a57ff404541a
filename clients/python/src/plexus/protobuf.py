"""Typed access to a ``.proto`` contract: protobuf messages, by method name.

The message classes are built at run time from the contract's
``FileDescriptorSet`` (no ``protoc``, no generated code): a Rust service
carries it in its descriptor (``Client::DESCRIPTOR.file_descriptor_set``; the
inventory example writes it with ``inventory descriptor-set FILE``), and
``protoc --descriptor_set_out --include_imports`` makes the same bytes::

    inventory = ProtobufService(conn, open("inventory.fds", "rb").read(), "inventory.Inventory")
    item = await inventory.unary("Lookup", inventory.request("Lookup", sku="apple"))
    async for item in inventory.server_stream("List"): ...
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional, Union

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from .connection import BidiStream, ClientStream, Connection, Session
from .errors import DecodeError

Target = Union[Connection, Session]


def load_pool(descriptor_set: Union[bytes, descriptor_pb2.FileDescriptorSet]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding every file of ``descriptor_set``, imports first."""
    if isinstance(descriptor_set, (bytes, bytearray, memoryview)):
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(bytes(descriptor_set))
    else:
        fds = descriptor_set
    pool = descriptor_pool.DescriptorPool()
    pending = list(fds.file)
    added: set[str] = set()
    while pending:
        ready = [f for f in pending if all(d in added for d in f.dependency)]
        if not ready:
            missing = sorted({d for f in pending for d in f.dependency if d not in added})
            raise ValueError(f"the descriptor set lacks imported files: {', '.join(missing)}")
        for f in ready:
            pool.Add(f)
            added.add(f.name)
            pending.remove(f)
    return pool


class ProtobufService:
    """A ``.proto`` service's methods, called on ``target`` with protobuf messages."""

    def __init__(self, target: Target, descriptor_set: Union[bytes, descriptor_pb2.FileDescriptorSet], service: str) -> None:
        self.target = target
        self.pool = load_pool(descriptor_set)
        try:
            self.descriptor = self.pool.FindServiceByName(service)
        except KeyError:
            raise ValueError(f"the descriptor set has no service {service!r}") from None
        self.service = service

    def method(self, name: str) -> MethodDescriptor:
        """The schema's method ``name`` (as written in the .proto, e.g. ``Lookup``)."""
        method = self.descriptor.methods_by_name.get(name)
        if method is None:
            known = ", ".join(self.descriptor.methods_by_name)
            raise ValueError(f"{self.service} has no method {name!r}; it has {known}")
        return method

    def message(self, full_name: str) -> type[Message]:
        """The class of message ``full_name``, e.g. ``inventory.ItemId``."""
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def request(self, method: str, **fields: Any) -> Message:
        """A request message for ``method`` with ``fields`` set."""
        return self.message(self.method(method).input_type.full_name)(**fields)

    def op(self, method: str) -> str:
        """The operation id, ``package.Service/Method``."""
        return f"{self.service}/{self.method(method).name}"

    def _encode(self, method: str, message: Optional[Message], side: str = "input") -> bytes:
        descriptor = self.method(method)
        expected = descriptor.input_type if side == "input" else descriptor.output_type
        if message is None:
            message = self.message(expected.full_name)()
        if message.DESCRIPTOR.full_name != expected.full_name:
            raise TypeError(f"{self.op(method)} takes {expected.full_name}, not {message.DESCRIPTOR.full_name}")
        return message.SerializeToString()

    def _decode(self, method: str, data: bytes) -> Message:
        cls = self.message(self.method(method).output_type.full_name)
        reply = cls()
        try:
            reply.ParseFromString(data)
        except ProtobufDecodeError as e:
            conn = self.target if isinstance(self.target, Connection) else self.target.connection
            raise DecodeError(self.op(method), conn.peer, f"not a {cls.DESCRIPTOR.full_name}: {e}") from e
        return reply

    async def unary(self, method: str, request: Optional[Message] = None, *, timeout: Optional[float] = -1.0,
                    metadata: Optional[list[tuple[str, bytes]]] = None) -> Message:
        """An acked call; ``request`` defaults to an empty input message (e.g. ``Empty``)."""
        reply = await self.target.call(self.op(method), self._encode(method, request), timeout=timeout, metadata=metadata)
        return self._decode(method, reply)

    async def oneway(self, method: str, request: Optional[Message] = None, *,
                     metadata: Optional[list[tuple[str, bytes]]] = None) -> None:
        """A one-way call (a ``(plexus.oneway)`` method): sent, not acked."""
        await self.target.oneway(self.op(method), self._encode(method, request), metadata=metadata)

    async def server_stream(self, method: str, request: Optional[Message] = None, *, timeout: Optional[float] = None,
                            metadata: Optional[list[tuple[str, bytes]]] = None) -> AsyncIterator[Message]:
        """A server-stream call: yields each reply message."""
        stream = await self.target.server_stream(self.op(method), self._encode(method, request), timeout=timeout, metadata=metadata)
        async with stream:
            async for data in stream:
                yield self._decode(method, data)

    async def client_stream(self, method: str, *, timeout: Optional[float] = None,
                            metadata: Optional[list[tuple[str, bytes]]] = None) -> "ProtobufClientStream":
        """A client-stream call: ``send`` messages, then ``await reply()``."""
        call = await self.target.client_stream(self.op(method), timeout=timeout, metadata=metadata)
        return ProtobufClientStream(self, method, call)

    async def bidi(self, method: str, *, timeout: Optional[float] = None,
                   metadata: Optional[list[tuple[str, bytes]]] = None) -> "ProtobufBidiStream":
        """A bidirectional call: ``send`` messages while iterating replies."""
        call = await self.target.bidi(self.op(method), timeout=timeout, metadata=metadata)
        return ProtobufBidiStream(self, method, call)


class ProtobufClientStream:
    """Sends protobuf messages on a client-stream call."""

    def __init__(self, service: ProtobufService, method: str, call: ClientStream) -> None:
        self._service, self._method, self._call = service, method, call

    async def send(self, message: Message) -> None:
        await self._call.send(self._service._encode(self._method, message))

    async def finish(self) -> None:
        await self._call.finish()

    async def reply(self, *, finish: bool = True) -> Message:
        return self._service._decode(self._method, await self._call.reply(finish=finish))

    def cancel(self) -> None:
        self._call.cancel()


class ProtobufBidiStream:
    """Sends and receives protobuf messages on a bidirectional call."""

    def __init__(self, service: ProtobufService, method: str, call: BidiStream) -> None:
        self._service, self._method, self._call = service, method, call

    async def send(self, message: Message) -> None:
        await self._call.send(self._service._encode(self._method, message))

    async def finish(self) -> None:
        await self._call.finish()

    def cancel(self) -> None:
        self._call.cancel()

    def __aiter__(self) -> "ProtobufBidiStream":
        return self

    async def __anext__(self) -> Message:
        return self._service._decode(self._method, await self._call.__anext__())
