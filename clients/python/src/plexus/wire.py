"""The Plexus wire protocol, version 2: the handshake and the frames.

Pure functions over bytes, no I/O; written from ``docs/PROTOCOL.md``. Every
decoder is "check, then parse": it returns ``None`` while the buffer holds too
little, raises :class:`WireError` for bytes that break the protocol, and never
reads past the frame it is decoding.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Optional, Union

MAGIC = b"PLXS"
VERSION = 2

#: The fixed part of a Hello, before its extensions and data.
HELLO_LEN = 42
#: The fixed part of a Welcome, before its extensions and data.
WELCOME_LEN = 41
#: Bytes of every frame header.
HEADER_LEN = 10
#: Longest handshake data either side accepts.
MAX_HANDSHAKE_DATA = 65536
#: Longest handshake extension area either side accepts.
MAX_EXTENSIONS = 4096
#: Smallest max frame a peer may announce.
MIN_MAX_FRAME = 1024
#: Longest operation name (and metadata key), in bytes.
MAX_OP_NAME = 1024
#: Most metadata pairs on one call.
MAX_METADATA_PAIRS = 64
#: Largest u32.
U32_MAX = 0xFFFF_FFFF
#: Largest u64.
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class WireError(Exception):
    """Bytes that break the protocol: the connection carrying them must close.

    ``kind`` names the violation as the Rust codec's ``WireError`` variant
    does (``Truncated``, ``FrameTooLarge``, ...), which is what the golden
    vectors name.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _truncated(what: str) -> WireError:
    return WireError("Truncated", f"truncated {what}")


class Kind(enum.IntEnum):
    """Frame kinds (PROTOCOL.md §4.2)."""

    CALL_OPEN = 1
    DATA = 2
    END = 3
    ACK = 4
    REJECT = 5
    CANCEL = 6
    CREDIT = 7
    PING = 8
    PONG = 9
    GOAWAY = 10


class Flag(enum.IntFlag):
    """CallOpen flags (§4.3); ``SYSTEM`` is the Reject flag (§4.7)."""

    END = 0x01
    ONEWAY = 0x02
    OP_NEW = 0x04
    DEADLINE = 0x08
    METADATA = 0x10
    SESSION = 0x20


#: The one Reject flag: the code is a system code.
SYSTEM = 0x01


class RefusalCode(enum.IntEnum):
    """Why a listener refused a Hello (§3.2)."""

    VERSION_MISMATCH = 1
    SELF_CONNECT = 2
    REJECTED = 3
    TOO_MANY_CONNECTIONS = 4
    MALFORMED = 5
    SHUTTING_DOWN = 6
    #: The listener has a session key and the Hello proved none (§3.6).
    KEY_REQUIRED = 7
    #: The Hello names another session key than the listener's.
    KEY_MISMATCH = 8
    #: The listener's allow-list does not admit the dialer's certificate (§3.7).
    NOT_ALLOWED = 9
    OTHER = 0xFFFF

    @classmethod
    def of(cls, code: int) -> "RefusalCode":
        """The code, or ``OTHER`` for one this version does not know."""
        try:
            return cls(code)
        except ValueError:
            return cls.OTHER


