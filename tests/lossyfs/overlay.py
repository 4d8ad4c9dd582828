"""The un-fsynced changes of one file, kept in memory over its durable content.

The durable content of a file is whatever its backing file holds.  An
`Overlay` records what was written or truncated since the last fsync, so that
reads see the file as the writer left it while the backing file still holds
only what was fsynced.  Dropping the overlay is exactly "the machine crashed
before these changes reached the disk".

Model (no I/O here: the backing file is read through a callback):

* `size` is the logical size that readers see.
* `floor` is how much of the backing file is still visible: the smallest size
  the file was truncated to since the last flush (never more than the backing
  size at the time the overlay was made).  Backing bytes at or past `floor`
  read as zeros unless a dirty page covers them.
* `pages` maps a page number to a full copy of that page with the new bytes
  applied (copy-on-write from the backing file on first touch).

Invariants: `floor <= base` and `floor <= size`; no dirty page starts at or
past `size`; every dirty page's bytes at offsets `>= size` are zero.  These
are what make `flush_plan` exact: cut the backing file to `floor`, write the
pages, set the size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PAGE_SIZE = 4096

# pread-like access to the durable content: (offset, length) -> at most `length`
# bytes (fewer at end of file).
ReadBacking = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """How to make the backing file equal to the file readers see.

    Apply in order: truncate the backing file to `truncate_to` (drops the bytes
    a pending truncate hid), pwrite every `(offset, data)` in `writes`, then set
    its size to `final_size`, then fsync it.
    """

    truncate_to: int
    writes: tuple[tuple[int, bytes], ...]
    final_size: int


class Overlay:
    __slots__ = ("_base", "_floor", "_pages", "_size")

    def __init__(self, backing_size: int) -> None:
        if backing_size < 0:
            raise ValueError(f"negative backing size {backing_size}")
        self._base = backing_size  # size of the backing file when this overlay began
        self._floor = backing_size  # backing bytes at offsets >= floor read as zero
        self._size = backing_size  # the size readers see
        self._pages: dict[int, bytearray] = {}  # page number -> whole page, new bytes applied

    @property
    def size(self) -> int:
        return self._size

    @property
    def dirty(self) -> bool:
        """False when the overlay adds nothing to the backing file."""
        return bool(self._pages) or not (self._floor == self._size == self._base)

    @property
    def dirty_bytes(self) -> int:
        return len(self._pages) * PAGE_SIZE

    def write(self, offset: int, data: bytes, backing: ReadBacking) -> None:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        end = offset + len(data)
        pos = offset
        while pos < end:
            number, in_page = divmod(pos, PAGE_SIZE)
            take = min(PAGE_SIZE - in_page, end - pos)
            whole = in_page == 0 and take == PAGE_SIZE
            page = self._page(number, backing, fill=not whole)
            page[in_page : in_page + take] = data[pos - offset : pos - offset + take]
            pos += take
        self._size = max(self._size, end)

    def truncate(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"negative size {size}")
        if size < self._size:
            for number in [n for n in self._pages if n * PAGE_SIZE >= size]:
                del self._pages[number]
            number, in_page = divmod(size, PAGE_SIZE)
            tail = self._pages.get(number)
            if tail is not None:
                # Keep the invariant: bytes past the size are zero, so a
                # later extension reads zeros there.
                tail[in_page:] = bytes(PAGE_SIZE - in_page)
            self._floor = min(self._floor, size)
        self._size = size

    def read(self, offset: int, length: int, backing: ReadBacking) -> bytes:
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        visible = max(0, min(end, self._floor) - offset)
        got = backing(offset, visible) if visible else b""
        out = bytearray(got[:visible])
        out.extend(bytes(end - offset - len(out)))
        first, last = offset // PAGE_SIZE, (end - 1) // PAGE_SIZE
        for number in range(first, last + 1):
            page = self._pages.get(number)
            if page is None:
                continue
            start = number * PAGE_SIZE
            lo, hi = max(start, offset), min(start + PAGE_SIZE, end)
            out[lo - offset : hi - offset] = page[lo - start : hi - start]
        return bytes(out)

    def flush_plan(self) -> FlushPlan:
        writes = tuple(
            (number * PAGE_SIZE, bytes(page[: min(PAGE_SIZE, self._size - number * PAGE_SIZE)]))
            for number, page in sorted(self._pages.items())
        )
        return FlushPlan(truncate_to=self._floor, writes=writes, final_size=self._size)

    def _page(self, number: int, backing: ReadBacking, *, fill: bool) -> bytearray:
        page = self._pages.get(number)
        if page is not None:
            return page
        page = bytearray(PAGE_SIZE)
        start = number * PAGE_SIZE
        visible = min(PAGE_SIZE, self._floor - start)
        if fill and visible > 0:
            got = backing(start, visible)[:visible]
            page[: len(got)] = got
        self._pages[number] = page
        return page
