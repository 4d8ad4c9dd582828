"""Frames: the unit that crosses a connection.  Sans-IO encoder and decoder.

Layout (all integers big-endian)::

    offset size field
         0    1 version      (VERSION; anything else is refused)
         1    4 length       bytes that follow this field (header rest + body)
         5    1 kind         FrameKind
         6    1 flags        reserved, must be 0
         7    8 request_id   multiplexing key; 0 for frames outside a call
        15    8 sender       the sending node's id
        23    8 lamport      the sender's Lamport time at the send
        31    8 budget_us    caller's remaining time budget in microseconds
                             (NO_BUDGET = none); relative, so clock skew between
                             hosts does not matter
        39    … body         msgpack (or empty), interpreted per kind

Invariants:
- The decoder never returns a frame longer than `max_frame_size` and raises
  `FrameTooLarge` as soon as the 5-byte prefix announces one, so a hostile
  length cannot make us buffer gigabytes.
- Once the decoder raises, it stays failed (the byte stream is no longer
  aligned on frame boundaries); callers close the connection.
- Frame bodies are read-only memoryviews over immutable `bytes`, so handing
  them out is zero-copy and safe while the decoder keeps buffering.
- Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from coord.wire.errors import BadVersion, FrameTooLarge, MalformedFrame

VERSION = 1
PREFIX = struct.Struct(">BI")  # version, length
HEADER = struct.Struct(">BIBBQQQQ")
HEADER_SIZE = HEADER.size  # 39
_REST = HEADER_SIZE - PREFIX.size  # header bytes counted in `length`
NO_BUDGET = (1 << 64) - 1
MAX_U64 = (1 << 64) - 1

#: Default hard limit: a 64 MiB chunk plus headroom for the envelope.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024 + 64 * 1024

# Receive size.  Measured: asking a socket for more (up to the frame's size)
# was slower for 1 MiB frames, because CPython allocates a buffer of the
# requested size for every receive and the kernel faults its pages in.
RECEIVE_SIZE = 64 * 1024


class FrameKind(enum.IntEnum):
    """What a frame is; the body's meaning depends on it."""

    HELLO = 1  # client -> server: id, role, nonce
    CHALLENGE = 2  # server -> client: id, role, nonce, server proof
    PROOF = 3  # client -> server: client proof
    WELCOME = 4  # server -> client: authenticated, calls may start
    REQUEST = 5  # [method, session | nil, fields]
    RESPONSE = 6  # fields of the reply
    ERROR = 7  # [code, message]
    NOTIFY = 8  # [method, fields]; one-way, never answered
    CANCEL = 9  # empty; the caller gave up on request_id


_KINDS: dict[int, FrameKind] = {k.value: k for k in FrameKind}


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    request_id: int
    sender: int
    lamport: int
    budget_us: int  # NO_BUDGET when the caller set no deadline
    body: bytes | memoryview


def budget_to_us(seconds: float | None) -> int:
    """Encode a remaining budget; negative budgets clamp to 0 (already expired)."""
    if seconds is None:
        return NO_BUDGET
    return min(max(int(seconds * 1_000_000), 0), NO_BUDGET - 1)


def budget_from_us(value: int) -> float | None:
    return None if value == NO_BUDGET else value / 1_000_000


def encode_header(
    kind: FrameKind, request_id: int, *, sender: int, lamport: int, budget_us: int, body_len: int
) -> bytes:
    """The 39-byte header for a body of `body_len` bytes (sent separately for big bodies)."""
    try:
        return HEADER.pack(
            VERSION, _REST + body_len, kind, 0, request_id, sender, lamport, budget_us
        )
    except struct.error as exc:
        raise ValueError(f"frame header field out of range: {exc}") from None


def encode_frame(
    kind: FrameKind,
    request_id: int,
    *,
    sender: int,
    lamport: int,
    budget_us: int,
    body: bytes = b"",
) -> bytes:
    header = encode_header(
        kind, request_id, sender=sender, lamport=lamport, budget_us=budget_us, body_len=len(body)
    )
    return header + body


class FrameDecoder:
    """Feed bytes in, take whole frames out.

    `feed` only stores; `next_frame` returns the next complete frame or None
    when more bytes are needed, and raises a `ProtocolError` subclass on
    malformed input.  Received chunks are kept as a list and joined once per
    frame, so a 1 MiB frame arriving in 64 KiB pieces is copied once.
    """

    __slots__ = ("_buf", "_error", "_max", "_pos", "_tail", "_tail_len")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError(f"max_frame_size must be at least {HEADER_SIZE}")
        self._max = max_frame_size
        self._buf: bytes = b""  # contiguous bytes being parsed
        self._pos = 0  # start of unparsed data in _buf
        self._tail: list[bytes] = []  # received after _buf, not yet joined
        self._tail_len = 0
        self._error: MalformedFrame | BadVersion | FrameTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos + self._tail_len

    def receive_hint(self) -> int:
        """How many bytes the driver should ask the stream for next."""
        return RECEIVE_SIZE

    def feed(self, data: bytes) -> None:
        if data:
            self._tail.append(data)
            self._tail_len += len(data)

    def eof(self) -> None:
        """The stream ended: raise if it ended in the middle of a frame."""
        if self._error is not None:
            raise self._error
        if self.buffered:
            self._fail(MalformedFrame(f"truncated frame: stream ended with {self.buffered} "
                                      "bytes of an incomplete frame"))

    def _merge(self) -> None:
        if self._pos == len(self._buf) and len(self._tail) == 1:
            # The common case (one receive holds whole frames): no copy at all.
            self._buf = self._tail[0]
            self._pos = 0
            self._tail = []
            self._tail_len = 0
            return
        parts: list[bytes | memoryview] = [memoryview(self._buf)[self._pos :]]
        parts.extend(self._tail)
        self._buf = b"".join(parts)
        self._pos = 0
        self._tail = []
        self._tail_len = 0

    def _fail(self, exc: MalformedFrame | BadVersion | FrameTooLarge) -> None:
        self._error = exc
        raise exc

    def next_frame(self) -> Frame | None:
        if self._error is not None:
            raise self._error
        if not self._tail_len and self._pos == len(self._buf):
            return None  # nothing buffered: the common case between receives
        avail = len(self._buf) - self._pos + self._tail_len
        if avail < PREFIX.size:
            return None
        if len(self._buf) - self._pos < PREFIX.size:
            self._merge()
        buf, pos = self._buf, self._pos
        version, length = PREFIX.unpack_from(buf, pos)
        if version != VERSION:
            self._fail(BadVersion(f"unsupported frame version {version} (we speak {VERSION})"))
        total = PREFIX.size + length
        if total > self._max:
            self._fail(FrameTooLarge(f"frame of {total} bytes exceeds the limit of {self._max}"))
        if length < _REST:
            self._fail(MalformedFrame(f"frame length {length} is shorter than the header"))
        if avail < total:
            return None
        if len(buf) - pos < total:
            self._merge()
            buf, pos = self._buf, self._pos
        _, _, kind, flags, request_id, sender, lamport, budget = HEADER.unpack_from(buf, pos)
        self._pos = pos + total
        frame_kind = _KINDS.get(kind)
        if frame_kind is None:
            self._fail(MalformedFrame(f"unknown frame kind {kind}"))
        if flags:
            self._fail(MalformedFrame(f"unknown frame flags {flags:#x}"))
        body = memoryview(buf)[pos + HEADER_SIZE : pos + total]
        assert frame_kind is not None  # _fail raised otherwise; tells mypy
        return Frame(frame_kind, request_id, sender, lamport, budget, body)
