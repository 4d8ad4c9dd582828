"""Pure-Python reference implementations of everything in `native`.

This module is the executable specification: the C module must agree with it
byte for byte (the tests check that with hypothesis), and the benchmark uses
it as its pure-Python column.  It is written for clarity, not speed.

CRC-32C: the Castagnoli polynomial, reflected form 0x82F63B78, register
preset to 0xFFFFFFFF and inverted at the end (the iSCSI/ext4/SSE4.2 CRC);
check value 0xE3069283 for b"123456789".  `seed` is a previous finalised CRC,
so `crc32c(b, crc32c(a)) == crc32c(a + b)`.

Page diff format, version 1, all integers little-endian::

    u8   version                      (= 1)
    u32  page length in bytes
    u32  run count
    run count times:
        u32  offset of the run in the page
        u32  length of the run        (>= 1)
        length bytes: the page's new bytes at [offset, offset + length)

Invariants of a valid diff: runs are sorted by offset, do not overlap, lie
inside the page, are non-empty, and the diff ends exactly after the last
run.  `page_diff` emits maximal runs of changed bytes and never an unchanged
byte, so applying a diff touches only the bytes its writer changed (the
TreadMarks multiple-writer protocol relies on that).  Validation checks are
made in a fixed order, so C and Python report the same `DiffErrorCode`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from itertools import pairwise

CRC32C_POLY = 0x82F63B78
DIFF_VERSION = 1
DIFF_HEADER = struct.Struct("<BII")  # version, page length, run count
DIFF_RUN = struct.Struct("<II")  # offset, length
MAX_PAGE_SIZE = 0xFFFFFFFF
DEFAULT_BLOCK_SIZE = 65536


class DiffErrorCode(enum.IntEnum):
    """Why a diff was rejected; the values are the C module's error codes."""

    SHORT = 1  # shorter than the 9-byte header
    VERSION = 2  # unknown version byte
    PAGE_SIZE = 3  # page length field differs from the target page size
    TRUNCATED = 4  # a run header or its bytes extend past the end of the diff
    EMPTY_RUN = 5  # a run of length 0
    BOUNDS = 6  # a run extends past the end of the page
    ORDER = 7  # a run starts before the previous run ended
    TRAILING = 8  # bytes left over after the last run
    ARGS = 9  # bad batch arguments (page index out of range)


_MESSAGES = {
    DiffErrorCode.SHORT: "diff shorter than its header",
    DiffErrorCode.VERSION: "unknown diff version",
    DiffErrorCode.PAGE_SIZE: "diff page length does not match the page",
    DiffErrorCode.TRUNCATED: "diff truncated inside a run",
    DiffErrorCode.EMPTY_RUN: "diff has an empty run",
    DiffErrorCode.BOUNDS: "diff run extends past the end of the page",
    DiffErrorCode.ORDER: "diff runs overlap or are out of order",
    DiffErrorCode.TRAILING: "trailing bytes after the last diff run",
    DiffErrorCode.ARGS: "page index out of range",
}


class DiffError(ValueError):
    """A malformed or out-of-range diff; `code` says which rule it broke."""

    def __init__(self, code: DiffErrorCode, index: int | None = None) -> None:
        where = "" if index is None else f" (diff #{index})"
        super().__init__(f"{_MESSAGES[code]}{where}")
        self.code = code
        self.index = index  # position in a batch, None for a single diff


# ---- CRC-32C -------------------------------------------------------------


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes, seed: int = 0) -> int:
    """CRC-32C of `data`, continuing from the finalised CRC `seed`."""
    crc = seed ^ 0xFFFFFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """crc32c(a + b) from crc32c(a), crc32c(b) and len(b), by zero-extension.

    Advancing a register over a zero byte is linear, and the pre/post
    inversions cancel, so crc(a + b) = advance(crc_a, len_b zero bytes) ^ crc_b.
    This version feeds the zero bytes one at a time (O(len_b)); C does it in
    O(log len_b) with GF(2) arithmetic.
    """
    crc = crc_a
    for _ in range(len_b):
        crc = (crc >> 8) ^ _TABLE[crc & 0xFF]
    return crc ^ crc_b


def _blocks(data: bytes, block_size: int) -> list[bytes]:
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    return [data[off : off + block_size] for off in range(0, len(data), block_size)]


def checksum_blocks(data: bytes, block_size: int = DEFAULT_BLOCK_SIZE) -> list[int]:
    """One CRC-32C per block; a short last block is checksummed over its own bytes."""
    return [crc32c(block) for block in _blocks(data, block_size)]


