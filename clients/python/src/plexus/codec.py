"""Payload codecs: how arguments and replies become bytes.

``#[plexus::service]`` contracts speak MessagePack as the Rust runtime's
``plexus::codec::MsgPack`` writes it (``rmp_serde::encode::write_named``,
docs/CODEC.md and docs/CONTRACTS.md):

- arguments: none is ``nil``, one is its value, several are an array;
- structs are maps keyed by field name; ``Option`` is ``nil`` or the value;
  unit enum variants are their name, other variants ``{"Name": value}``;
- ``Vec<u8>`` is an array of integers unless the Rust field is marked
  ``#[serde(with = "serde_bytes")]`` (then pass ``bytes``).

``.proto`` contracts speak protobuf messages (:mod:`plexus.protobuf`).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import msgpack


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as MessagePack")


def pack(value: Any) -> bytes:
    """One MessagePack value (dataclasses become maps of their fields)."""
    return msgpack.packb(value, use_bin_type=True, default=_default)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """One MessagePack value; a malformed payload raises ``ValueError``."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
        raise ValueError(f"not a MessagePack value: {e}") from e


def pack_args(args: tuple[Any, ...]) -> bytes:
    """A method's arguments the way the generated Rust client packs them."""
    if not args:
        return pack(None)
    if len(args) == 1:
        return pack(args[0])
    return pack(list(args))
