"""Marshalling of remote-call arguments and results (msgpack), with handles
passed by reference.

Invariants: values are msgpack types (None, bool, int, float, str, bytes,
lists/tuples, dicts) or `Handle`s, which travel as a msgpack extension (type
HANDLE_EXT) and come back as equal `Handle`s; tuples come back as lists.
Anything else is refused with `MarshalError` before a byte is sent, and
bytes that do not decode raise `MarshalError` too (a peer's bad input).
"""

from __future__ import annotations

from typing import Any

import msgpack

from coord.rmi.table import Handle, HandleId

HANDLE_EXT = 42


class MarshalError(ValueError):
    """A value cannot be sent, or received bytes are not a valid value."""


def _default(value: Any) -> Any:
    if isinstance(value, Handle):
        body = msgpack.packb([value.id, value.interface, value.token, value.lease])
        return msgpack.ExtType(HANDLE_EXT, body)
    raise MarshalError(f"cannot marshal a {type(value).__name__} (msgpack types and handles only)")


def _ext(code: int, data: bytes) -> Any:
    if code != HANDLE_EXT:
        raise MarshalError(f"unknown extension type {code}")
    hid, iface, token, lease = msgpack.unpackb(data)
    if not (type(hid) is int and type(iface) is str and type(token) is int
            and type(lease) in (int, float)):
        raise MarshalError("malformed handle")
    return Handle(HandleId(hid), iface, token, float(lease))


def pack(value: Any) -> bytes:
    try:
        out: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MarshalError(str(exc)) from None
    return out


def unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, ext_hook=_ext, raw=False, strict_map_key=False)
    except MarshalError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MarshalError(f"undecodable value: {exc!r}") from None
