"""Checked msgpack helpers shared by the KV command and result codecs.

The KV encodings are persisted (commands live in the Raft log, replies in the
session table) and replayed years later, so they are written out by hand as
msgpack arrays `[tag, field, ...]` with fixed tag numbers, not derived from
class layouts.  Invariant: decoding either returns a fully validated value or
raises `CodecError`; it never lets a TypeError/KeyError from deep inside
escape, so a malformed entry becomes a deterministic BAD_COMMAND result on
every replica instead of a crash.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack


class CodecError(ValueError):
    """Bytes that do not decode to a valid KV command, query or result."""


_local = threading.local()  # .packer: this thread's msgpack.Packer


def pack(obj: object) -> bytes:
    # msgpack.packb builds a Packer per call (about 0.5 us of its 0.7 us); a Packer
    # per thread is reused (it resets its buffer after each pack, also on error).
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    raw: bytes = packer.pack(obj)
    return raw


def unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"not msgpack: {exc}") from exc


def as_list(obj: object, what: str, n: int | None = None) -> list[Any]:
    if not isinstance(obj, list) or (n is not None and len(obj) != n):
        want = "an array" if n is None else f"an array of {n}"
        raise CodecError(f"{what}: expected {want}, got {obj!r:.60}")
    return obj


def as_bytes(obj: object, what: str) -> bytes:
    if not isinstance(obj, bytes):
        raise CodecError(f"{what}: expected bytes, got {type(obj).__name__}")
    return obj


def as_opt_bytes(obj: object, what: str) -> bytes | None:
    return None if obj is None else as_bytes(obj, what)


def as_int(obj: object, what: str, minimum: int = 0) -> int:
    # bool is an int subclass; msgpack would give True for a stray boolean.
    if not isinstance(obj, int) or isinstance(obj, bool) or obj < minimum:
        raise CodecError(f"{what}: expected an int >= {minimum}, got {obj!r:.60}")
    return obj


def as_bool(obj: object, what: str) -> bool:
    if not isinstance(obj, bool):
        raise CodecError(f"{what}: expected a boolean, got {obj!r:.60}")
    return obj


def as_str(obj: object, what: str) -> str:
    if not isinstance(obj, str):
        raise CodecError(f"{what}: expected a string, got {obj!r:.60}")
    return obj
