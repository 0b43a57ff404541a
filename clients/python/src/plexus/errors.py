"""What can go wrong, as exceptions that say what happened and what to do.

Two families: :class:`ConnectError` when a connection cannot be made, and
:class:`CallError` when a call fails. A handler's explicit "no" is
:class:`Rejected`, carrying the code, message and details it sent; the
system codes of PROTOCOL.md §8 are subclasses of it, so ``except Rejected``
catches every answer the peer gave and ``except CallError`` every failure.
"""

from __future__ import annotations

from typing import Callable, Optional

from .wire import RefusalCode, SystemCode


class PlexusError(Exception):
    """Everything this package raises."""


# -- connecting -------------------------------------------------------------


class ConnectError(PlexusError):
    """A connection could not be made. ``url`` names the far side."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url


class TransportError(ConnectError):
    """The transport failed: nothing listens there, TLS failed, the WebSocket upgrade failed."""


class HandshakeError(ConnectError):
    """The peer's handshake answer broke the protocol, or came too late."""


class Refused(ConnectError):
    """The listener refused the connection with a refusal code and a reason.

    The codes of PROTOCOL.md §3.2 that a client can act on have their own
    subclasses (:class:`KeyRequired`, :class:`KeyMismatch`,
    :class:`NotAllowed`, :class:`TooManyConnections`,
    :class:`ShuttingDown`, ...); ``code`` is always the
    :class:`~plexus.wire.RefusalCode`.
    """

    #: What to do about it, appended to the message.
    remedy = ""

    def __init__(self, url: str, code: RefusalCode, reason: str) -> None:
        message = f"refused ({code.name}): {reason}"
        super().__init__(url, f"{message} — {self.remedy}" if self.remedy else message)
        self.code = code
        self.reason = reason


class KeyRequired(Refused):
    """The listener has a session key and this client proved none."""

    remedy = "the server needs its session key: connect with key=..."


class KeyMismatch(Refused):
    """This client's session key is not the listener's."""

    remedy = "the key given is not the server's: check which key it was started with"


class NotAllowed(Refused):
    """The listener's allow-list does not admit this client's certificate (or it showed none)."""

    remedy = "the server admits only certain client certificates: connect with one it allows (tls=...)"


class TooManyConnections(Refused):
    """The listener is at its connection limit; try again later or elsewhere."""


class ShuttingDown(Refused):
    """The listener is shutting down; try another server."""


class Untrusted(ConnectError):
    """This client refused to trust the listener: it could not prove the
    session key this client holds, or proved none (a keyed client never
    accepts a keyless peer, so a stripped key extension cannot downgrade the
    connection). Nothing was sent after the Hello."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"refused to trust the peer: {reason}")
        self.reason = reason


class VersionMismatch(Refused):
    """The listener speaks another protocol version."""

    def __init__(self, url: str, ours: int, theirs: int, reason: str = "") -> None:
        ConnectError.__init__(
            self,
            url,
            f"protocol version mismatch: this client speaks v{ours}, the peer v{theirs}"
            + (f" ({reason})" if reason else ""),
        )
        self.code = RefusalCode.VERSION_MISMATCH
        self.reason = reason
        self.ours = ours
        self.theirs = theirs


class SelfConnect(Refused):
    """The listener has this client's own node id."""

    def __init__(self, url: str, reason: str = "") -> None:
        ConnectError.__init__(self, url, "the peer is this node itself")
        self.code = RefusalCode.SELF_CONNECT
        self.reason = reason


# -- calling ----------------------------------------------------------------


class CallError(PlexusError):
    """A call failed. ``op`` is the operation, ``peer`` names the far side."""

    def __init__(self, op: str, peer: str, message: str) -> None:
        super().__init__(f"{op} on {peer}: {message}")
        self.op = op
        self.peer = peer
        self.text = message