class SystemCode(enum.IntEnum):
    """System codes of Reject frames with ``SYSTEM`` and of GoAway (§8)."""

    NO_SUCH_OPERATION = 1
    HANDLER_FAILED = 2
    DEADLINE_EXCEEDED = 3
    CANCELLED = 4
    INVALID_PAYLOAD = 5
    GOING_AWAY = 6
    PROTOCOL = 7
    TOO_LARGE = 8
    SESSION_CLOSED = 9
    RESOURCE_EXHAUSTED = 10
    PERMISSION_DENIED = 11
    #: A code this version does not know.
    UNKNOWN = 0xFFFF

    @classmethod
    def of(cls, code: int) -> "SystemCode":
        """The code, or ``UNKNOWN`` for one this version does not know."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


# -- varint ---------------------------------------------------------------


def put_varint(out: bytearray, value: int) -> None:
    """Appends ``value`` (0 ≤ value ≤ 2⁶⁴−1) as unsigned LEB128, shortest form."""
    if value < 0 or value > U64_MAX:
        raise ValueError(f"varint out of range: {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(buf: Union[bytes, bytearray, memoryview], at: int, end: int, what: str) -> tuple[int, int]:
    """Reads a varint from ``buf[at:end]``; returns ``(value, next offset)``.

    At most 10 bytes, the tenth carrying only 0 or 1; non-minimal forms are
    accepted. Running out of bytes is a :class:`WireError`: a varint never
    straddles the end of its frame.
    """
    value = 0
    shift = 0
    for i in range(10):
        if at >= end:
            raise _truncated(what)
        byte = buf[at]
        at += 1
        if i == 9 and byte > 1:
            raise WireError("VarintOverflow", f"{what} does not fit its integer type")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise WireError("VarintOverflow", f"{what} does not fit its integer type")


def get_varint_u32(buf: Union[bytes, bytearray, memoryview], at: int, end: int, what: str) -> tuple[int, int]:
    """Like :func:`get_varint`, for a field that must fit in 32 bits."""
    value, at = get_varint(buf, at, end, what)
    if value > U32_MAX:
        raise WireError("VarintOverflow", f"{what} does not fit its integer type")
    return value, at


def _put_str(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    put_varint(out, len(raw))
    out += raw


def _put_bytes(out: bytearray, raw: bytes) -> None:
    put_varint(out, len(raw))
    out += raw


def _get_str(buf: bytes, at: int, end: int, what: str, limit: Optional[int] = None) -> tuple[str, int]:
    n, at = get_varint(buf, at, end, what)
    if limit is not None and n > limit:
        raise WireError("TooLong", f"{what} of {n} bytes is longer than the limit of {limit} bytes")
    if n > end - at:
        raise _truncated(what)
    try:
        return bytes(buf[at : at + n]).decode("utf-8"), at + n
    except UnicodeDecodeError:
        raise WireError("InvalidUtf8", f"{what} is not valid UTF-8") from None


def _get_bytes(buf: bytes, at: int, end: int, what: str) -> tuple[bytes, int]:
    n, at = get_varint(buf, at, end, what)
    if n > end - at:
        raise _truncated(what)
    return bytes(buf[at : at + n]), at + n


# -- handshake ------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """One entry of a handshake's extension area (§3.5)."""

    type: int
    value: bytes


def _put_extensions(extensions: list[Extension]) -> bytes:
    out = bytearray()
    for entry in extensions:
        out += struct.pack(">HH", entry.type, len(entry.value)) + entry.value
    if len(out) > MAX_EXTENSIONS:
        raise ValueError(f"extensions of {len(out)} bytes, at most {MAX_EXTENSIONS}")
    return bytes(out)


def _parse_extensions(area: bytes) -> list[Extension]:
    out: list[Extension] = []
    at = 0
    while at < len(area):
        if len(area) - at < 4:
            raise _truncated("handshake extension header")
        kind, length = struct.unpack_from(">HH", area, at)
        at += 4
        if len(area) - at < length:
            raise _truncated("handshake extension value")
        if any(e.type == kind for e in out):
            raise WireError("DuplicateExtension", f"handshake extension type {kind} appears twice")
        out.append(Extension(kind, bytes(area[at : at + length])))
        at += length
    return out


def _lengths(buf: Union[bytes, bytearray], at: int) -> tuple[int, int]:
    ext_len, data_len = struct.unpack_from(">HI", buf, at)
    if ext_len > MAX_EXTENSIONS:
        raise WireError(
            "HandshakeExtensionsTooLarge",
            f"handshake extensions of {ext_len} bytes exceed the limit of {MAX_EXTENSIONS} bytes",
        )
    if data_len > MAX_HANDSHAKE_DATA:
        raise WireError(
            "HandshakeDataTooLarge", f"handshake data of {data_len} bytes exceeds the limit of {MAX_HANDSHAKE_DATA} bytes"
        )
    return int(ext_len), int(data_len)


def _check_limits(max_frame: int, max_calls: int) -> None:
    if max_frame < MIN_MAX_FRAME:
        raise WireError("MaxFrameTooSmall", f"announced max frame size {max_frame} is below the minimum {MIN_MAX_FRAME}")
    if max_calls == 0:
        raise WireError("NoCallsAllowed", "announced max calls is 0; a peer must serve at least one call at a time")


