"""One Plexus connection: the handshake, then calls both ways over one stream.

Owns what PROTOCOL.md §5–§12 ask of a peer: call ids, operation-name
interning, the call table, per-stream flow control, keepalive, GoAway and
sessions. One reader task decides what each frame means; one writer task
sends whatever the callers queued, coalesced; a keepalive task watches the
silence. Bytes come from :mod:`plexus.transport`, frames from
:mod:`plexus.wire`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Optional, Union

from . import wire
from .errors import (
    CallError,
    Cancelled,
    Closing,
    ConnectError,
    ConnectionLost,
    HandshakeError,
    MessageTooLarge,
    Rejected,
    SelfConnect,
    SessionClosed,
    SessionTimeout,
    Timeout,
    Untrusted,
    VersionMismatch,
    connection_lost,
    peer_name,
    refused,
    rejected,
)
from .key import HelloKey, SessionKey, prove_to_listener
from .transport import ByteStream, open_stream, parse_url
from .wire import SystemCode

log = logging.getLogger("plexus")

SESSION_OPEN = "plexus.Session/open"
SESSION_CLOSE = "plexus.Session/close"
#: The Reject code of a peer with no session hook.
NO_SESSIONS = 0xFFFF_0001
#: Interned operations accepted per connection and direction (§5, §13).
MAX_INTERNED = 4096
#: Bytes of interned names accepted per connection and direction.
MAX_INTERNED_BYTES = 256 * 1024
#: Bytes queued for the writer before callers wait for it.
WRITE_HIGH_WATER = 1 << 20


@dataclass
class Config:
    """Settings of one connection; the defaults are the Rust runtime's."""

    #: Largest frame payload this side accepts (announced in the Hello).
    max_frame: int = 16 << 20
    #: Per-stream receive window (announced in the Hello).
    window: int = 2 << 20
    #: Calls of the peer's this side serves at once (announced in the Hello, §7.8).
    max_calls: int = 256
    #: Bounds reaching the listener (connect, TLS, WebSocket upgrade), in seconds.
    connect_timeout: float = 10.0
    #: Bounds the Plexus handshake once connected, in seconds.
    handshake_timeout: float = 10.0
    #: Timeout (and deadline sent) for unary calls that set none; ``None`` for none.
    default_timeout: Optional[float] = 30.0
    #: Ping after this much silence, in seconds; ``None`` turns keepalive off.
    keepalive_interval: Optional[float] = 5.0
    #: Declare the peer lost after this much silence, in seconds.
    keepalive_timeout: float = 15.0
    #: How long a graceful close waits for calls in flight, in seconds.
    drain_timeout: float = 10.0
    #: Largest WebSocket message accepted on ``ws://``/``wss://``.
    ws_max_message: int = (16 << 20) + (64 << 10)


@dataclass(frozen=True)
class CallContext:
    """What a handler on this side learns about a call the peer made."""

    op: str
    metadata: list[tuple[str, bytes]]
    session: Optional["Session"]
    deadline: Optional[float]


#: A handler: takes the request bytes and the context, returns the reply
#: bytes (unary) or nothing (one-way); raise :class:`~plexus.errors.Rejected`
#: to reject with a code.
Handler = Callable[[bytes, CallContext], Awaitable[Optional[bytes]]]
#: Decides on a session the peer opens: return accept data or raise Rejected.
SessionHook = Callable[["Session"], Awaitable[bytes]]


@dataclass
class Handlers:
    """Operations this client serves to its peer (server push)."""

    unary: dict[str, Handler] = field(default_factory=dict)
    oneway: dict[str, Handler] = field(default_factory=dict)
    on_session: Optional[SessionHook] = None


def _broken(message: str) -> wire.WireError:
    """A rule of the protocol broken by the peer (beyond the codec's)."""
    return wire.WireError("Protocol", message)


class _Outbound:
    """A call this side opened: its state until the terminal frame."""

    def __init__(self, conn: "Connection", id: int, op: str, kind: str, session: Optional[int]) -> None:
        self.id = id
        self.op = op
        self.kind = kind  # unary | server | client | bidi
        self.session = session
        self.reply: asyncio.Future[bytes] = conn._loop.create_future()
        self.messages: deque[bytes] = deque()
        self.arrived = asyncio.Event()
        self.send_credit = conn.peer_window
        self.credit_changed = asyncio.Event()
        self.unreturned = 0
        self.consumed = 0
        self.finished = False  # our request side is done
        self.timer: Optional[asyncio.TimerHandle] = None

    @property
    def done(self) -> bool:
        return self.reply.done()

    def fail(self, error: BaseException) -> None:
        if not self.reply.done():
            self.reply.set_exception(error)
            # A caller that only streams may never await the reply.
            self.reply.exception()
        self.arrived.set()
        self.credit_changed.set()


class _Served:
    """A call the peer opened on this side."""

    def __init__(self, task: "asyncio.Task[None]", session: Optional[int]) -> None:
        self.task = task
        self.session = session


