"""The wire codec against docs/PROTOCOL.md: its examples byte for byte, and
every malformed field it names as an error."""

from __future__ import annotations

import random

import pytest

from plexus import wire


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_varints_encode_shortest_and_decode_non_minimal_forms() -> None:
    for value, encoded in [(0, "00"), (127, "7f"), (128, "80 01"), (300, "ac 02"), (30_000_000, "80 87 a7 0e")]:
        out = bytearray()
        wire.put_varint(out, value)
        assert bytes(out) == hexbytes(encoded)
        assert wire.get_varint(out, 0, len(out), "v") == (value, len(out))
    assert wire.get_varint(b"\x80\x00", 0, 2, "v") == (0, 2)
    out = bytearray()
    wire.put_varint(out, wire.U64_MAX)
    assert len(out) == 10 and wire.get_varint(out, 0, 10, "v")[0] == wire.U64_MAX
    with pytest.raises(wire.WireError):
        wire.get_varint(b"\xff" * 9 + b"\x02", 0, 10, "v")  # tenth byte above 1
    with pytest.raises(wire.WireError):
        wire.get_varint(b"\x80" * 11, 0, 11, "v")
    with pytest.raises(wire.WireError):
        wire.get_varint(b"\x80", 0, 1, "v")  # truncated
    with pytest.raises(wire.WireError):
        wire.get_varint_u32(b"\x80\x80\x80\x80\x10", 0, 5, "v")  # 2**32


def test_protocol_document_examples_are_byte_exact() -> None:
    hello = wire.Hello(node_id=0x000102030405060708090A0B0C0D0E0F, max_frame=16 << 20, window=256 << 10)
    assert hello.encode() == hexbytes(
        """50 4c 58 53  00 02  00 00
        00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
        01 00 00 00  00 04 00 00  00 00 01 00  00 00  00 00 00 00"""
    )
    assert wire.Hello.decode(hello.encode()) == (hello, 42)

    first = wire.CallOpen(id=1, index=0, name="demo.Echo/echo", deadline_us=30_000_000, body=b"hi")
    first_bytes = hexbytes(
        """00 00 00 16  01  0d  00 00 00 01
        00
        0e 64 65 6d 6f 2e 45 63 68 6f 2f 65 63 68 6f
        80 87 a7 0e
        68 69"""
    )
    assert wire.encode(first) == first_bytes
    assert wire.decode(first_bytes, 1 << 20) == (first, len(first_bytes))

    second = wire.CallOpen(id=3, index=0, deadline_us=30_000_000, body=b"yo")
    assert wire.encode(second) == hexbytes("00 00 00 07  01  09  00 00 00 03  00  80 87 a7 0e  79 6f")

    assert wire.encode(wire.Ack(1, b"hi")) == hexbytes("00 00 00 02  04  00  00 00 00 01  68 69")

    reject = wire.Reject(5, 1, "no handler for `demo.Echo/nope`", b"", system=True)
    reject_bytes = hexbytes(
        """00 00 00 21  05  01  00 00 00 05
        01
        1f 6e 6f 20 68 61 6e 64 6c 65 72 20 66 6f 72 20
        60 64 65 6d 6f 2e 45 63 68 6f 2f 6e 6f 70 65 60"""
    )
    assert wire.encode(reject) == reject_bytes
    assert wire.decode(reject_bytes, 1 << 20) == (reject, len(reject_bytes))


