"""A Plexus client for Python: typed remote calls to Plexus services.

Written from the protocol spec (docs/PROTOCOL.md), asyncio only, no compiled
code of its own::

    import asyncio, plexus

    async def main() -> None:
        async with await plexus.connect("tcp://127.0.0.1:4000") as conn:
            greeter = plexus.MsgPackService(conn, "greet.Greeter")
            print(await greeter.unary("hello", "ada"))

    asyncio.run(main())
"""

from .codec import pack, pack_args, unpack
from .connection import (
    BidiStream,
    CallContext,
    ClientStream,
    Config,
    Connection,
    Handlers,
    ReplyStream,
    Session,
    connect,
)
from .errors import (
    AccessRevoked,
    CallError,
    Cancelled,
    Closing,
    ConnectError,
    ConnectionLost,
    CutOff,
    DeadlineExceeded,
    DecodeError,
    GoingAway,
    HandlerFailed,
    HandshakeError,
    InvalidPayload,
    KeyMismatch,
    KeyRequired,
    MessageTooLarge,
    NoSuchOperation,
    NotAllowed,
    Overloaded,
    PermissionDenied,
    PlexusError,
    ProtocolViolation,
    Refused,
    Rejected,
    SelfConnect,
    SessionClosed,
    SessionTimeout,
    ShuttingDown,
    Timeout,
    TooLarge,
    TooManyConnections,
    TransportError,
    Untrusted,
    VersionMismatch,
)
from .key import KeyFormatError, SessionKey
from .protobuf import ProtobufService
from .service import MsgPackService
from .transport import parse_url

__version__ = "0.1.0"

__all__ = [
    "AccessRevoked", "BidiStream", "CallContext", "CallError", "Cancelled", "ClientStream", "Closing",
    "Config", "ConnectError", "Connection", "ConnectionLost", "CutOff", "DeadlineExceeded", "DecodeError",
    "GoingAway", "HandlerFailed", "Handlers", "HandshakeError", "InvalidPayload", "KeyFormatError",
    "KeyMismatch", "KeyRequired", "MessageTooLarge", "MsgPackService", "NoSuchOperation", "NotAllowed",
    "Overloaded", "PermissionDenied", "PlexusError", "ProtobufService", "ProtocolViolation", "Refused",
    "Rejected", "ReplyStream", "SelfConnect", "Session", "SessionClosed", "SessionKey", "SessionTimeout",
    "ShuttingDown", "Timeout", "TooLarge", "TooManyConnections", "TransportError", "Untrusted",
    "VersionMismatch", "connect", "pack", "pack_args", "parse_url", "unpack",
]