class Session:
    """A named session on a connection (PROTOCOL.md §12). Calls made through
    it carry its id; closing it, from either side, fails them."""

    def __init__(self, conn: "Connection", id: int, name: str, data: bytes) -> None:
        self.connection = conn
        self.id = id
        self.name = name
        #: What the other side sent: the acceptor's reply, or the opener's data.
        self.data = data
        self.closed = False
        self.reason = ""

    async def call(self, op: str, body: bytes = b"", **options: Any) -> bytes:
        """A unary call inside the session; see :meth:`Connection.call`."""
        return await self.connection.call(op, body, session=self, **options)

    async def oneway(self, op: str, body: bytes = b"", **options: Any) -> None:
        """A one-way message inside the session."""
        await self.connection.oneway(op, body, session=self, **options)

    async def server_stream(self, op: str, body: bytes = b"", **options: Any) -> "ReplyStream":
        """A server-stream call inside the session."""
        return await self.connection.server_stream(op, body, session=self, **options)

    async def client_stream(self, op: str, **options: Any) -> "ClientStream":
        """A client-stream call inside the session."""
        return await self.connection.client_stream(op, session=self, **options)

    async def bidi(self, op: str, **options: Any) -> "BidiStream":
        """A bidirectional-stream call inside the session."""
        return await self.connection.bidi(op, session=self, **options)

    async def close(self, reason: str = "closed") -> None:
        """Closes the session on both sides; its calls fail with SessionClosed."""
        if self.closed:
            return
        body = bytearray()
        wire.put_varint(body, self.id)
        body += reason.encode("utf-8")
        self.connection._end_session(self.id, f"closed here: {reason}")
        try:
            await self.connection.oneway(SESSION_CLOSE, bytes(body))
        except CallError:
            pass

    def __repr__(self) -> str:
        return f"Session({self.name!r}, id={self.id})"


class ReplyStream:
    """The replies of a server-stream or bidi call: ``async for message in stream``.

    Ends at the handler's Ack; a Reject, a lost connection or a timeout is
    raised after the messages that came before it. Consuming a message
    returns flow-control credit, so a slow consumer slows the sender.
    """

    def __init__(self, conn: "Connection", call: _Outbound) -> None:
        self._conn = conn
        self._call = call

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> bytes:
        call = self._call
        while True:
            if call.messages:
                message = call.messages.popleft()
                self._conn._consumed(call, len(message))
                return message
            if call.reply.done():
                error = call.reply.exception()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            call.arrived.clear()
            try:
                await call.arrived.wait()
            except asyncio.CancelledError:
                self._conn._cancel(call)
                raise

    async def collect(self) -> list[bytes]:
        """Every remaining message."""
        return [m async for m in self]

    def cancel(self) -> None:
        """Abandons the call: a Cancel goes to the peer, iteration raises Cancelled."""
        self._conn._cancel(self._call)

    async def __aenter__(self) -> "ReplyStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._call.done:
            self.cancel()


class _Sender:
    def __init__(self, conn: "Connection", call: _Outbound) -> None:
        self._conn = conn
        self._call = call

    async def send(self, message: bytes) -> None:
        """Sends one request message, waiting for flow-control credit."""
        await self._conn._send_data(self._call, message)

    async def finish(self) -> None:
        """Ends the requests (End frame); the handler then answers."""
        call = self._call
        if call.finished or call.done:
            return
        call.finished = True
        await self._conn._queue(wire.End(call.id))

    def cancel(self) -> None:
        """Abandons the call: a Cancel goes to the peer."""
        self._conn._cancel(self._call)


class ClientStream(_Sender):
    """A client-stream call: ``send`` messages, ``finish``, then ``await reply()``."""

    async def reply(self, *, finish: bool = True) -> bytes:
        """The handler's reply, finishing the requests first unless ``finish``
        is false (a handler may answer before the requests end)."""
        if finish:
            await self.finish()
        try:
            return await asyncio.shield(self._call.reply)
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def __aenter__(self) -> "ClientStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._call.done and exc[0] is not None:
            self.cancel()


class BidiStream(_Sender, ReplyStream):
    """A bidirectional call: ``send``/``finish`` requests while iterating replies."""

    def __init__(self, conn: "Connection", call: _Outbound) -> None:
        _Sender.__init__(self, conn, call)


_Caller = Union["Connection", Session]