def verify_blocks(
    data: bytes, expected: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE
) -> int:
    """Index of the first block whose CRC differs from `expected`, or -1."""
    blocks = _blocks(data, block_size)
    if len(blocks) != len(expected):
        raise ValueError(f"expected {len(blocks)} checksums, got {len(expected)}")
    for i, block in enumerate(blocks):
        if crc32c(block) != expected[i]:
            return i
    return -1


# ---- page diffs ----------------------------------------------------------


def page_diff(page: bytes, twin: bytes) -> bytes:
    """The diff that turns `twin` into `page`: exactly the changed bytes, as runs."""
    if len(page) != len(twin):
        raise ValueError(f"page is {len(page)} bytes but twin is {len(twin)}")
    if len(page) > MAX_PAGE_SIZE:
        raise ValueError("page too large for the diff format")
    runs: list[tuple[int, bytes]] = []
    i, n = 0, len(page)
    while i < n:
        if page[i] == twin[i]:
            i += 1
            continue
        j = i + 1
        while j < n and page[j] != twin[j]:
            j += 1
        runs.append((i, page[i:j]))
        i = j
    out = bytearray(DIFF_HEADER.pack(DIFF_VERSION, n, len(runs)))
    for offset, data in runs:
        out += DIFF_RUN.pack(offset, len(data))
        out += data
    return bytes(out)


def page_validate(diff: bytes, page_size: int) -> list[tuple[int, bytes]]:
    """The runs of `diff` as (offset, bytes); raises DiffError if it is invalid."""
    if len(diff) < DIFF_HEADER.size:
        raise DiffError(DiffErrorCode.SHORT)
    version, length, count = DIFF_HEADER.unpack_from(diff, 0)
    if version != DIFF_VERSION:
        raise DiffError(DiffErrorCode.VERSION)
    if length != page_size:
        raise DiffError(DiffErrorCode.PAGE_SIZE)
    pos, prev_end, runs = DIFF_HEADER.size, 0, []
    for _ in range(count):
        if len(diff) - pos < DIFF_RUN.size:
            raise DiffError(DiffErrorCode.TRUNCATED)
        offset, size = DIFF_RUN.unpack_from(diff, pos)
        pos += DIFF_RUN.size
        if size == 0:
            raise DiffError(DiffErrorCode.EMPTY_RUN)
        if offset + size > page_size:
            raise DiffError(DiffErrorCode.BOUNDS)
        if offset < prev_end:
            raise DiffError(DiffErrorCode.ORDER)
        if len(diff) - pos < size:
            raise DiffError(DiffErrorCode.TRUNCATED)
        runs.append((offset, bytes(diff[pos : pos + size])))
        pos += size
        prev_end = offset + size
    if pos != len(diff):
        raise DiffError(DiffErrorCode.TRAILING)
    return runs


def page_apply(page: bytearray, diff: bytes) -> None:
    """Write the diff's runs into `page`; validates first, writes nothing if invalid."""
    for offset, data in page_validate(diff, len(page)):
        page[offset : offset + len(data)] = data


def page_diff_many(pages: bytes, twins: bytes, page_size: int) -> list[bytes]:
    """page_diff for each page_size slice of `pages` against the same slice of `twins`."""
    if page_size <= 0 or len(pages) % page_size or len(pages) != len(twins):
        raise ValueError("pages and twins must be equal whole numbers of pages")
    bounds = range(0, len(pages) + 1, page_size)
    return [page_diff(pages[a:b], twins[a:b]) for a, b in pairwise(bounds)]


def page_apply_many(
    pages: bytearray,
    diffs: Sequence[bytes],
    page_size: int,
    indices: Sequence[int] | None = None,
) -> None:
    """Apply diffs[k] to page indices[k] (default k); all are validated before any write."""
    if page_size <= 0 or len(pages) % page_size:
        raise ValueError("pages must be a whole number of pages")
    targets = list(range(len(diffs))) if indices is None else list(indices)
    if len(targets) != len(diffs):
        raise ValueError("indices and diffs differ in length")
    count = len(pages) // page_size
    checked = []
    for k, (diff, index) in enumerate(zip(diffs, targets, strict=True)):
        if not 0 <= index < count:
            raise DiffError(DiffErrorCode.ARGS, k)
        try:
            checked.append((index, page_validate(diff, page_size)))
        except DiffError as exc:
            raise DiffError(exc.code, k) from None
    for index, runs in checked:
        base = index * page_size
        for offset, data in runs:
            pages[base + offset : base + offset + len(data)] = data
