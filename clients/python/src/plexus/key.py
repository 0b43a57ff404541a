"""Session keys and the key proof of the handshake (PROTOCOL.md §3.6).

Pure functions over bytes, no I/O. A key never crosses the wire: both sides
prove they hold it by HMAC-SHA256 tags over both node ids and a fresh nonce
from each side (so a recorded handshake cannot be replayed), and name it by
a short key id (so a peer holding another key is told so at once). The
connection (:func:`plexus.connect`) runs the exchange; this module only
computes and checks its bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Union

from .wire import MAGIC, VERSION, Extension, WireError

#: The handshake extension that carries a key proof (§3.5).
KEY_EXTENSION = 1
#: Bytes of a key id.
KEY_ID_LEN = 8
#: Bytes of a nonce.
NONCE_LEN = 32
#: Bytes of a proof tag.
PROOF_LEN = 32
#: The dialer's proof message: the six-byte prefix, a kind byte, the tag.
PROOF_MESSAGE_LEN = 4 + 2 + 1 + PROOF_LEN
#: The proof message's kind byte, where an answer has its status.
PROOF_KIND = 2
#: The fewest bytes a hex key may have (as the Rust runtime's
#: ``SessionKey::from_hex``): below 128 bits, offline guessing from a
#: recorded handshake gets practical.
MIN_HEX_KEY_LEN = 16


class KeyFormatError(ValueError):
    """A hex session key that is not one: odd length, a non-hex digit, too short."""


class SessionKey:
    """A secret shared by the nodes of one group (the Rust ``SessionKey``).

    ``SessionKey(raw_bytes)`` takes any non-empty bytes;
    :meth:`from_hex` reads the hex form the Rust side prints
    (``SessionKey::to_hex``) and reads from its command lines. The key is
    never shown by ``repr``.
    """

    __slots__ = ("_key",)

    def __init__(self, key: Union[bytes, bytearray]) -> None:
        if not key:
            raise KeyFormatError("a session key is empty; use 32 random bytes (secrets.token_bytes(32))")
        self._key = bytes(key)

    @classmethod
    def from_hex(cls, text: str) -> "SessionKey":
        """A key written in hex: an even number of hex digits, at least 16
        bytes' worth, surrounding whitespace ignored (exactly what the Rust
        ``SessionKey::from_hex`` accepts)."""
        raw = text.strip().encode("utf-8")
        if len(raw) % 2 != 0:
            raise KeyFormatError(f"a hex session key has an even number of digits, not {len(raw)}")
        for at, c in enumerate(raw):
            if c not in b"0123456789abcdefABCDEF":
                raise KeyFormatError(f"character {at} of the session key is not a hex digit")
        key = bytes.fromhex(raw.decode("ascii"))
        if len(key) < MIN_HEX_KEY_LEN:
            raise KeyFormatError(
                f"a session key of {len(key)} bytes is too short to be secret "
                f"(at least {MIN_HEX_KEY_LEN}; SessionKey::generate makes 32)"
            )
        return cls(key)

    @classmethod
    def of(cls, key: Union["SessionKey", str, bytes, bytearray]) -> "SessionKey":
        """``key`` as a SessionKey: a ``str`` is hex (:meth:`from_hex`), bytes are the key itself."""
        if isinstance(key, SessionKey):
            return key
        if isinstance(key, str):
            return cls.from_hex(key)
        if isinstance(key, (bytes, bytearray)):
            return cls(key)
        raise TypeError(f"a session key is hex text or bytes, not {type(key).__name__}")

    def to_hex(self) -> str:
        """The key in lowercase hex. This is the secret itself: store it as one."""
        return self._key.hex()

    def __len__(self) -> int:
        return len(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.id())

    def __repr__(self) -> str:
        return f"SessionKey({len(self._key)} bytes)"

    def id(self) -> bytes:
        """The key's public name: the first 8 bytes of HMAC(key, "plexus key id")."""
        return hmac.new(self._key, b"plexus key id", hashlib.sha256).digest()[:KEY_ID_LEN]

    def proof(self, role: str, dialer: int, listener: int, dialer_nonce: bytes, listener_nonce: bytes) -> bytes:
        """The tag one side sends to prove the key in one handshake: ``role``
        is ``"listener"`` or ``"dialer"``; node ids are their 16 big-endian bytes."""
        message = (
            b"plexus v2 key proof "
            + role.encode("ascii")
            + dialer.to_bytes(16, "big")
            + listener.to_bytes(16, "big")
            + dialer_nonce
            + listener_nonce
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _find(extensions: list[Extension], expected: int, what: str) -> Union[bytes, None]:
    for entry in extensions:
        if entry.type == KEY_EXTENSION:
            if len(entry.value) != expected:
                raise WireError("WrongLength", f"{what} is {len(entry.value)} bytes; it must be exactly {expected}")
            return entry.value
    return None


@dataclass(frozen=True)
class HelloKey:
    """What the dialer's Hello says: it holds the key named ``key_id``, and this is its nonce."""

    key_id: bytes
    nonce: bytes

    @classmethod
    def new(cls, key: SessionKey) -> "HelloKey":
        """The dialer's extension for ``key``, with a fresh nonce from the operating system."""
        return cls(key.id(), secrets.token_bytes(NONCE_LEN))

    def extension(self) -> Extension:
        return Extension(KEY_EXTENSION, self.key_id + self.nonce)

    @classmethod
    def find(cls, extensions: list[Extension]) -> "HelloKey | None":
        """The key extension among a Hello's, or ``None``; a wrong length is a :class:`WireError`."""
        value = _find(extensions, KEY_ID_LEN + NONCE_LEN, "the hello key extension")
        return None if value is None else cls(value[:KEY_ID_LEN], value[KEY_ID_LEN:])


@dataclass(frozen=True)
class WelcomeKey:
    """What the listener's Welcome says: its key id, its nonce, and its proof over both nonces."""

    key_id: bytes
    nonce: bytes
    proof: bytes

    @classmethod
    def answer(
        cls, key: SessionKey, hello: HelloKey, dialer: int, listener: int, nonce: Union[bytes, None] = None
    ) -> "WelcomeKey":
        """The listener's answer to ``hello`` (a fresh nonce unless one is given)."""
        nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_LEN)
        return cls(key.id(), nonce, key.proof("listener", dialer, listener, hello.nonce, nonce))

    def extension(self) -> Extension:
        return Extension(KEY_EXTENSION, self.key_id + self.nonce + self.proof)

    @classmethod
    def find(cls, extensions: list[Extension]) -> "WelcomeKey | None":
        """The key extension among a Welcome's, or ``None``; a wrong length is a :class:`WireError`."""
        value = _find(extensions, KEY_ID_LEN + NONCE_LEN + PROOF_LEN, "the welcome key extension")
        if value is None:
            return None
        return cls(value[:KEY_ID_LEN], value[KEY_ID_LEN : KEY_ID_LEN + NONCE_LEN], value[KEY_ID_LEN + NONCE_LEN :])

    def verify(self, key: SessionKey, hello: HelloKey, dialer: int, listener: int) -> bool:
        """Whether the listener's proof is good for ``key`` in this handshake (constant time)."""
        expected = key.proof("listener", dialer, listener, hello.nonce, self.nonce)
        return hmac.compare_digest(expected, self.proof)

    def dialer_proof(self, key: SessionKey, hello: HelloKey, dialer: int, listener: int) -> bytes:
        """The dialer's proof message, sent right after the Welcome and before any frame."""
        tag = key.proof("dialer", dialer, listener, hello.nonce, self.nonce)
        return MAGIC + VERSION.to_bytes(2, "big") + bytes([PROOF_KIND]) + tag


def prove_to_listener(key: SessionKey, hello: HelloKey, extensions: list[Extension], dialer: int, listener: int) -> bytes:
    """The dialer's side of §3.6 step 3: the listener must have proved the
    same key in this handshake (a keyed dialer never accepts a keyless
    listener, so a stripped extension cannot downgrade the connection).
    Returns the proof message to send; raises ``ValueError`` with the reason
    not to trust the listener."""
    try:
        theirs = WelcomeKey.find(extensions)
    except WireError as e:
        raise ValueError(f"its key proof is malformed: {e}") from None
    if theirs is None:
        raise ValueError(
            "it proved no session key, and this side has one (a keyed client never "
            "accepts a keyless peer; give both the same key)"
        )
    if not hmac.compare_digest(theirs.key_id, key.id()):
        raise ValueError("it holds another session key than this side")
    if not theirs.verify(key, hello, dialer, listener):
        raise ValueError("its proof of the session key is wrong for this handshake")
    return theirs.dialer_proof(key, hello, dialer, listener)


__all__ = [
    "KEY_EXTENSION",
    "KeyFormatError",
    "HelloKey",
    "SessionKey",
    "WelcomeKey",
    "prove_to_listener",
]