FRAMES: list[wire.Frame] = [
    wire.CallOpen(id=7, index=3, name="a.B/c", deadline_us=5, metadata=[("k", b"v"), ("k", b"")], session=9, end=False),
    wire.CallOpen(id=0, index=1, oneway=True, body=b"\x00" * 40),
    wire.Data(2, b"payload"),
    wire.End(3),
    wire.Ack(4, b""),
    wire.Reject(5, 400, "nope", b"\x01\x02"),
    wire.Cancel(6),
    wire.Credit(7, 1 << 20),
    wire.Ping(1),
    wire.Pong(wire.U64_MAX),
    wire.GoAway(11, 7, "protocol error: bad"),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_round_trips(frame: wire.Frame) -> None:
    encoded = wire.encode(frame)
    assert wire.decode(encoded, 1 << 20) == (frame, len(encoded))
    # Byte by byte, the decoder waits and never errs on a prefix.
    for cut in range(len(encoded)):
        assert wire.decode(encoded[:cut], 1 << 20) is None


def test_handshake_answers_round_trip() -> None:
    welcome = wire.Welcome(node_id=5, max_frame=1024, window=10, data=b"hey", extensions=[wire.Extension(0x7F00, b"x")])
    assert wire.decode_answer(welcome.encode()) == (welcome, 41 + 5 + 3)
    refusal = wire.Refusal(wire.RefusalCode.REJECTED, "bad token")
    assert wire.decode_answer(refusal.encode()) == (refusal, 11 + 9)
    unknown = wire.MAGIC + b"\x00\x02\x01\x00\x63\x00\x00"
    assert wire.decode_answer(unknown) == (wire.Refusal(wire.RefusalCode.OTHER, ""), 11)
    lenient = wire.MAGIC + b"\x00\x02\x01\x00\x03\x00\x01\xff"
    answer = wire.decode_answer(lenient)
    assert answer is not None and answer[0].reason == "\ufffd"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw, kind",
    [
        (b"\x00\x00\x00\x00\xc8\x00\x00\x00\x00\x01", "UnknownKind"),
        (b"\x00\x00\x00\x01\x03\x00\x00\x00\x00\x01\x00", "TrailingBytes"),
        (b"\x00\x00\x00\x01\x06\x00\x00\x00\x00\x01\x00", "TrailingBytes"),
        (b"\x00\x00\x00\x02\x07\x00\x00\x00\x00\x01\x01\x00", "TrailingBytes"),
        (b"\x00\x00\x00\x07\x08\x00\x00\x00\x00\x00" + b"\x00" * 7, "WrongLength"),
        (b"\x00\x00\x00\x03\x0a\x00\x00\x00\x00\x00\x00\x00\x00", "Truncated"),
        (b"\x00\x00\x00\x06\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff", "InvalidUtf8"),
        (b"\x00\x00\x00\x03\x01\x04\x00\x00\x00\x01\x00\x32\x78", "Truncated"),
        (b"\x00\x00\x00\x04\x01\x04\x00\x00\x00\x01\x00\x81\x08\x78", "TooLong"),
        (b"\x00\x00\x00\x03\x01\x10\x00\x00\x00\x01\x00\x41\x00", "TooManyMetadata"),
        (b"\x00\x00\x00\x03\x05\x00\x00\x00\x00\x01\x01\x01\xff", "InvalidUtf8"),
        (b"\x00\x00\x00\x05\x07\x00\x00\x00\x00\x01\x80\x80\x80\x80\x10", "VarintOverflow"),
    ],
)
def test_malformed_frames_are_errors(raw: bytes, kind: str) -> None:
    with pytest.raises(wire.WireError) as refused:
        wire.decode(raw, 1 << 20)
    assert refused.value.kind == kind, str(refused.value)


def test_a_frame_above_the_limit_is_refused_from_its_header_alone() -> None:
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode(b"\x00\x10\x00\x00\x02\x00\x00\x00\x00\x01", 64 * 1024)


def test_bad_handshakes_are_errors() -> None:
    with pytest.raises(wire.WireError, match="magic"):
        wire.decode_answer(b"HTTP/1.1 400")
    with pytest.raises(wire.WireError, match="status"):
        wire.decode_answer(wire.MAGIC + b"\x00\x02\x07")
    fixed = wire.Welcome(1, 1 << 20, 1).encode()
    too_long = fixed[:37] + b"\x00\x01\x00\x01"
    with pytest.raises(wire.WireError, match="exceeds") as raised:
        wire.decode_answer(too_long)
    assert raised.value.kind == "HandshakeDataTooLarge"
    with pytest.raises(wire.WireError, match="below"):
        wire.decode_answer(wire.Welcome(1, 1023, 1).encode())
    with pytest.raises(wire.WireError) as raised:
        wire.decode_answer(wire.Welcome(1, 1024, 1, max_calls=0).encode())
    assert raised.value.kind == "NoCallsAllowed"
    with pytest.raises(wire.WireError) as raised:
        wire.decode_answer(wire.Welcome(1, 1024, 1, version=1).encode())
    assert raised.value.kind == "UnsupportedVersion"


def test_random_bytes_never_crash_the_decoders() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        for decoder in (lambda b: wire.decode(b, 1 << 16), wire.decode_answer, wire.Hello.decode):
            try:
                decoder(raw)
            except wire.WireError:
                pass