@dataclass(frozen=True)
class Hello:
    """The dialer's first message (§3.1)."""

    node_id: int
    max_frame: int
    window: int
    max_calls: int = 256
    data: bytes = b""
    extensions: list[Extension] = field(default_factory=list)
    version: int = VERSION
    flags: int = 0

    def encode(self) -> bytes:
        if len(self.data) > MAX_HANDSHAKE_DATA:
            raise ValueError(f"hello data is {len(self.data)} bytes, at most {MAX_HANDSHAKE_DATA}")
        area = _put_extensions(self.extensions)
        return (
            MAGIC
            + struct.pack(">HH", self.version, self.flags)
            + self.node_id.to_bytes(16, "big")
            + struct.pack(">IIIHI", self.max_frame, self.window, self.max_calls, len(area), len(self.data))
            + area
            + self.data
        )

    @staticmethod
    def decode(buf: Union[bytes, bytearray]) -> Optional[tuple["Hello", int]]:
        """The Hello at the start of ``buf`` and its length, or ``None`` for more bytes."""
        version = peek_version(buf)
        if version is None or len(buf) < HELLO_LEN:
            return None
        if version != VERSION:
            raise WireError("UnsupportedVersion", f"handshake of protocol version {version}; this side speaks version {VERSION}")
        ext_len, data_len = _lengths(buf, HELLO_LEN - 6)
        total = HELLO_LEN + ext_len + data_len
        if len(buf) < total:
            return None
        (flags,) = struct.unpack_from(">H", buf, 6)
        node_id = int.from_bytes(buf[8:24], "big")
        max_frame, window, max_calls = struct.unpack_from(">III", buf, 24)
        _check_limits(max_frame, max_calls)
        extensions = _parse_extensions(bytes(buf[HELLO_LEN : HELLO_LEN + ext_len]))
        data = bytes(buf[HELLO_LEN + ext_len : total])
        return Hello(node_id, max_frame, window, max_calls, data, extensions, version, flags), total


@dataclass(frozen=True)
class Welcome:
    """The listener's acceptance (§3.2, status 0)."""

    node_id: int
    max_frame: int
    window: int
    max_calls: int = 256
    data: bytes = b""
    extensions: list[Extension] = field(default_factory=list)
    version: int = VERSION

    def encode(self) -> bytes:
        if len(self.data) > MAX_HANDSHAKE_DATA:
            raise ValueError(f"welcome data is {len(self.data)} bytes, at most {MAX_HANDSHAKE_DATA}")
        area = _put_extensions(self.extensions)
        return (
            MAGIC
            + struct.pack(">HB", self.version, 0)
            + self.node_id.to_bytes(16, "big")
            + struct.pack(">IIIHI", self.max_frame, self.window, self.max_calls, len(area), len(self.data))
            + area
            + self.data
        )


@dataclass(frozen=True)
class Refusal:
    """The listener's refusal (§3.2, status 1); it closes the stream after.
    ``version`` is the listener's own. The layout is the same in every version."""

    code: RefusalCode
    reason: str
    version: int = VERSION

    def encode(self) -> bytes:
        raw = self.reason.encode("utf-8")
        if len(raw) > 0xFFFF:
            cut = raw[:0xFFFF]
            raw = cut.decode("utf-8", errors="ignore").encode("utf-8")
        return MAGIC + struct.pack(">HBHH", self.version, 1, int(self.code), len(raw)) + raw


Answer = Union[Welcome, Refusal]


def peek_version(buf: Union[bytes, bytearray]) -> Optional[int]:
    """The version in the six-byte prefix, or ``None`` before six bytes; a wrong magic is an error."""
    if len(buf) < 6:
        return None
    if bytes(buf[:4]) != MAGIC:
        got = ", ".join(f"{b:02x}" for b in buf[:4])
        raise WireError("BadMagic", f'not a Plexus peer: expected magic "PLXS", got [{got}]')
    (version,) = struct.unpack_from(">H", buf, 4)
    return int(version)


def decode_answer(buf: Union[bytes, bytearray]) -> Optional[tuple[Answer, int]]:
    """The Welcome or Refusal at the start of ``buf`` and its length, or ``None``.

    A Welcome of another version is ``UnsupportedVersion``: its layout past
    the prefix is that version's. A Refusal of any version decodes.
    """
    version = peek_version(buf)
    if version is None or len(buf) < 7:
        return None
    status = buf[6]
    if status == 0:
        if version != VERSION:
            raise WireError("UnsupportedVersion", f"handshake of protocol version {version}; this side speaks version {VERSION}")
        if len(buf) < WELCOME_LEN:
            return None
        ext_len, data_len = _lengths(buf, WELCOME_LEN - 6)
        total = WELCOME_LEN + ext_len + data_len
        if len(buf) < total:
            return None
        node_id = int.from_bytes(buf[7:23], "big")
        max_frame, window, max_calls = struct.unpack_from(">III", buf, 23)
        _check_limits(max_frame, max_calls)
        extensions = _parse_extensions(bytes(buf[WELCOME_LEN : WELCOME_LEN + ext_len]))
        data = bytes(buf[WELCOME_LEN + ext_len : total])
        return Welcome(node_id, max_frame, window, max_calls, data, extensions, version), total
    if status == 1:
        if len(buf) < 11:
            return None
        code, length = struct.unpack_from(">HH", buf, 7)
        if len(buf) < 11 + length:
            return None
        reason = bytes(buf[11 : 11 + length]).decode("utf-8", errors="replace")
        return Refusal(RefusalCode.of(code), reason, version), 11 + length
    raise WireError("BadAnswerStatus", f"handshake answer has unknown status {status}")