class Rejected(CallError):
    """The peer answered the call with a Reject: ``code``, ``message`` and ``details``.

    ``system`` is true for the system codes of PROTOCOL.md §8, which have
    their own subclasses; an application's rejection (``Reject::new(400,
    "...")`` in Rust) is a plain ``Rejected`` with ``system`` false.
    """

    def __init__(
        self, op: str, peer: str, code: int, message: str, details: bytes = b"", system: bool = False
    ) -> None:
        kind = "system code" if system else "code"
        super().__init__(op, peer, f"rejected with {kind} {code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.system = system


class NoSuchOperation(Rejected):
    """The peer serves no operation of that name."""


class HandlerFailed(Rejected):
    """The peer's handler failed (panicked) without rejecting; also unknown system codes."""


class DeadlineExceeded(Rejected):
    """The deadline passed on the handler's side before it finished."""


class InvalidPayload(Rejected):
    """The handler could not decode the request: check the codec and the argument types."""


class GoingAway(Rejected):
    """The peer is draining and did not take the call; it is safe to send it elsewhere."""


class ProtocolViolation(Rejected):
    """The call broke the protocol (for example, the wrong call kind for the operation)."""


class TooLarge(Rejected):
    """The reply was larger than this client's max frame."""


class Overloaded(Rejected):
    """The peer is at one of its limits (calls served at once, sessions) and
    did not run the call; safe to retry later."""


class PermissionDenied(Rejected):
    """The peer's policy does not let this client call the operation; it did not run."""


class SessionClosed(CallError):
    """The call ran in a session that is not (or no longer) open."""


class Timeout(CallError, TimeoutError):
    """This client's own timer for the call passed; the call was cancelled on the peer."""


class SessionTimeout(Timeout):
    """The peer did not decide on a session within the settle timeout; the session was closed."""


class Cancelled(CallError):
    """The peer cancelled the call, or the stream was cancelled here."""


class ConnectionLost(CallError):
    """The connection ended with the call open: it may or may not have run.

    ``code`` is the system code of the GoAway the peer ended the connection
    with (PROTOCOL.md §8, §11), or ``None`` when it sent none or a graceful
    one; :class:`CutOff` and :class:`AccessRevoked` are the codes a client
    can act on.
    """

    def __init__(self, op: str, peer: str, message: str, code: Optional[SystemCode] = None) -> None:
        super().__init__(op, peer, message)
        self.code = code


class CutOff(ConnectionLost):
    """The peer cut this connection off for exceeding one of its limits
    (GoAway ``ResourceExhausted``: for example, leaving its replies unread)."""


class AccessRevoked(ConnectionLost):
    """The peer revoked this client's access (GoAway ``PermissionDenied``)."""


class Closing(CallError):
    """The call was not sent or not taken: the connection is closing. Safe to retry elsewhere."""


class MessageTooLarge(CallError):
    """The message exceeds the peer's max frame; nothing was sent."""


class DecodeError(CallError):
    """A reply could not be decoded by this client's codec."""


_SYSTEM_REJECTS: dict[int, type[Rejected]] = {
    SystemCode.NO_SUCH_OPERATION: NoSuchOperation,
    SystemCode.HANDLER_FAILED: HandlerFailed,
    SystemCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    SystemCode.INVALID_PAYLOAD: InvalidPayload,
    SystemCode.GOING_AWAY: GoingAway,
    SystemCode.PROTOCOL: ProtocolViolation,
    SystemCode.TOO_LARGE: TooLarge,
    SystemCode.RESOURCE_EXHAUSTED: Overloaded,
    SystemCode.PERMISSION_DENIED: PermissionDenied,
}

_REFUSALS: dict[RefusalCode, type[Refused]] = {
    RefusalCode.KEY_REQUIRED: KeyRequired,
    RefusalCode.KEY_MISMATCH: KeyMismatch,
    RefusalCode.NOT_ALLOWED: NotAllowed,
    RefusalCode.TOO_MANY_CONNECTIONS: TooManyConnections,
    RefusalCode.SHUTTING_DOWN: ShuttingDown,
}


def rejected(op: str, peer: str, code: int, message: str, details: bytes, system: bool) -> CallError:
    """The exception for a Reject frame."""
    if not system:
        return Rejected(op, peer, code, message, details, False)
    if code == SystemCode.SESSION_CLOSED:
        return SessionClosed(op, peer, f"the session is not open ({message})")
    if code == SystemCode.CANCELLED:
        return Cancelled(op, peer, message or "cancelled by the peer")
    cls = _SYSTEM_REJECTS.get(code, HandlerFailed)
    return cls(op, peer, code, message, details, True)


def refused(url: str, code: RefusalCode, reason: str) -> Refused:
    """The exception for a Refusal (other than VersionMismatch and SelfConnect)."""
    return _REFUSALS.get(code, Refused)(url, code, reason)


def connection_lost(goaway_code: Optional[int]) -> Callable[[str, str, str], ConnectionLost]:
    """What calls in flight fail with when the connection ended after the
    peer's GoAway carrying ``goaway_code`` (``None`` or 0: no code)."""
    code = SystemCode.of(goaway_code) if goaway_code else None
    cls: type[ConnectionLost] = ConnectionLost
    if code == SystemCode.RESOURCE_EXHAUSTED:
        cls = CutOff
    elif code == SystemCode.PERMISSION_DENIED:
        cls = AccessRevoked

    def make(op: str, peer: str, message: str) -> ConnectionLost:
        return cls(op, peer, message, code)

    return make


def peer_name(node_id: Optional[int], url: str) -> str:
    """``node 3fa2c1d0 at tcp://...``, as the Rust runtime names peers."""
    if node_id is None:
        return url
    return f"node {node_id >> 96:08x} at {url}"
