"""The client's side of PROTOCOL.md against a scripted peer: handshakes and
refusals, interning, deadlines, cancellation, keepalive, GoAway, flow
control, violations, calls from the peer, and sessions."""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

import pytest

import plexus
from conftest import run
from plexus import key, wire


class FakePeer:
    """A listener that speaks frames by hand, one connection at a time."""

    def __init__(
        self,
        answer: Optional[bytes] = None,
        window: int = 1 << 20,
        max_frame: int = 1 << 20,
        max_calls: int = 256,
        answer_for: Optional[Callable[[wire.Hello], bytes]] = None,
        proof_len: int = 0,
    ) -> None:
        self.answer = answer
        #: Makes the answer from the Hello (for key proofs); overrides ``answer``.
        self.answer_for = answer_for
        #: Bytes the dialer sends before its first frame (its key proof).
        self.proof_len = proof_len
        self.proof: Optional[bytes] = None
        self.window = window
        self.max_frame = max_frame
        self.max_calls = max_calls
        self.hello: Optional[wire.Hello] = None
        self.frames: asyncio.Queue[wire.Frame] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self._writer: Optional[asyncio.StreamWriter] = None
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        buf = bytearray()
        while True:
            decoded = wire.Hello.decode(buf)
            if decoded is not None:
                self.hello, used = decoded
                del buf[:used]
                break
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
        if self.answer_for is not None:
            writer.write(self.answer_for(self.hello))
        elif self.answer is None:
            writer.write(wire.Welcome(0xABCD << 100, self.max_frame, self.window, self.max_calls, b"welcome").encode())
        elif self.answer:
            writer.write(self.answer)
        self.connected.set()
        try:
            while len(buf) < self.proof_len:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
            if self.proof_len:
                self.proof = bytes(buf[: self.proof_len])
                del buf[: self.proof_len]
            while True:
                while (decoded_frame := wire.decode(buf, 1 << 24)) is not None:
                    frame, used = decoded_frame
                    del buf[:used]
                    await self.frames.put(frame)
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionError, wire.WireError):
            pass
        finally:
            self.closed.set()

    def send(self, *frames: wire.Frame) -> None:
        assert self._writer is not None
        for frame in frames:
            self._writer.write(wire.encode(frame))

    def send_raw(self, raw: bytes) -> None:
        assert self._writer is not None
        self._writer.write(raw)

    def hang_up(self) -> None:
        assert self._writer is not None
        self._writer.close()

    async def next(self, kind: type, timeout: float = 5.0) -> wire.Frame:
        """The next frame of ``kind``, skipping pings and pongs."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if isinstance(frame, kind):
                return frame
            if not isinstance(frame, (wire.Ping, wire.Pong)):
                raise AssertionError(f"expected {kind.__name__}, got {frame}")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()


def quiet(**changes: object) -> plexus.Config:
    """A config without keepalive, so tests see only their own frames."""
    config = plexus.Config(keepalive_interval=None)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# -- handshake ------------------------------------------------------------------


def test_hello_carries_data_and_the_welcome_answers_with_its_own() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, b"token-ok", config=quiet(window=4096, max_frame=2048))
        assert peer.hello is not None
        assert (peer.hello.data, peer.hello.window, peer.hello.max_frame) == (b"token-ok", 4096, 2048)
        assert peer.hello.version == 2 and peer.hello.node_id == conn.node_id
        assert peer.hello.max_calls == 256 and peer.hello.extensions == []
        assert conn.peer_data == b"welcome"
        assert conn.peer.startswith("node 000abcd0 at tcp://127.0.0.1:")
        await conn.abort()
        await peer.stop()

    run(scenario())


@pytest.mark.parametrize(
    "answer, error, text",
    [
        (wire.Refusal(wire.RefusalCode.REJECTED, "bad token").encode(), plexus.Refused, "bad token"),
        (wire.Refusal(wire.RefusalCode.VERSION_MISMATCH, "v7 only", version=7).encode(), plexus.VersionMismatch, "v7"),
        (wire.Refusal(wire.RefusalCode.SHUTTING_DOWN, "bye").encode(), plexus.Refused, "SHUTTING_DOWN"),
        (wire.Welcome(1, 1 << 20, 1 << 20, version=3).encode(), plexus.VersionMismatch, "v3"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", plexus.HandshakeError, "not a Plexus handshake"),
        (wire.MAGIC + b"\x00\x01\x09", plexus.HandshakeError, "status"),
    ],
)
def test_refusals_and_bad_answers_raise_typed_errors(answer: bytes, error: type, text: str) -> None:
    async def scenario() -> None:
        peer = FakePeer(answer=answer)
        url = await peer.start()
        with pytest.raises(error, match=text):
            await plexus.connect(url, config=quiet())
        await peer.stop()

    run(scenario())


def test_a_refusal_carries_its_code_and_reason() -> None:
    async def scenario() -> None:
        peer = FakePeer(answer=wire.Refusal(wire.RefusalCode.REJECTED, "bad token").encode())
        url = await peer.start()
        with pytest.raises(plexus.Refused) as refused:
            await plexus.connect(url, b"nope", config=quiet())
        assert (refused.value.code, refused.value.reason) == (wire.RefusalCode.REJECTED, "bad token")
        await peer.stop()

    run(scenario())


@pytest.mark.parametrize(
    "code, error",
    [
        (wire.RefusalCode.REJECTED, plexus.Refused),
        (wire.RefusalCode.TOO_MANY_CONNECTIONS, plexus.TooManyConnections),
        (wire.RefusalCode.MALFORMED, plexus.Refused),
        (wire.RefusalCode.SHUTTING_DOWN, plexus.ShuttingDown),
        (wire.RefusalCode.KEY_REQUIRED, plexus.KeyRequired),
        (wire.RefusalCode.KEY_MISMATCH, plexus.KeyMismatch),
        (wire.RefusalCode.NOT_ALLOWED, plexus.NotAllowed),
    ],
)
def test_every_refusal_code_has_its_name_and_type(code: wire.RefusalCode, error: type) -> None:
    async def scenario() -> None:
        peer = FakePeer(answer=wire.Refusal(code, "because").encode())
        url = await peer.start()
        with pytest.raises(error) as refused:
            await plexus.connect(url, config=quiet())
        assert type(refused.value) is error
        assert (refused.value.code, refused.value.reason) == (code, "because")
        assert code.name in str(refused.value)
        await peer.stop()

    run(scenario())


def test_an_unknown_refusal_code_is_other() -> None:
    raw = wire.MAGIC + b"\x00\x02\x01\x00\x63\x00\x00"  # code 99, no reason
    assert wire.decode_answer(raw) == (wire.Refusal(wire.RefusalCode.OTHER, ""), len(raw))
    assert wire.SystemCode.of(99) is wire.SystemCode.UNKNOWN
    assert wire.SystemCode.of(11) is wire.SystemCode.PERMISSION_DENIED


def test_a_welcome_with_our_own_node_id_is_a_self_connect() -> None:
    async def scenario() -> None:
        me = 0x1234 << 64
        peer = FakePeer(answer=wire.Welcome(me, 1 << 20, 1 << 20).encode())
        url = await peer.start()
        with pytest.raises(plexus.SelfConnect):
            await plexus.connect(url, config=quiet(), node_id=me)
        await peer.stop()

    run(scenario())


def test_a_silent_listener_times_the_handshake_out() -> None:
    async def scenario() -> None:
        peer = FakePeer(answer=b"")
        url = await peer.start()
        with pytest.raises(plexus.HandshakeError, match="no handshake answer"):
            await plexus.connect(url, config=quiet(handshake_timeout=0.3))
        await peer.stop()

    run(scenario())


def test_bytes_right_after_the_welcome_are_frames() -> None:
    async def scenario() -> None:
        welcome = wire.Welcome(9, 1 << 20, 1 << 20).encode()
        peer = FakePeer(answer=welcome + wire.encode(wire.Ping(42)))
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        assert await peer.next(wire.Pong) == wire.Pong(42)
        await conn.abort()
        await peer.stop()

    run(scenario())


# -- session keys (§3.6) ------------------------------------------------------------

SECRET = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
LISTENER = 0x5EED << 100


def keyed_welcome(
    listener_key: Optional[str] = SECRET,
    *,
    proof: Optional[bytes] = None,
    value: Optional[bytes] = None,
    sent: Optional[list[key.WelcomeKey]] = None,
) -> Callable[[wire.Hello], bytes]:
    """A listener answering the Hello's key extension as §3.6 says (or with
    a forged ``proof``, or a raw extension ``value``); what it answered is
    appended to ``sent``."""

    def answer(hello: wire.Hello) -> bytes:
        extensions = []
        if value is not None:
            extensions = [wire.Extension(key.KEY_EXTENSION, value)]
        elif listener_key is not None:
            hello_key = key.HelloKey.find(hello.extensions)
            assert hello_key is not None, "the client sent no key extension"
            ours = key.WelcomeKey.answer(key.SessionKey.from_hex(listener_key), hello_key, hello.node_id, LISTENER)
            if proof is not None:
                ours = key.WelcomeKey(ours.key_id, ours.nonce, proof)
            if sent is not None:
                sent.append(ours)
            extensions = [ours.extension()]
        return wire.Welcome(LISTENER, 1 << 20, 1 << 20, extensions=extensions).encode()

    return answer


def test_a_keyed_client_proves_its_key_before_any_frame() -> None:
    async def scenario() -> None:
        sent: list[key.WelcomeKey] = []
        peer = FakePeer(answer_for=keyed_welcome(sent=sent), proof_len=key.PROOF_MESSAGE_LEN)
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(), key=SECRET)
        assert peer.hello is not None
        secret = key.SessionKey.from_hex(SECRET)
        hello_key = key.HelloKey.find(peer.hello.extensions)
        assert hello_key is not None and hello_key.key_id == secret.id()
        call = asyncio.ensure_future(conn.call("a.B/c", b"x"))
        # The proof came before the first frame: the dialer's tag over both
        # node ids and both nonces.
        opened = await peer.next(wire.CallOpen)
        [welcome_key] = sent
        assert peer.proof == welcome_key.dialer_proof(secret, hello_key, conn.node_id, LISTENER)
        assert peer.proof[:7] == wire.MAGIC + b"\x00\x02\x02"
        peer.send(wire.Ack(opened.id, b"ok"))  # type: ignore[union-attr]
        assert await call == b"ok"
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_fresh_nonce_every_handshake() -> None:
    async def scenario() -> None:
        nonces = []
        for _ in range(2):
            peer = FakePeer(answer_for=keyed_welcome(), proof_len=key.PROOF_MESSAGE_LEN)
            url = await peer.start()
            conn = await plexus.connect(url, config=quiet(), key=SECRET)
            assert peer.hello is not None
            found = key.HelloKey.find(peer.hello.extensions)
            assert found is not None
            nonces.append(found.nonce)
            await conn.abort()
            await peer.stop()
        assert nonces[0] != nonces[1]

    run(scenario())


@pytest.mark.parametrize(
    "answer, text",
    [
        (keyed_welcome(None), "proved no session key"),
        (keyed_welcome("ff" * 32), "another session key"),
        (keyed_welcome(proof=bytes(32)), "proof of the session key is wrong"),
        (keyed_welcome(value=b"short"), "malformed"),
    ],
    ids=["keyless-welcome", "another-key", "forged-proof", "malformed-extension"],
)
def test_a_keyed_client_never_trusts_a_listener_that_does_not_prove_the_key(
    answer: Callable[[wire.Hello], bytes], text: str
) -> None:
    async def scenario() -> None:
        peer = FakePeer(answer_for=answer, proof_len=1)
        url = await peer.start()
        with pytest.raises(plexus.Untrusted, match=text):
            await plexus.connect(url, config=quiet(), key=SECRET)
        # Nothing was sent after the Hello: no proof, no frame.
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert peer.proof is None and peer.frames.empty()
        await peer.stop()

    run(scenario())


def test_a_keyless_client_ignores_a_listeners_key_extension() -> None:
    async def scenario() -> None:
        extension = wire.Extension(key.KEY_EXTENSION, bytes(72))
        peer = FakePeer(answer=wire.Welcome(LISTENER, 1 << 20, 1 << 20, extensions=[extension]).encode())
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        assert peer.hello is not None and peer.hello.extensions == []
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_keys_are_read_as_the_rust_runtime_reads_them() -> None:
    secret = key.SessionKey.from_hex(f"  {SECRET.upper()}\n")
    assert secret == key.SessionKey(bytes.fromhex(SECRET)) == key.SessionKey.of(bytes.fromhex(SECRET))
    assert secret.to_hex() == SECRET and len(secret) == 32
    assert repr(secret) == "SessionKey(32 bytes)" and SECRET not in repr(secret)
    with pytest.raises(plexus.KeyFormatError, match="even number of digits, not 3"):
        key.SessionKey.from_hex("abc")
    with pytest.raises(plexus.KeyFormatError, match="character 30 of the session key is not a hex digit"):
        key.SessionKey.from_hex("00112233445566778899aabbccddeexz")
    with pytest.raises(plexus.KeyFormatError, match="3 bytes is too short"):
        key.SessionKey.from_hex("c0ffee")
    with pytest.raises(plexus.KeyFormatError, match="empty"):
        key.SessionKey(b"")
    with pytest.raises(TypeError):
        key.SessionKey.of(42)  # type: ignore[arg-type]
    # Raw bytes may be any length, as SessionKey::new takes them.
    assert len(key.SessionKey.of(b"k")) == 1


def test_a_bad_key_is_refused_before_dialing() -> None:
    async def scenario() -> None:
        with pytest.raises(plexus.KeyFormatError):
            await plexus.connect("tcp://127.0.0.1:9", key="not hex")

    run(scenario())


# -- calls ------------------------------------------------------------------------


def test_calls_use_odd_ids_and_intern_operation_names() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        first = asyncio.ensure_future(conn.call("demo.Echo/echo", b"hi", timeout=30, metadata=[("trace", b"1")]))
        opened = await peer.next(wire.CallOpen)
        assert opened == wire.CallOpen(
            id=1, index=0, name="demo.Echo/echo", deadline_us=30_000_000, metadata=[("trace", b"1")], body=b"hi"
        )
        second = asyncio.ensure_future(conn.call("demo.Echo/echo", b"yo", timeout=None))
        assert await peer.next(wire.CallOpen) == wire.CallOpen(id=3, index=0, body=b"yo")
        third = asyncio.ensure_future(conn.call("demo.Echo/other", b""))
        other = await peer.next(wire.CallOpen)
        assert isinstance(other, wire.CallOpen) and (other.id, other.index, other.name) == (5, 1, "demo.Echo/other")
        peer.send(
            wire.Ack(3, b"yo"),
            wire.Ack(1, b"hi"),
            wire.Reject(5, 0xFFFF_0001, "custom", b"\x07", system=False),
        )
        assert await second == b"yo" and await first == b"hi"
        with pytest.raises(plexus.Rejected) as rejected:
            await third
        assert (rejected.value.code, rejected.value.message, rejected.value.details) == (0xFFFF_0001, "custom", b"\x07")
        await conn.oneway("demo.Echo/echo", b"fire")
        assert await peer.next(wire.CallOpen) == wire.CallOpen(id=0, index=0, oneway=True, body=b"fire")
        # Too large for the peer: refused here, and the name is not interned.
        with pytest.raises(plexus.MessageTooLarge):
            await conn.call("demo.Echo/big", b"x" * (2 << 20))
        asyncio.ensure_future(conn.call("demo.Echo/small", b""))
        small = await peer.next(wire.CallOpen)
        assert isinstance(small, wire.CallOpen) and (small.index, small.name) == (2, "demo.Echo/small")
        await conn.abort()
        await peer.stop()

    run(scenario())


@pytest.mark.parametrize(
    "code, error",
    [
        (1, plexus.NoSuchOperation),
        (2, plexus.HandlerFailed),
        (3, plexus.DeadlineExceeded),
        (4, plexus.Cancelled),
        (5, plexus.InvalidPayload),
        (6, plexus.GoingAway),
        (7, plexus.ProtocolViolation),
        (8, plexus.TooLarge),
        (9, plexus.SessionClosed),
        (10, plexus.Overloaded),
        (11, plexus.PermissionDenied),
        (77, plexus.HandlerFailed),
    ],
)
def test_system_rejects_map_to_their_exceptions(code: int, error: type) -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        call = asyncio.ensure_future(conn.call("a.B/c"))
        opened = await peer.next(wire.CallOpen)
        peer.send(wire.Reject(opened.id, code, f"system {code}", b"", system=True))  # type: ignore[union-attr]
        with pytest.raises(error):
            await call
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_local_timeout_and_a_cancelled_task_send_cancel() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        with pytest.raises(plexus.Timeout):
            await conn.call("a.B/slow", b"", timeout=0.1)
        opened = await peer.next(wire.CallOpen)
        assert isinstance(opened, wire.CallOpen) and opened.deadline_us == 100_000
        assert await peer.next(wire.Cancel) == wire.Cancel(opened.id)

        task = asyncio.ensure_future(conn.call("a.B/slow", b""))
        opened = await peer.next(wire.CallOpen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await peer.next(wire.Cancel) == wire.Cancel(opened.id)  # type: ignore[union-attr]
        # A late answer to a cancelled call is ignored; the connection goes on.
        peer.send(wire.Ack(opened.id, b"late"))  # type: ignore[union-attr]
        call = asyncio.ensure_future(conn.call("a.B/slow", b""))
        opened = await peer.next(wire.CallOpen)
        peer.send(wire.Ack(opened.id, b"ok"))  # type: ignore[union-attr]
        assert await call == b"ok"
        await conn.abort()
        await peer.stop()

    run(scenario())


# -- liveness and the end ----------------------------------------------------------


def test_pings_are_answered_and_a_frozen_peer_is_declared_lost() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=plexus.Config(keepalive_interval=0.1, keepalive_timeout=0.4))
        peer.send(wire.Ping(7))
        assert await asyncio.wait_for(_first(peer, wire.Pong), 5) == wire.Pong(7)
        # Silence makes the client ping on its own.
        assert isinstance(await asyncio.wait_for(_first(peer, wire.Ping), 5), wire.Ping)
        call = asyncio.ensure_future(conn.call("a.B/c", b"", timeout=None))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(plexus.ConnectionLost, match="nothing heard"):
            await call
        assert loop.time() - started < 0.4 + 0.1 + 1.0
        assert conn.is_closed and "nothing heard" in (conn.close_reason or "")
        await peer.stop()

    run(scenario())


async def _first(peer: FakePeer, kind: type) -> wire.Frame:
    while True:
        frame = await peer.frames.get()
        if isinstance(frame, kind):
            return frame


def test_goaway_tells_which_calls_never_ran() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        taken = asyncio.ensure_future(conn.call("a.B/c", b"", timeout=None))
        await peer.next(wire.CallOpen)
        not_taken = asyncio.ensure_future(conn.call("a.B/c", b"", timeout=None))
        await peer.next(wire.CallOpen)
        peer.send(wire.GoAway(1, 0, "closing"))
        await asyncio.sleep(0.05)
        with pytest.raises(plexus.Closing):
            await conn.call("a.B/c", b"")  # draining: not sent at all
        peer.hang_up()
        with pytest.raises(plexus.ConnectionLost):
            await taken
        with pytest.raises(plexus.Closing, match="safe to retry"):
            await not_taken
        await peer.stop()

    run(scenario())


def test_a_graceful_close_sends_goaway_and_waits_for_calls_in_flight() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        call = asyncio.ensure_future(conn.call("a.B/c", b""))
        opened = await peer.next(wire.CallOpen)
        closing = asyncio.ensure_future(conn.close())
        assert await peer.next(wire.GoAway) == wire.GoAway(0, 0, "closing")
        assert not closing.done()
        peer.send(wire.Ack(opened.id, b"done"))  # type: ignore[union-attr]
        assert await call == b"done"
        await asyncio.wait_for(closing, 5)
        await asyncio.wait_for(peer.closed.wait(), 5)
        await peer.stop()

    run(scenario())


def test_callers_keep_within_the_peers_max_calls() -> None:
    async def scenario() -> None:
        peer = FakePeer(max_calls=2)
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        assert conn.peer_max_calls == 2
        calls = [asyncio.ensure_future(conn.call("a.B/c", bytes([i]))) for i in range(3)]
        first = await peer.next(wire.CallOpen)
        await peer.next(wire.CallOpen)
        await asyncio.sleep(0.1)
        assert peer.frames.empty(), "the third call waits for a free place"
        peer.send(wire.Ack(first.id, b""))  # type: ignore[union-attr]
        third = await peer.next(wire.CallOpen)
        assert isinstance(third, wire.CallOpen) and third.body == b"\x02"
        # Waiting counts against the call's timeout.
        with pytest.raises(plexus.Timeout, match="free call place"):
            await conn.call("a.B/c", b"", timeout=0.1)
        peer.send(wire.Reject(third.id, 10, "2 calls already served", b"", system=True))
        with pytest.raises(plexus.Overloaded):
            await calls[2]
        await conn.abort()
        assert await calls[0] == b""
        with pytest.raises(plexus.ConnectionLost):
            await calls[1]
        await peer.stop()

    run(scenario())


def test_calls_beyond_this_sides_max_calls_are_refused_as_overloaded() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def hold(body: bytes, ctx: plexus.CallContext) -> bytes:
            await release.wait()
            return body

        peer = FakePeer()
        url = await peer.start()
        handlers = plexus.Handlers(unary={"py.Hold/hold": hold})
        conn = await plexus.connect(url, config=quiet(max_calls=1), handlers=handlers)
        await peer.connected.wait()
        assert peer.hello is not None and peer.hello.max_calls == 1
        peer.send(wire.CallOpen(id=2, index=0, name="py.Hold/hold", body=b"a"), wire.CallOpen(id=4, index=0, body=b"b"))
        refused = await peer.next(wire.Reject)
        assert isinstance(refused, wire.Reject) and (refused.id, refused.code) == (4, wire.SystemCode.RESOURCE_EXHAUSTED)
        release.set()
        assert await peer.next(wire.Ack) == wire.Ack(2, b"a")
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_cut_off_names_the_peers_reason() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        await peer.connected.wait()
        peer.send(wire.GoAway(0, 10, "read nothing"))
        peer.hang_up()
        assert "cut off by the peer: read nothing" in await asyncio.wait_for(conn.wait_closed(), 5)
        await peer.stop()

    run(scenario())


@pytest.mark.parametrize(
    "code, error, text",
    [
        (wire.SystemCode.RESOURCE_EXHAUSTED, plexus.CutOff, "cut off by the peer: slow"),
        (wire.SystemCode.PERMISSION_DENIED, plexus.AccessRevoked, "access revoked by the peer: slow"),
        (wire.SystemCode.PROTOCOL, plexus.ConnectionLost, "protocol error reported by the peer: slow"),
        (77, plexus.ConnectionLost, "system code 77 \\(UNKNOWN\\): slow"),
    ],
)
def test_calls_in_flight_learn_the_code_of_the_peers_goaway(code: int, error: type, text: str) -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        call = asyncio.ensure_future(conn.call("a.B/c", timeout=None))
        opened = await peer.next(wire.CallOpen)
        peer.send(wire.GoAway(opened.id, code, "slow"))  # type: ignore[union-attr]
        peer.hang_up()
        with pytest.raises(error, match=text) as lost:
            await call
        assert type(lost.value) is error and lost.value.code == wire.SystemCode.of(code)
        assert conn.goaway_code == wire.SystemCode.of(code)
        await peer.stop()

    run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        wire.encode(wire.Ack(2, b"")),  # an answer for an id this side never opens
        b"\x00\x00\x00\x00\xc8\x00\x00\x00\x00\x01",  # an unknown kind
        wire.encode(wire.CallOpen(id=3, index=0, name="x.Y/z")),  # the dialer's parity
        wire.encode(wire.CallOpen(id=2, index=4)),  # an undefined index
        b"\x01\x00\x00\x01\x02\x00\x00\x00\x00\x01",  # above our max frame
    ],
    ids=["answer-wrong-parity", "unknown-kind", "open-wrong-parity", "undefined-index", "too-large"],
)
def test_a_violation_closes_with_a_protocol_goaway(raw: bytes) -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(max_frame=1 << 20))
        call = asyncio.ensure_future(conn.call("a.B/c", b"", timeout=None))
        await peer.next(wire.CallOpen)
        peer.send_raw(raw)
        goaway = await peer.next(wire.GoAway)
        assert isinstance(goaway, wire.GoAway) and goaway.code == wire.SystemCode.PROTOCOL
        with pytest.raises(plexus.ConnectionLost, match="protocol error"):
            await call
        await asyncio.wait_for(peer.closed.wait(), 5)
        await peer.stop()

    run(scenario())


# -- flow control ------------------------------------------------------------------


def test_a_client_stream_waits_for_credit() -> None:
    async def scenario() -> None:
        peer = FakePeer(window=2048)
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        stream = await conn.client_stream("a.B/upload")
        opened = await peer.next(wire.CallOpen)
        assert isinstance(opened, wire.CallOpen) and not opened.end
        await stream.send(b"a" * 1000)
        await stream.send(b"b" * 1000)
        third = asyncio.ensure_future(stream.send(b"c" * 1000))
        await peer.next(wire.Data)
        await peer.next(wire.Data)
        await asyncio.sleep(0.1)
        assert not third.done() and peer.frames.empty(), "48 bytes of credit left: the third waits"
        peer.send(wire.Credit(opened.id, 1024))
        await asyncio.wait_for(third, 5)
        assert await peer.next(wire.Data) == wire.Data(opened.id, b"c" * 1000)
        reply = asyncio.ensure_future(stream.reply())
        assert await peer.next(wire.End) == wire.End(opened.id)
        peer.send(wire.Ack(opened.id, b"3 chunks"))
        assert await reply == b"3 chunks"
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_server_stream_returns_credit_as_it_is_consumed() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(window=4096))
        stream = await conn.server_stream("a.B/list", b"")
        opened = await peer.next(wire.CallOpen)
        id = opened.id  # type: ignore[union-attr]
        peer.send(wire.Data(id, b"x" * 1000), wire.Data(id, b"y" * 1000), wire.Data(id, b"z" * 1000))
        assert await stream.__anext__() == b"x" * 1000
        assert await stream.__anext__() == b"y" * 1000
        await asyncio.sleep(0.05)
        assert peer.frames.empty(), "2000 bytes consumed: below half the window, no credit yet"
        assert await stream.__anext__() == b"z" * 1000
        assert await peer.next(wire.Credit) == wire.Credit(id, 3000)
        peer.send(wire.Ack(id, b""))
        assert await stream.collect() == []
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_sender_ignoring_flow_control_is_a_violation() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(window=2048, max_frame=1024))
        stream = await conn.server_stream("a.B/flood", b"")
        opened = await peer.next(wire.CallOpen)
        for _ in range(4):  # 4096 unconsumed bytes > window + max frame
            peer.send(wire.Data(opened.id, b"f" * 1024))  # type: ignore[union-attr]
        goaway = await peer.next(wire.GoAway)
        assert "flow-control window" in goaway.reason  # type: ignore[union-attr]
        with pytest.raises(plexus.ConnectionLost):
            await stream.collect()
        await peer.stop()

    run(scenario())


# -- the peer calls us ----------------------------------------------------------------


def test_the_peer_can_call_operations_this_client_serves() -> None:
    async def scenario() -> None:
        waved: asyncio.Queue[bytes] = asyncio.Queue()

        async def hello(body: bytes, ctx: plexus.CallContext) -> bytes:
            if not body:
                raise plexus.Rejected(ctx.op, "python", 418, "no teapot", b"t")
            return b"hello, " + body + dict(ctx.metadata).get("suffix", b"")

        async def wave(body: bytes, ctx: plexus.CallContext) -> None:
            await waved.put(body)

        async def hang(body: bytes, ctx: plexus.CallContext) -> bytes:
            await asyncio.sleep(60)
            return b""

        handlers = plexus.Handlers(
            unary={"py.Greeter/hello": hello, "py.Greeter/hang": hang}, oneway={"py.Greeter/wave": wave}
        )
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(), handlers=handlers)
        await peer.connected.wait()
        peer.send(wire.CallOpen(id=2, index=0, name="py.Greeter/hello", metadata=[("suffix", b"!")], body=b"ada"))
        assert await peer.next(wire.Ack) == wire.Ack(2, b"hello, ada!")
        peer.send(wire.CallOpen(id=4, index=0, body=b""))
        assert await peer.next(wire.Reject) == wire.Reject(4, 418, "no teapot", b"t", False)
        peer.send(wire.CallOpen(id=0, index=1, name="py.Greeter/wave", oneway=True, body=b"bob"))
        assert await asyncio.wait_for(waved.get(), 5) == b"bob"
        peer.send(wire.CallOpen(id=6, index=2, name="py.Nope/x"))
        nope = await peer.next(wire.Reject)
        assert isinstance(nope, wire.Reject) and nope.system and nope.code == wire.SystemCode.NO_SUCH_OPERATION
        peer.send(wire.CallOpen(id=8, index=3, name="py.Greeter/hang", deadline_us=50_000))
        late = await peer.next(wire.Reject)
        assert isinstance(late, wire.Reject) and late.code == wire.SystemCode.DEADLINE_EXCEEDED
        peer.send(wire.CallOpen(id=10, index=3), wire.Cancel(10), wire.Ping(1))
        assert await peer.next(wire.Pong) == wire.Pong(1)
        await asyncio.sleep(0.05)
        assert peer.frames.empty(), "a cancelled call gets no answer"
        peer.send(wire.CallOpen(id=12, index=0, end=False, body=b"x"))
        wrong_kind = await peer.next(wire.Reject)
        assert isinstance(wrong_kind, wire.Reject) and wrong_kind.code == wire.SystemCode.PROTOCOL
        peer.send(wire.CallOpen(id=14, index=0, session=99, body=b"x"))
        no_session = await peer.next(wire.Reject)
        assert isinstance(no_session, wire.Reject) and no_session.code == wire.SystemCode.SESSION_CLOSED
        await conn.abort()
        await peer.stop()

    run(scenario())


# -- sessions -------------------------------------------------------------------------


def test_sessions_open_with_data_scope_calls_and_close_from_either_side() -> None:
    async def scenario() -> None:
        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        opening = asyncio.ensure_future(conn.open_session("lab-3", b"token"))
        opened = await peer.next(wire.CallOpen)
        assert isinstance(opened, wire.CallOpen) and opened.name == "plexus.Session/open"
        assert opened.body == b"\x01\x05lab-3token"
        peer.send(wire.Ack(opened.id, b"welcome to lab-3"))
        session = await opening
        assert (session.id, session.data) == (1, b"welcome to lab-3")

        inside = asyncio.ensure_future(session.call("lab.Bench/run", b"go", timeout=None))
        call = await peer.next(wire.CallOpen)
        assert isinstance(call, wire.CallOpen) and call.session == 1
        # The peer closes the session: the call inside fails and is cancelled.
        peer.send(wire.CallOpen(id=0, index=0, name="plexus.Session/close", oneway=True, body=b"\x01bye"))
        with pytest.raises(plexus.SessionClosed, match="bye"):
            await inside
        assert await peer.next(wire.Cancel) == wire.Cancel(call.id)
        with pytest.raises(plexus.SessionClosed):
            await session.call("lab.Bench/run")

        refused = asyncio.ensure_future(conn.open_session("lab-4", b"wrong"))
        opened = await peer.next(wire.CallOpen)
        peer.send(wire.Reject(opened.id, 403, "unknown token"))  # type: ignore[union-attr]
        with pytest.raises(plexus.Rejected) as rejected:
            await refused
        assert rejected.value.code == 403

        with pytest.raises(plexus.SessionTimeout):
            await conn.open_session("lab-5", timeout=0.1)
        await peer.next(wire.CallOpen)
        await peer.next(wire.Cancel)
        close = await peer.next(wire.CallOpen)
        assert isinstance(close, wire.CallOpen) and close.oneway and close.body == b"\x05settle timeout"

        mine = asyncio.ensure_future(conn.open_session("lab-6"))
        opened = await peer.next(wire.CallOpen)
        peer.send(wire.Ack(opened.id, b""))  # type: ignore[union-attr]
        session = await mine
        await session.close("done")
        close = await peer.next(wire.CallOpen)
        assert isinstance(close, wire.CallOpen) and close.oneway and close.body == b"\x07done"
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_a_session_the_peer_opens_needs_a_hook() -> None:
    async def scenario() -> None:
        async def hook(session: plexus.Session) -> bytes:
            if session.data != b"let me in":
                raise plexus.Rejected("plexus.Session/open", "python", 403, "no")
            return b"come in, " + session.name.encode()

        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet(), handlers=plexus.Handlers(on_session=hook))
        await peer.connected.wait()
        peer.send(wire.CallOpen(id=2, index=0, name="plexus.Session/open", body=b"\x02\x03labplease"))
        assert (await peer.next(wire.Reject)).code == 403  # type: ignore[union-attr]
        peer.send(wire.CallOpen(id=4, index=0, body=b"\x04\x03latlet me in"))
        assert await peer.next(wire.Ack) == wire.Ack(4, b"come in, lat")
        peer.send(wire.CallOpen(id=6, index=0, body=b"\x03\x03oddx"))
        odd = await peer.next(wire.Reject)
        assert odd.code == wire.SystemCode.INVALID_PAYLOAD  # type: ignore[union-attr]
        await conn.abort()
        await peer.stop()

        peer = FakePeer()
        url = await peer.start()
        conn = await plexus.connect(url, config=quiet())
        await peer.connected.wait()
        peer.send(wire.CallOpen(id=2, index=0, name="plexus.Session/open", body=b"\x02\x01x"))
        assert (await peer.next(wire.Reject)).code == 0xFFFF_0001  # type: ignore[union-attr]
        await conn.abort()
        await peer.stop()

    run(scenario())


def test_urls_parse_as_the_rust_runtime_parses_them() -> None:
    assert str(plexus.parse_url("ws://127.0.0.1")) == "ws://127.0.0.1:80"
    assert str(plexus.parse_url("wss://[::1]/p?q=1")) == "wss://[::1]:443/p?q=1"
    assert plexus.parse_url("unix:///run/a.sock").path == "/run/a.sock"
    assert plexus.parse_url("TCP://LocalHost:4000").host == "localhost"
    for bad, why in [
        ("127.0.0.1:80", "://"),
        ("http://h:1", "unknown scheme"),
        ("tcp://h", "missing port"),
        ("tcp://h:99999", "port"),
        ("quic://h:1", "tls:// or wss://"),
    ]:
        with pytest.raises(ValueError, match=why):
            plexus.parse_url(bad)
