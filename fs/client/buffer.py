"""The write buffer of one file: written bytes not yet sent to the chunk servers.

Pure bookkeeping, no I/O.  `WriteBuffer.add(offset, data)` records a write;
`take()` hands the whole buffer over (for a flush) and leaves it empty.

Invariants:
* extents are kept sorted by offset, never overlap and never touch: a write
  that overlaps or abuts existing extents is merged with them into one
  extent, the newer bytes winning where they overlap (so a flush sends
  every buffered byte exactly once, in the state of the last write to it);
* no extent crosses a chunk boundary (a write is split there first), so
  every extent maps to one `chunk.write` of one chunk;
* `size` is the sum of the extents' lengths (bytes held, not the span).

The common case - sequential writes, each starting where the previous one
ended - appends to the last extent in amortised O(1).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from fs.types import CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class Extent:
    """Bytes [start, start + len(data)) of a file, inside one chunk."""

    start: int  # file offset
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def index(self) -> int:
        """The chunk it lies in."""
        return self.start // CHUNK_SIZE

    @property
    def chunk_offset(self) -> int:
        return self.start % CHUNK_SIZE


def chunk_pieces(offset: int, length: int) -> list[tuple[int, int]]:
    """[offset, offset + length) cut at chunk boundaries, as (file offset, length) pairs."""
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + length
    while pos < end:
        stop = min(end, (pos // CHUNK_SIZE + 1) * CHUNK_SIZE)
        out.append((pos, stop - pos))
        pos = stop
    return out


class WriteBuffer:
    """Coalescing, chunk-aligned extents of written data (see the module docstring)."""

    __slots__ = ("_data", "_starts", "size")

    def __init__(self) -> None:
        self._starts: list[int] = []  # extent start offsets, ascending
        self._data: list[bytearray] = []  # the extent at the same position
        self.size = 0  # bytes held

    def __len__(self) -> int:
        """How many extents the buffer holds."""
        return len(self._starts)

    @property
    def end(self) -> int:
        """One past the last buffered byte (0 when empty)."""
        return self._starts[-1] + len(self._data[-1]) if self._starts else 0

    def add(self, offset: int, data: bytes) -> None:
        if offset < 0:
            raise ValueError("negative offset")
        view = memoryview(data)
        for start, length in chunk_pieces(offset, len(data)):
            self._add_piece(start, view[start - offset:start - offset + length])

    def _add_piece(self, start: int, piece: memoryview) -> None:
        end = start + len(piece)
        if self._starts:
            last_start, last = self._starts[-1], self._data[-1]
            last_end = last_start + len(last)
            if start == last_end and last_start // CHUNK_SIZE == start // CHUNK_SIZE:
                last += piece  # the sequential fast path
                self.size += len(piece)
                return
        # Extents overlapping or touching [start, end] in the same chunk.
        lo = bisect.bisect_left(self._starts, start)
        if lo > 0 and self._touches(lo - 1, start, end):
            lo -= 1
        hi = lo
        while hi < len(self._starts) and self._touches(hi, start, end):
            hi += 1
        self._merge(lo, hi, start, piece)

    def _touches(self, i: int, start: int, end: int) -> bool:
        s = self._starts[i]
        e = s + len(self._data[i])
        return s // CHUNK_SIZE == start // CHUNK_SIZE and s <= end and start <= e

    def _merge(self, lo: int, hi: int, start: int, piece: memoryview) -> None:
        """Replace extents lo..hi-1 (all touching the piece) by one holding them and the piece."""
        end = start + len(piece)
        if lo == hi:
            self._starts.insert(lo, start)
            self._data.insert(lo, bytearray(piece))
            self.size += len(piece)
            return
        new_start = min(start, self._starts[lo])
        new_end = max(end, self._starts[hi - 1] + len(self._data[hi - 1]))
        merged = bytearray(new_end - new_start)
        for i in range(lo, hi):
            s = self._starts[i] - new_start
            merged[s:s + len(self._data[i])] = self._data[i]
            self.size -= len(self._data[i])
        merged[start - new_start:end - new_start] = piece
        self._starts[lo:hi] = [new_start]
        self._data[lo:hi] = [merged]
        self.size += len(merged)

    def take(self) -> list[Extent]:
        """Every extent, in offset order; the buffer is empty afterwards."""
        out = [Extent(s, bytes(d)) for s, d in zip(self._starts, self._data, strict=True)]
        self._starts, self._data, self.size = [], [], 0
        return out