class Connection:
    """A connection to a Plexus peer. Make one with :func:`connect`."""

    def __init__(
        self,
        stream: ByteStream,
        url: str,
        welcome: wire.Welcome,
        node_id: int,
        config: Config,
        handlers: Handlers,
        leftover: bytes,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self.url = url
        #: The listener's node id, and the data its accept hook answered with.
        self.peer_node_id = welcome.node_id
        self.peer_data = welcome.data
        self.peer_max_frame = welcome.max_frame
        self.peer_window = welcome.window
        #: How many of this side's calls the peer serves at once; callers wait beyond it.
        self.peer_max_calls = welcome.max_calls
        self.node_id = node_id
        self.config = config
        self.handlers = handlers
        self.peer = peer_name(welcome.node_id, url)
        self._inbuf = bytearray(leftover)
        self._out = bytearray()
        self._out_ready = asyncio.Event()
        self._out_drained = asyncio.Event()
        self._out_drained.set()
        self._send_ops: dict[str, int] = {}
        self._recv_ops: list[str] = []
        self._recv_op_bytes = 0
        self._call_left = asyncio.Event()
        self._serving = 0
        self._served_left = asyncio.Event()
        self._next_id = 1
        self._next_session = 1
        self._calls: dict[int, _Outbound] = {}
        self._served: dict[int, _Served] = {}
        self._sessions: dict[int, Session] = {}
        self._highest_admitted = 0
        self._peer_last_id: Optional[int] = None
        self._peer_draining = False
        #: The system code of the peer's GoAway, once it sent one with a code.
        self.goaway_code: Optional[SystemCode] = None
        self._cut_off: Optional[str] = None
        self._draining = False
        self._ping = 0
        self._heard = self._loop.time()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._tasks = [
            self._loop.create_task(self._read_loop(), name="plexus-reader"),
            self._loop.create_task(self._write_loop(), name="plexus-writer"),
        ]
        if config.keepalive_interval is not None:
            self._tasks.append(self._loop.create_task(self._keepalive(), name="plexus-keepalive"))

    # -- public API -------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection has ended."""
        return self._closed.done()

    @property
    def close_reason(self) -> Optional[str]:
        """Why the connection ended, once it has."""
        return self._closed.result() if self._closed.done() else None

    async def wait_closed(self) -> str:
        """Waits until the connection ends; returns why."""
        return await asyncio.shield(self._closed)

    async def call(
        self,
        op: str,
        body: bytes = b"",
        *,
        timeout: Optional[float] = -1.0,
        metadata: Optional[list[tuple[str, bytes]]] = None,
        session: Optional[Session] = None,
    ) -> bytes:
        """A unary call: returns the Ack's reply, raises :class:`Rejected` (with
        ``code``, ``message``, ``details``) or another :class:`CallError`.

        ``timeout`` in seconds also travels as the call's deadline; by default
        the connection's ``default_timeout``, ``None`` for none. Cancelling
        the awaiting task cancels the call on the peer.
        """
        if timeout is not None and timeout < 0:
            timeout = self.config.default_timeout
        call = await self._open(op, body, "unary", timeout, metadata, session, end=True)
        try:
            return await asyncio.shield(call.reply)
        except asyncio.CancelledError:
            self._cancel(call)
            raise

    async def oneway(
        self,
        op: str,
        body: bytes = b"",
        *,
        timeout: Optional[float] = None,
        metadata: Optional[list[tuple[str, bytes]]] = None,
        session: Optional[Session] = None,
    ) -> None:
        """Fire-and-forget: nothing comes back, not even for an unknown operation."""
        self._check_open(op)
        frame = wire.CallOpen(
            id=0,
            index=0,
            deadline_us=_micros(timeout),
            metadata=list(metadata or []),
            session=self._session_id(op, session),
            end=True,
            oneway=True,
            body=bytes(body),
        )
        await self._queue_open(op, frame)

    async def server_stream(
        self,
        op: str,
        body: bytes = b"",
        *,
        timeout: Optional[float] = None,
        metadata: Optional[list[tuple[str, bytes]]] = None,
        session: Optional[Session] = None,
    ) -> ReplyStream:
        """A server-stream call: iterate the returned stream for the replies."""
        call = await self._open(op, body, "server", timeout, metadata, session, end=True)
        return ReplyStream(self, call)

    async def client_stream(
        self,
        op: str,
        *,
        timeout: Optional[float] = None,
        metadata: Optional[list[tuple[str, bytes]]] = None,
        session: Optional[Session] = None,
    ) -> ClientStream:
        """A client-stream call: send requests, finish, await the reply."""
        call = await self._open(op, b"", "client", timeout, metadata, session, end=False)
        return ClientStream(self, call)

    async def bidi(
        self,
        op: str,
        *,
        timeout: Optional[float] = None,
        metadata: Optional[list[tuple[str, bytes]]] = None,
        session: Optional[Session] = None,
    ) -> BidiStream:
        """A bidirectional-stream call."""
        call = await self._open(op, b"", "bidi", timeout, metadata, session, end=False)
        return BidiStream(self, call)

    async def open_session(self, name: str, data: bytes = b"", *, timeout: float = 10.0) -> Session:
        """Opens a named session with ``data``. The peer's hook accepts (its
        reply is ``session.data``) or rejects (raised as :class:`Rejected`);
        no answer within ``timeout`` raises :class:`SessionTimeout`."""
        raw = name.encode("utf-8")
        if len(raw) > wire.MAX_OP_NAME:
            raise ValueError(f"a session name is at most {wire.MAX_OP_NAME} bytes")
        id = self._next_session
        self._next_session = (self._next_session + 2) & wire.U32_MAX or 1
        session = Session(self, id, name, b"")
        # Registered before sending, so the peer may call into it at once.
        self._sessions[id] = session
        body = bytearray()
        wire.put_varint(body, id)
        wire.put_varint(body, len(raw))
        body += raw + data
        try:
            session.data = await self.call(SESSION_OPEN, bytes(body), timeout=timeout)
        except Timeout:
            self._sessions.pop(id, None)
            session.closed = True
            close = bytearray()
            wire.put_varint(close, id)
            close += b"settle timeout"
            try:
                await self.oneway(SESSION_CLOSE, bytes(close))
            except CallError:
                pass
            raise SessionTimeout(SESSION_OPEN, self.peer, f"session {name!r} not settled within {timeout:g} s") from None
        except BaseException:
            self._sessions.pop(id, None)
            session.closed = True
            raise
        return session

    def serve_unary(self, op: str, handler: Handler) -> None:
        """Serves ``op`` to the peer: ``handler(body, ctx)`` returns the reply bytes."""
        self.handlers.unary[op] = handler

    def serve_oneway(self, op: str, handler: Handler) -> None:
        """Serves one-way ``op`` to the peer."""
        self.handlers.oneway[op] = handler

    async def close(self) -> None:
        """Closes gracefully: GoAway, calls in flight both ways finish (up to
        ``drain_timeout``), then the stream closes."""
        if self._closed.done():
            return
        if not self._draining:
            self._draining = True
            await self._queue(wire.GoAway(self._highest_admitted, 0, "closing"))
        deadline = self._loop.time() + self.config.drain_timeout
        while (self._calls or self._served) and not self._closed.done() and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        await self._shutdown("closed by this side", ConnectionLost, "the connection closed")

    async def abort(self) -> None:
        """Closes at once, without GoAway; open calls fail with ConnectionLost."""
        await self._shutdown("aborted by this side", ConnectionLost, "the connection was aborted", flush=False)

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- opening calls ----------------------------------------------------

    def _check_open(self, op: str) -> None:
        if self._closed.done():
            raise Closing(op, self.peer, f"the connection is closed ({self._closed.result()})")
        if self._draining or self._peer_draining:
            raise Closing(op, self.peer, "the connection is draining; the call was not sent")

    def _session_id(self, op: str, session: Optional[Session]) -> Optional[int]:
        if session is None:
            return None
        if session.connection is not self:
            raise ValueError("the session belongs to another connection")
        if session.closed:
            raise SessionClosed(op, self.peer, f"session {session.name!r} is closed ({session.reason})")
        return session.id

    async def _open(
        self,
        op: str,
        body: bytes,
        kind: str,
        timeout: Optional[float],
        metadata: Optional[list[tuple[str, bytes]]],
        session: Optional[Session],
        *,
        end: bool,
    ) -> _Outbound:
        self._check_open(op)
        session_id = self._session_id(op, session)
        if len(self._calls) >= self.peer_max_calls:
            timeout = await self._wait_for_a_place(op, timeout)
        id = self._next_id
        self._next_id = (self._next_id + 2) & wire.U32_MAX or 1
        frame = wire.CallOpen(
            id=id,
            index=0,
            deadline_us=_micros(timeout),
            metadata=list(metadata or []),
            session=session_id,
            end=end,
            body=bytes(body),
        )
        call = _Outbound(self, id, op, kind, session_id)
        self._calls[id] = call
        if timeout is not None:
            call.timer = self._loop.call_later(timeout, self._timed_out, call, timeout)
        try:
            await self._queue_open(op, frame)
        except BaseException:
            self._forget(call)
            raise
        return call

    async def _wait_for_a_place(self, op: str, timeout: Optional[float]) -> Optional[float]:
        """Waits until fewer of this side's calls are open than the peer
        serves at once (§7.8); returns what is left of ``timeout``."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while len(self._calls) >= self.peer_max_calls:
            self._call_left.clear()
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                raise Timeout(op, self.peer, f"no free call place within {timeout:g} s (the peer serves {self.peer_max_calls} at once)")
            try:
                await asyncio.wait_for(self._call_left.wait(), remaining)
            except asyncio.TimeoutError:
                continue
            self._check_open(op)
        return None if deadline is None else max(0.0, deadline - self._loop.time())

    async def _queue_open(self, op: str, frame: wire.CallOpen) -> None:
        # Index and frame are queued together with no await between them, so
        # definitions reach the stream in the order indices were assigned; a
        # frame too large for the peer is refused before it takes an index.
        index = self._send_ops.get(op)
        new = index is None
        if index is None:
            index = len(self._send_ops)
        encoded = wire.encode(replace(frame, index=index, name=op if new else None))
        if len(encoded) - wire.HEADER_LEN > self.peer_max_frame:
            raise MessageTooLarge(
                op,
                self.peer,
                f"the request of {len(frame.body)} bytes exceeds the peer's max frame of {self.peer_max_frame}; nothing was sent",
            )
        if new:
            self._send_ops[op] = index
        await self._queue_encoded(encoded)

    def _timed_out(self, call: _Outbound, after: float) -> None:
        if call.done:
            return
        self._cancel(call, Timeout(call.op, self.peer, f"no answer within {after:g} s"))

    def _cancel(self, call: _Outbound, error: Optional[CallError] = None) -> None:
        """Abandons a call of ours: Cancel to the peer, the call fails here."""
        if call.done:
            return
        call.fail(error or Cancelled(call.op, self.peer, "cancelled by this side"))
        self._forget(call)
        if not self._closed.done():
            self._queue_nowait(wire.Cancel(call.id))

    def _forget(self, call: _Outbound) -> None:
        if call.timer is not None:
            call.timer.cancel()
        if self._calls.pop(call.id, None) is not None:
            self._call_left.set()

    # -- streams -------------------------------------------------------

    async def _send_data(self, call: _Outbound, message: bytes) -> None:
        if call.finished:
            raise CallError(call.op, self.peer, "the requests are already finished")
        if len(message) > self.peer_max_frame:
            raise MessageTooLarge(call.op, self.peer, f"a message of {len(message)} bytes exceeds the peer's max frame of {self.peer_max_frame}")
        half = self.peer_window // 2
        while not call.done and call.send_credit < len(message) and call.send_credit < half:
            call.credit_changed.clear()
            await call.credit_changed.wait()
        if call.done:
            error = call.reply.exception()
            if error is not None:
                raise error
            raise CallError(call.op, self.peer, "the handler already answered; the stream is closed")
        call.send_credit -= len(message)
        await self._queue(wire.Data(call.id, bytes(message)))

    def _consumed(self, call: _Outbound, n: int) -> None:
        """The application took ``n`` bytes: return credit in half-window steps."""
        call.unreturned -= n
        call.consumed += n
        # ``>=`` with a floored half: a window of 0 or 1 returns credit
        # after every message (§9).
        if call.consumed > 0 and call.consumed >= self.config.window // 2 and not call.done:
            amount, call.consumed = call.consumed, 0
            self._queue_nowait(wire.Credit(call.id, amount))

    # -- writing --------------------------------------------------------

    def _queue_nowait(self, frame: wire.Frame) -> None:
        self._append(wire.encode(frame))

    def _append(self, encoded: bytes) -> None:
        self._out += encoded
        self._out_ready.set()
        if len(self._out) >= WRITE_HIGH_WATER:
            self._out_drained.clear()

    async def _queue(self, frame: wire.Frame) -> None:
        await self._queue_encoded(wire.encode(frame))

    async def _queue_encoded(self, encoded: bytes) -> None:
        if self._closed.done():
            raise Closing("", self.peer, f"the connection is closed ({self._closed.result()})")
        self._append(encoded)
        if not self._out_drained.is_set():
            await self._out_drained.wait()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._out_ready.wait()
                self._out_ready.clear()
                if not self._out:
                    continue
                batch, self._out = bytes(self._out), bytearray()
                await self._stream.write(batch)
                if len(self._out) < WRITE_HIGH_WATER:
                    self._out_drained.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._loop.create_task(self._shutdown(f"write failed: {e}", ConnectionLost, f"writing failed: {e}", flush=False))

    # -- reading --------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the peer closed the connection"
        try:
            while True:
                while True:
                    decoded = wire.decode(self._inbuf, self.config.max_frame)
                    if decoded is None:
                        break
                    frame, used = decoded
                    del self._inbuf[:used]
                    if isinstance(frame, wire.CallOpen) and frame.oneway:
                        # Nothing can refuse a one-way message: hold the
                        # peer back by reading no further (§7.8).
                        while self._serving >= self.config.max_calls:
                            self._served_left.clear()
                            await self._served_left.wait()
                    self._on_frame(frame)
                chunk = await self._stream.read()
                if not chunk:
                    break
                self._heard = self._loop.time()
                self._inbuf += chunk
        except wire.WireError as e:
            await self._violation(str(e))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reason = f"reading failed: {e}"
        await self._ended(reason)

    async def _violation(self, reason: str) -> None:
        log.warning("%s broke the protocol: %s", self.peer, reason)
        self._queue_nowait(wire.GoAway(self._highest_admitted, SystemCode.PROTOCOL, reason))
        await self._shutdown(f"protocol error: {reason}", ConnectionLost, f"protocol error: {reason}")

    async def _ended(self, reason: str) -> None:
        reason = self._cut_off or reason
        await self._shutdown(reason, connection_lost(self.goaway_code), reason, flush=False)

    def _on_frame(self, frame: wire.Frame) -> None:
        if isinstance(frame, wire.CallOpen):
            self._on_call_open(frame)
        elif isinstance(frame, wire.Data):
            call = self._calls.get(frame.id)
            if call is not None:
                if call.kind not in ("server", "bidi"):
                    raise _broken(f"Data on call {frame.id}, which takes no reply stream")
                call.unreturned += len(frame.body)
                if call.unreturned > self.config.window + self.config.max_frame:
                    raise _broken(f"call {frame.id} sent more than its flow-control window")
                call.messages.append(frame.body)
                call.arrived.set()
            elif frame.id in self._served:
                raise _broken(f"Data on call {frame.id}, which takes no request stream")
        elif isinstance(frame, (wire.Ack, wire.Reject)):
            if frame.id % 2 == 0:
                raise _broken(f"an answer for call {frame.id}, which this side did not open")
            call = self._calls.get(frame.id)
            if call is None:
                return
            self._forget(call)
            if isinstance(frame, wire.Ack):
                call.reply.set_result(frame.body)
                call.arrived.set()
                call.credit_changed.set()
            else:
                call.fail(rejected(call.op, self.peer, frame.code, frame.message, frame.details, frame.system))
        elif isinstance(frame, wire.Cancel):
            served = self._served.pop(frame.id, None)
            if served is not None:
                served.task.cancel()
            call = self._calls.get(frame.id)
            if call is not None:
                self._forget(call)
                call.fail(Cancelled(call.op, self.peer, "cancelled by the peer"))
        elif isinstance(frame, wire.Credit):
            call = self._calls.get(frame.id)
            if call is not None:
                call.send_credit += frame.bytes
                call.credit_changed.set()
        elif isinstance(frame, wire.Ping):
            self._queue_nowait(wire.Pong(frame.value))
        elif isinstance(frame, wire.GoAway):
            self._peer_draining = True
            if self._peer_last_id is None or frame.last_id < self._peer_last_id:
                self._peer_last_id = frame.last_id
            if frame.code != 0:
                log.warning("%s is going away with code %d: %s", self.peer, frame.code, frame.reason)
                code = self.goaway_code = SystemCode.of(frame.code)
                if code == SystemCode.RESOURCE_EXHAUSTED:
                    self._cut_off = f"cut off by the peer: {frame.reason}"
                elif code == SystemCode.PERMISSION_DENIED:
                    self._cut_off = f"access revoked by the peer: {frame.reason}"
                elif code == SystemCode.PROTOCOL:
                    self._cut_off = f"protocol error reported by the peer: {frame.reason}"
                else:
                    self._cut_off = f"the peer went away with system code {frame.code} ({code.name}): {frame.reason}"
        # End and Pong need nothing: this side serves no request streams, and
        # any traffic counts as hearing from the peer.

    def _on_call_open(self, frame: wire.CallOpen) -> None:
        if frame.name is not None:
            if frame.index != len(self._recv_ops):
                raise _broken(f"operation index {frame.index} defined out of order")
            self._recv_op_bytes += len(frame.name.encode("utf-8"))
            if len(self._recv_ops) >= MAX_INTERNED or self._recv_op_bytes > MAX_INTERNED_BYTES:
                raise _broken(f"more than {MAX_INTERNED} interned operations or {MAX_INTERNED_BYTES} bytes of names")
            self._recv_ops.append(frame.name)
        elif frame.index >= len(self._recv_ops):
            raise _broken(f"undefined operation index {frame.index}")
        op = self._recv_ops[frame.index]
        if frame.oneway:
            if frame.id != 0:
                raise _broken("a one-way CallOpen with a non-zero id")
        elif frame.id == 0 or frame.id % 2 == 1:
            raise _broken(f"CallOpen with id {frame.id}, which is not the listener's to open")
        elif frame.id in self._served:
            raise _broken(f"CallOpen reuses call id {frame.id}, still open")

        def refuse(code: SystemCode, message: str) -> None:
            if not frame.oneway:
                self._queue_nowait(wire.Reject(frame.id, code, message, b"", True))

        if self._draining:
            return refuse(SystemCode.GOING_AWAY, "this side is closing")
        builtin = op in (SESSION_OPEN, SESSION_CLOSE)
        handler = self.handlers.oneway.get(op) if frame.oneway else None
        handler = handler or self.handlers.unary.get(op) or self.handlers.oneway.get(op)
        if handler is None and not builtin:
            if frame.oneway:
                log.info("%s sent a one-way %s, which this side does not serve", self.peer, op)
            return refuse(SystemCode.NO_SUCH_OPERATION, f"no handler for `{op}`")
        if not frame.end:
            return refuse(SystemCode.PROTOCOL, f"`{op}` takes no request stream; END must be set")
        session = None
        if frame.session is not None:
            session = self._sessions.get(frame.session)
            if session is None or session.closed:
                return refuse(SystemCode.SESSION_CLOSED, str(frame.session))
        if not frame.oneway and self._serving >= self.config.max_calls:
            return refuse(SystemCode.RESOURCE_EXHAUSTED, f"{self._serving} calls already served")
        deadline = None if frame.deadline_us is None else frame.deadline_us / 1e6
        ctx = CallContext(op, frame.metadata, session, deadline)
        if not frame.oneway:
            self._highest_admitted = max(self._highest_admitted, frame.id)
        self._serving += 1
        task = self._loop.create_task(self._serve(frame, op, handler, ctx))
        if not frame.oneway:
            self._served[frame.id] = _Served(task, frame.session)

    async def _serve(self, frame: wire.CallOpen, op: str, handler: Optional[Handler], ctx: CallContext) -> None:
        answer: Optional[wire.Frame] = None
        try:
            if op == SESSION_OPEN:
                reply: Optional[bytes] = await self._accept_session(frame.body)
            elif op == SESSION_CLOSE:
                self._session_closed_by_peer(frame.body)
                reply = b""
            else:
                assert handler is not None
                if ctx.deadline is not None:
                    reply = await asyncio.wait_for(handler(frame.body, ctx), ctx.deadline)
                else:
                    reply = await handler(frame.body, ctx)
            body = reply or b""
            if len(body) > self.peer_max_frame:
                answer = wire.Reject(frame.id, SystemCode.TOO_LARGE, f"the reply of {len(body)} bytes exceeds the caller's max frame", b"", True)
            else:
                answer = wire.Ack(frame.id, body)
        except asyncio.TimeoutError:
            answer = wire.Reject(frame.id, SystemCode.DEADLINE_EXCEEDED, "the deadline passed", b"", True)
        except asyncio.CancelledError:
            return
        except Rejected as r:
            answer = wire.Reject(frame.id, r.code, r.message, r.details, r.system)
        except Exception as e:
            log.exception("handler for %s failed", op)
            answer = wire.Reject(frame.id, SystemCode.HANDLER_FAILED, f"the handler failed: {e}", b"", True)
        finally:
            self._serving -= 1
            self._served_left.set()
            if not frame.oneway:
                self._served.pop(frame.id, None)
        if not frame.oneway and answer is not None and not self._closed.done():
            self._queue_nowait(answer)

    async def _accept_session(self, body: bytes) -> bytes:
        try:
            id, at = wire.get_varint_u32(body, 0, len(body), "session id")
            n, at = wire.get_varint(body, at, len(body), "session name")
            if n > wire.MAX_OP_NAME or at + n > len(body):
                raise _broken("bad session name")
            name = body[at : at + n].decode("utf-8")
            data = body[at + n :]
        except (wire.WireError, UnicodeDecodeError) as e:
            raise Rejected(SESSION_OPEN, self.peer, SystemCode.INVALID_PAYLOAD, f"malformed session open: {e}", b"", True) from None
        if id % 2 == 1 or id in self._sessions:
            raise Rejected(SESSION_OPEN, self.peer, SystemCode.INVALID_PAYLOAD, f"session id {id} is not available", b"", True)
        hook = self.handlers.on_session
        if hook is None:
            raise Rejected(SESSION_OPEN, self.peer, NO_SESSIONS, "this Python client accepts no sessions (no session hook is set)")
        session = Session(self, id, name, bytes(data))
        reply = await hook(session)
        self._sessions[id] = session
        return reply

    def _session_closed_by_peer(self, body: bytes) -> None:
        try:
            id, at = wire.get_varint_u32(body, 0, len(body), "session id")
        except wire.WireError:
            return
        reason = body[at:].decode("utf-8", errors="replace")
        self._end_session(id, f"closed by the peer: {reason}")

    def _end_session(self, id: int, reason: str) -> None:
        session = self._sessions.pop(id, None)
        if session is None:
            return
        session.closed = True
        session.reason = reason
        for call in [c for c in self._calls.values() if c.session == id]:
            self._cancel(call, SessionClosed(call.op, self.peer, f"session {session.name!r} {reason}"))
        for served_id, served in list(self._served.items()):
            if served.session == id:
                served.task.cancel()
                self._served.pop(served_id, None)

    # -- liveness and the end ---------------------------------------------

    async def _keepalive(self) -> None:
        interval = self.config.keepalive_interval
        assert interval is not None
        timeout = max(self.config.keepalive_timeout, interval)
        while True:
            await asyncio.sleep(interval)
            silence = self._loop.time() - self._heard
            if silence >= timeout:
                reason = f"nothing heard from the peer for {silence:.1f} s"
                await self._shutdown(reason, ConnectionLost, reason, flush=False)
                return
            if silence >= interval:
                self._ping += 1
                self._queue_nowait(wire.Ping(self._ping))

    async def _shutdown(
        self, reason: str, error: Callable[[str, str, str], CallError], message: str, *, flush: bool = True
    ) -> None:
        if self._closed.done():
            return
        self._closed.set_result(reason)
        if flush and self._out:
            batch, self._out = bytes(self._out), bytearray()
            try:
                await asyncio.wait_for(self._stream.write(batch), 5.0)
            except (OSError, asyncio.TimeoutError, ConnectError):
                pass
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for call in list(self._calls.values()):
            if self._peer_last_id is not None and call.id > self._peer_last_id:
                call.fail(Closing(call.op, self.peer, "the peer closed before taking this call; safe to retry"))
            else:
                call.fail(error(call.op, self.peer, message))
            self._forget(call)
        for served in self._served.values():
            served.task.cancel()
        self._served.clear()
        for session in self._sessions.values():
            session.closed = True
            session.reason = "the connection ended"
        self._sessions.clear()
        self._out_drained.set()
        await self._stream.close()


def _micros(timeout: Optional[float]) -> Optional[int]:
    return None if timeout is None else max(0, int(timeout * 1_000_000))


async def connect(
    url: str,
    data: bytes = b"",
    *,
    tls: Optional[ssl.SSLContext] = None,
    ca_file: Optional[str] = None,
    server_hostname: Optional[str] = None,
    config: Optional[Config] = None,
    handlers: Optional[Handlers] = None,
    node_id: Optional[int] = None,
    key: Union[SessionKey, str, bytes, None] = None,
) -> Connection:
    """Dials ``url`` (``tcp://``, ``tls://``, ``unix://``, ``ws://``, ``wss://``),
    sends ``data`` in the Hello and returns the connection once welcomed.

    ``ca_file`` (or a ready ``tls`` context) says whom to trust for ``tls://``
    and ``wss://``. A refusal raises :class:`Refused` with its code and reason
    (:class:`KeyRequired`, :class:`KeyMismatch`, :class:`NotAllowed`, ... for
    the codes a client can act on).

    ``key`` is the group's session key (PROTOCOL.md §3.6): hex text as the
    Rust side reads it (``SessionKey::from_hex``), raw bytes, or a
    :class:`~plexus.key.SessionKey`. With it both sides prove they hold it
    over fresh nonces; a listener that proves no key, or another one, is not
    trusted (:class:`Untrusted`) and nothing is sent to it after the Hello.
    """
    config = config or Config()
    parsed = parse_url(url)
    session_key = None if key is None else SessionKey.of(key)
    if tls is None and ca_file is not None:
        tls = ssl.create_default_context(cafile=ca_file)
    node = node_id if node_id is not None else secrets.randbits(128)
    hello_key = None if session_key is None else HelloKey.new(session_key)
    extensions = [] if hello_key is None else [hello_key.extension()]
    hello = wire.Hello(node, config.max_frame, config.window, config.max_calls, bytes(data), extensions)
    hello_bytes = hello.encode()
    label = str(parsed)
    stream = await open_stream(
        parsed,
        tls=tls,
        server_hostname=server_hostname,
        timeout=config.connect_timeout,
        ws_max_message=config.ws_max_message,
    )
    try:
        welcome, leftover = await asyncio.wait_for(_handshake(stream, hello_bytes, label), config.handshake_timeout)
    except asyncio.TimeoutError:
        await stream.close()
        raise HandshakeError(label, f"no handshake answer within {config.handshake_timeout:g} s") from None
    except BaseException:
        await stream.close()
        raise
    if welcome.version != wire.VERSION:
        await stream.close()
        raise VersionMismatch(label, wire.VERSION, welcome.version)
    if welcome.node_id == node:
        await stream.close()
        raise SelfConnect(label)
    if session_key is not None and hello_key is not None:
        try:
            proof = prove_to_listener(session_key, hello_key, welcome.extensions, node, welcome.node_id)
        except ValueError as e:
            await stream.close()
            raise Untrusted(label, str(e)) from None
        try:
            # Before any frame: the listener reads it first (§3.6 step 4).
            await asyncio.wait_for(stream.write(proof), config.handshake_timeout)
        except (OSError, ConnectError, asyncio.TimeoutError) as e:
            await stream.close()
            raise HandshakeError(label, f"sending the key proof failed: {e or 'timed out'}") from None
    return Connection(stream, label, welcome, node, config, handlers or Handlers(), leftover)


async def _handshake(stream: ByteStream, hello: bytes, label: str) -> tuple[wire.Welcome, bytes]:
    await stream.write(hello)
    buf = bytearray()
    while True:
        try:
            decoded = wire.decode_answer(buf)
        except wire.WireError as e:
            if e.kind == "UnsupportedVersion":
                raise VersionMismatch(label, wire.VERSION, int.from_bytes(buf[4:6], "big")) from None
            raise HandshakeError(label, f"the peer's answer is not a Plexus handshake: {e}") from None
        if decoded is not None:
            answer, used = decoded
            if isinstance(answer, wire.Refusal):
                if answer.code == wire.RefusalCode.VERSION_MISMATCH:
                    raise VersionMismatch(label, wire.VERSION, answer.version, answer.reason)
                if answer.code == wire.RefusalCode.SELF_CONNECT:
                    raise SelfConnect(label, answer.reason)
                raise refused(label, answer.code, answer.reason)
            return answer, bytes(buf[used:])
        try:
            chunk = await stream.read()
        except (OSError, ConnectError) as e:
            raise HandshakeError(label, f"the stream failed during the handshake: {e}") from e
        if not chunk:
            raise HandshakeError(label, "the peer closed the stream before answering")
        buf += chunk


__all__ = [
    "BidiStream",
    "CallContext",
    "ClientStream",
    "Config",
    "Connection",
    "Handler",
    "Handlers",
    "ReplyStream",
    "Session",
    "SessionHook",
    "connect",
]

