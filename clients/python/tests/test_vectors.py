"""The golden vectors (docs/vectors/v2.json) decode to their meaning and their
meaning encodes to their bytes; every invalid input is refused with the error
the vector names (the Rust codec's variant, carried as ``WireError.kind``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plexus import key, wire

VECTORS = Path(__file__).resolve().parents[3] / "docs" / "vectors" / "v2.json"
DATA: dict[str, Any] = json.loads(VECTORS.read_text())


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def frame_of(meaning: dict[str, Any]) -> wire.Frame:
    kind = meaning["kind"]
    if kind == "call_open":
        return wire.CallOpen(
            id=meaning["id"],
            index=meaning["op_index"],
            name=meaning["op_name"],
            deadline_us=meaning["deadline_us"],
            metadata=[(k, hexbytes(v)) for k, v in meaning["metadata"]],
            session=meaning["session"],
            end=meaning["end"],
            oneway=meaning["oneway"],
            body=hexbytes(meaning["body"]),
        )
    if kind == "data":
        return wire.Data(meaning["id"], hexbytes(meaning["body"]))
    if kind == "end":
        return wire.End(meaning["id"])
    if kind == "ack":
        return wire.Ack(meaning["id"], hexbytes(meaning["body"]))
    if kind == "reject":
        return wire.Reject(meaning["id"], meaning["code"], meaning["message"], hexbytes(meaning["details"]), meaning["system"])
    if kind == "cancel":
        return wire.Cancel(meaning["id"])
    if kind == "credit":
        return wire.Credit(meaning["id"], meaning["bytes"])
    if kind == "ping":
        return wire.Ping(meaning["value"])
    if kind == "pong":
        return wire.Pong(meaning["value"])
    if kind == "goaway":
        return wire.GoAway(meaning["last_id"], meaning["code"], meaning["reason"])
    raise AssertionError(f"unknown frame kind in the vectors: {kind}")


def handshake_of(meaning: dict[str, Any]) -> Any:
    message = meaning["message"]
    if message == "refusal":
        return wire.Refusal(wire.RefusalCode.of(meaning["code"]), meaning["reason"], meaning["version"])
    fields = dict(
        node_id=int(meaning["node_id"], 16),
        max_frame=meaning["max_frame"],
        window=meaning["window"],
        max_calls=meaning["max_calls"],
        data=hexbytes(meaning["data"]),
        extensions=[wire.Extension(e["type"], hexbytes(e["value"])) for e in meaning["extensions"]],
        version=meaning["version"],
    )
    return wire.Hello(**fields) if message == "hello" else wire.Welcome(**fields)


def test_the_vectors_are_for_this_protocol_version() -> None:
    assert DATA["protocol"] == "plexus"
    assert DATA["version"] == wire.VERSION


@pytest.mark.parametrize("vector", DATA["frames"], ids=lambda v: v["name"])
def test_frame_vectors_decode_and_encode(vector: dict[str, Any]) -> None:
    raw = hexbytes(vector["hex"])
    expected = frame_of(vector["frame"])
    assert wire.decode(raw, 1 << 24) == (expected, len(raw)), vector["meaning"]
    assert wire.encode(expected) == raw, vector["meaning"]


@pytest.mark.parametrize("vector", DATA["handshakes"], ids=lambda v: v["name"])
def test_handshake_vectors_decode_and_encode(vector: dict[str, Any]) -> None:
    raw = hexbytes(vector["hex"])
    expected = handshake_of(vector["decoded"])
    if isinstance(expected, wire.Hello):
        assert wire.Hello.decode(raw) == (expected, len(raw)), vector["meaning"]
    else:
        assert wire.decode_answer(raw) == (expected, len(raw)), vector["meaning"]
    assert expected.encode() == raw, vector["meaning"]


@pytest.mark.parametrize("vector", DATA["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_refused_with_the_named_error(vector: dict[str, Any]) -> None:
    raw = hexbytes(vector["hex"])
    with pytest.raises(wire.WireError) as refused:
        if vector["input"] == "frame":
            wire.decode(raw, vector["max_frame"])
        elif vector["input"] == "hello":
            wire.Hello.decode(raw)
        else:
            wire.decode_answer(raw)
    assert refused.value.kind == vector["error"], f"{vector['meaning']}: {refused.value}"


@pytest.mark.parametrize("vector", DATA["key_proofs"], ids=lambda v: v["name"])
def test_key_proof_vectors_derive_the_same_tags(vector: dict[str, Any]) -> None:
    """The session-key exchange of PROTOCOL.md §3.6 with every input fixed:
    the same key id, listener proof and dialer proof message, carried in the
    hello and welcome the vector shows; a keyed client accepts the listener's
    proof and answers with the vector's message."""
    secret = key.SessionKey(hexbytes(vector["key"]))
    dialer = int(vector["dialer_node_id"], 16)
    listener = int(vector["listener_node_id"], 16)
    nd, nl = hexbytes(vector["dialer_nonce"]), hexbytes(vector["listener_nonce"])
    assert secret.id() == hexbytes(vector["key_id"])
    assert secret.proof("listener", dialer, listener, nd, nl) == hexbytes(vector["listener_proof"])

    hello_raw = hexbytes(vector["hello"]["hex"])
    hello = handshake_of(vector["hello"]["decoded"])
    assert wire.Hello.decode(hello_raw) == (hello, len(hello_raw))
    assert hello.encode() == hello_raw
    hello_key = key.HelloKey.find(hello.extensions)
    assert hello_key == key.HelloKey(secret.id(), nd)
    assert hello_key.extension() == hello.extensions[0]

    welcome_raw = hexbytes(vector["welcome"]["hex"])
    welcome = handshake_of(vector["welcome"]["decoded"])
    assert wire.decode_answer(welcome_raw) == (welcome, len(welcome_raw))
    assert welcome.encode() == welcome_raw
    ours = key.WelcomeKey.answer(secret, hello_key, dialer, listener, nonce=nl)
    assert key.WelcomeKey.find(welcome.extensions) == ours

    message = key.prove_to_listener(secret, hello_key, welcome.extensions, dialer, listener)
    assert message == hexbytes(vector["dialer_proof_message"])
    assert len(message) == key.PROOF_MESSAGE_LEN