# -- frames ---------------------------------------------------------------


@dataclass(frozen=True)
class CallOpen:
    """Opens a call (§4.3). ``name`` is set when the frame defines ``index``."""

    id: int
    index: int
    name: Optional[str] = None
    deadline_us: Optional[int] = None
    metadata: list[tuple[str, bytes]] = field(default_factory=list)
    session: Optional[int] = None
    end: bool = True
    oneway: bool = False
    body: bytes = b""


@dataclass(frozen=True)
class Data:
    id: int
    body: bytes


@dataclass(frozen=True)
class End:
    id: int


@dataclass(frozen=True)
class Ack:
    id: int
    body: bytes = b""


@dataclass(frozen=True)
class Reject:
    id: int
    code: int
    message: str
    details: bytes = b""
    system: bool = False


@dataclass(frozen=True)
class Cancel:
    id: int


@dataclass(frozen=True)
class Credit:
    id: int
    bytes: int


@dataclass(frozen=True)
class Ping:
    value: int


@dataclass(frozen=True)
class Pong:
    value: int


@dataclass(frozen=True)
class GoAway:
    last_id: int
    code: int
    reason: str


Frame = Union[CallOpen, Data, End, Ack, Reject, Cancel, Credit, Ping, Pong, GoAway]


def _frame(kind: Kind, flags: int, id: int, payload: Union[bytes, bytearray]) -> bytes:
    return struct.pack(">IBBI", len(payload), int(kind), flags, id) + bytes(payload)


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame``, header included."""
    if isinstance(frame, CallOpen):
        flags = 0
        out = bytearray()
        put_varint(out, frame.index)
        if frame.end:
            flags |= Flag.END
        if frame.oneway:
            flags |= Flag.ONEWAY
        if frame.name is not None:
            flags |= Flag.OP_NEW
            if len(frame.name.encode("utf-8")) > MAX_OP_NAME:
                raise ValueError(f"operation name longer than {MAX_OP_NAME} bytes: {frame.name!r}")
            _put_str(out, frame.name)
        if frame.deadline_us is not None:
            flags |= Flag.DEADLINE
            put_varint(out, min(frame.deadline_us, U64_MAX))
        if frame.metadata:
            flags |= Flag.METADATA
            if len(frame.metadata) > MAX_METADATA_PAIRS:
                raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs")
            put_varint(out, len(frame.metadata))
            for key, value in frame.metadata:
                if len(key.encode("utf-8")) > MAX_OP_NAME:
                    raise ValueError(f"metadata key longer than {MAX_OP_NAME} bytes")
                _put_str(out, key)
                _put_bytes(out, value)
        if frame.session is not None:
            flags |= Flag.SESSION
            put_varint(out, frame.session)
        out += frame.body
        return _frame(Kind.CALL_OPEN, flags, frame.id, out)
    if isinstance(frame, Data):
        return _frame(Kind.DATA, 0, frame.id, frame.body)
    if isinstance(frame, End):
        return _frame(Kind.END, 0, frame.id, b"")
    if isinstance(frame, Ack):
        return _frame(Kind.ACK, 0, frame.id, frame.body)
    if isinstance(frame, Reject):
        out = bytearray()
        put_varint(out, frame.code)
        _put_str(out, frame.message)
        out += frame.details
        return _frame(Kind.REJECT, SYSTEM if frame.system else 0, frame.id, out)
    if isinstance(frame, Cancel):
        return _frame(Kind.CANCEL, 0, frame.id, b"")
    if isinstance(frame, Credit):
        out = bytearray()
        put_varint(out, frame.bytes)
        return _frame(Kind.CREDIT, 0, frame.id, out)
    if isinstance(frame, Ping):
        return _frame(Kind.PING, 0, 0, struct.pack(">Q", frame.value))
    if isinstance(frame, Pong):
        return _frame(Kind.PONG, 0, 0, struct.pack(">Q", frame.value))
    if isinstance(frame, GoAway):
        out = bytearray(struct.pack(">I", frame.last_id))
        put_varint(out, frame.code)
        out += frame.reason.encode("utf-8")
        return _frame(Kind.GOAWAY, 0, 0, out)
    raise TypeError(f"not a frame: {frame!r}")


def frame_length(buf: Union[bytes, bytearray], max_frame: int) -> Optional[int]:
    """The whole length of the frame starting ``buf`` once its header is in, or
    ``None`` before; a payload above ``max_frame`` is an error from the header alone."""
    if len(buf) < HEADER_LEN:
        return None
    (length,) = struct.unpack_from(">I", buf, 0)
    if length > max_frame:
        raise WireError("FrameTooLarge", f"frame of {length} bytes exceeds the limit of {max_frame} bytes")
    return HEADER_LEN + int(length)


def decode(buf: Union[bytes, bytearray], max_frame: int) -> Optional[tuple[Frame, int]]:
    """The frame at the start of ``buf`` and its length, or ``None`` for more bytes."""
    total = frame_length(buf, max_frame)
    if total is None or len(buf) < total:
        return None
    _, kind_byte, flags, id = struct.unpack_from(">IBBI", buf, 0)
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise WireError("UnknownKind", f"unknown frame kind {kind_byte}") from None
    payload = bytes(buf[HEADER_LEN:total])
    return _parse(kind, flags, id, payload), total


def _parse(kind: Kind, flags: int, id: int, p: bytes) -> Frame:
    end = len(p)
    if kind == Kind.CALL_OPEN:
        index, at = get_varint_u32(p, 0, end, "operation index")
        name = None
        if flags & Flag.OP_NEW:
            name, at = _get_str(p, at, end, "operation name", MAX_OP_NAME)
        deadline = None
        if flags & Flag.DEADLINE:
            deadline, at = get_varint(p, at, end, "deadline")
        metadata: list[tuple[str, bytes]] = []
        if flags & Flag.METADATA:
            count, at = get_varint(p, at, end, "metadata count")
            if count > MAX_METADATA_PAIRS:
                raise WireError("TooManyMetadata", f"{count} metadata pairs exceed the limit of {MAX_METADATA_PAIRS}")
            for _ in range(count):
                key, at = _get_str(p, at, end, "metadata key", MAX_OP_NAME)
                value, at = _get_bytes(p, at, end, "metadata value")
                metadata.append((key, value))
        session = None
        if flags & Flag.SESSION:
            session, at = get_varint_u32(p, at, end, "session id")
        return CallOpen(
            id=id,
            index=index,
            name=name,
            deadline_us=deadline,
            metadata=metadata,
            session=session,
            end=bool(flags & Flag.END),
            oneway=bool(flags & Flag.ONEWAY),
            body=p[at:],
        )
    if kind == Kind.DATA:
        return Data(id, p)
    if kind in (Kind.END, Kind.CANCEL):
        if p:
            raise WireError("TrailingBytes", f"{kind.name.title()} frame carries unexpected payload bytes")
        return End(id) if kind == Kind.END else Cancel(id)
    if kind == Kind.ACK:
        return Ack(id, p)
    if kind == Kind.REJECT:
        code, at = get_varint_u32(p, 0, end, "reject code")
        message, at = _get_str(p, at, end, "reject message")
        return Reject(id, code, message, p[at:], bool(flags & SYSTEM))
    if kind == Kind.CREDIT:
        amount, at = get_varint_u32(p, 0, end, "credit")
        if at != end:
            raise WireError("TrailingBytes", "Credit frame carries unexpected payload bytes")
        return Credit(id, amount)
    if kind in (Kind.PING, Kind.PONG):
        if len(p) != 8:
            raise WireError("WrongLength", f"{kind.name.lower()} payload is {len(p)} bytes; it must be exactly 8")
        (value,) = struct.unpack(">Q", p)
        return Ping(value) if kind == Kind.PING else Pong(value)
    # GOAWAY
    if len(p) < 4:
        raise _truncated("goaway last id")
    (last_id,) = struct.unpack_from(">I", p, 0)
    code, at = get_varint_u32(p, 4, end, "goaway code")
    try:
        reason = p[at:].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("InvalidUtf8", "goaway reason is not valid UTF-8") from None
    return GoAway(last_id, code, reason)
