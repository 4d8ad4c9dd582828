"""Block arithmetic for chunk replicas: which blocks an operation touches, the
bytes a write must put on disk, and the checksums that result.  Pure: no I/O.

The checksum rule every function here keeps:

* A replica of data length `length` has exactly ceil(length / BLOCK_SIZE)
  checksums.  Checksum k is the CRC-32C of block k's bytes *padded with
  zeros to a full BLOCK_SIZE* (the last block's bytes past `length` count
  as zeros, whatever the file holds there).  So bytes of the file at or
  past `length` never influence a checksum or a read, and growing a
  replica over a hole needs no I/O: a never-written block is all zeros and
  its checksum is ZERO_BLOCK_CRC.
* Callers hand in blocks as `padded_block` produces them: the file's bytes
  clipped at the replica length and zero-filled to BLOCK_SIZE.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

import native
from fs.types import BLOCK_SIZE, CHUNK_SIZE

ZERO_BLOCK_CRC = native.crc32c(bytes(BLOCK_SIZE))
MAX_BLOCKS = CHUNK_SIZE // BLOCK_SIZE


def block_count(length: int) -> int:
    """Blocks holding `length` bytes of data: ceil(length / BLOCK_SIZE)."""
    return -(-length // BLOCK_SIZE)


def touched(offset: int, size: int) -> range:
    """The blocks that bytes [offset, offset + size) lie in (empty when size is 0)."""
    if size <= 0:
        return range(0)
    return range(offset // BLOCK_SIZE, (offset + size - 1) // BLOCK_SIZE + 1)


def check_range(offset: int, size: int) -> None:
    """ValueError unless [offset, offset + size) lies inside one chunk."""
    if offset < 0 or size < 0 or offset + size > CHUNK_SIZE:
        raise ValueError(f"range [{offset}, {offset + size}) is outside a chunk of {CHUNK_SIZE}")


def padded_block(raw: bytes, block: int, length: int) -> bytes:
    """Block `block` as checksummed: `raw` (what the file gave, maybe short)
    clipped at the replica length and zero-filled to BLOCK_SIZE."""
    keep = max(0, min(len(raw), length - block * BLOCK_SIZE))
    if keep == BLOCK_SIZE:
        return raw[:BLOCK_SIZE]
    return raw[:keep] + bytes(BLOCK_SIZE - keep)


def crcs_to_bytes(crcs: array[int]) -> bytes:
    """Checksums as stored: little-endian uint32s."""
    if sys.byteorder == "big":
        crcs = array("I", crcs)
        crcs.byteswap()
    return crcs.tobytes()


def crcs_from_bytes(raw: bytes) -> array[int]:
    out = array("I")
    out.frombytes(raw)
    if sys.byteorder == "big":
        out.byteswap()
    return out


def partial_blocks(length: int, offset: int, size: int) -> list[int]:
    """Blocks a write of [offset, offset+size) covers only partly AND that hold
    old data (inside `length`): their old bytes must be read, verified and merged."""
    end = offset + size
    out: list[int] = []
    span = touched(offset, size)
    if not span:
        return out
    first, last = span[0], span[-1]
    if offset % BLOCK_SIZE and first * BLOCK_SIZE < length:
        out.append(first)
    if end % BLOCK_SIZE and end < length and last not in out:
        out.append(last)
    return out


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What a write puts on disk and in the index."""

    image_offset: int  # where `image` goes in the file (a block boundary)
    image: bytes | bytearray  # whole blocks' bytes, clipped at the new length
    length: int  # the replica's data length afterwards
    crcs: array[int]  # the replica's whole checksum array afterwards
    old_crcs: dict[int, int]  # block -> checksum before, for every block whose checksum changed


def plan_write(
    length: int, crcs: array[int], offset: int, data: bytes, old_blocks: Mapping[int, bytes]
) -> WritePlan:
    """Merge `data` at `offset` into a replica of `length` bytes with checksums
    `crcs`.  `old_blocks` holds (padded, already verified) every block that
    `partial_blocks(length, offset, len(data))` named."""
    check_range(offset, len(data))
    span = touched(offset, len(data))
    if not span:
        return WritePlan(offset, b"", length, array("I", crcs), {})
    first, last = span[0], span[-1]
    new_length = max(length, offset + len(data))
    start = first * BLOCK_SIZE
    buf = bytearray(len(span) * BLOCK_SIZE)
    for block, raw in old_blocks.items():
        at = (block - first) * BLOCK_SIZE
        buf[at : at + BLOCK_SIZE] = raw
    buf[offset - start : offset - start + len(data)] = data
    new = native.checksum_blocks(buf, BLOCK_SIZE)
    out = array("I", crcs)
    old_count = len(out)
    if first > old_count:  # a hole between the old end and this write: zeros
        out.extend([ZERO_BLOCK_CRC] * (first - old_count))
    if last >= len(out):
        out.extend([0] * (last + 1 - len(out)))
    old: dict[int, int] = {}
    for k, block in enumerate(span):
        before = crcs[block] if block < old_count else ZERO_BLOCK_CRC
        if before != new[k]:
            old[block] = before
        out[block] = new[k]
    del buf[min(len(buf), new_length - start):]  # in place: no copy of a big image
    return WritePlan(start, buf, new_length, out, old)


@dataclass(frozen=True, slots=True)
class TruncatePlan:
    length: int
    crcs: array[int]


def plan_truncate(length: int, crcs: array[int], new_length: int,
                  last_block: bytes | None) -> TruncatePlan:
    """Cut a replica to `new_length` (never grows it).  `last_block` is the
    (padded, verified) block that will be the new last one when `new_length`
    ends inside a block, else None."""
    if new_length >= length:
        return TruncatePlan(length, array("I", crcs))
    count = block_count(new_length)
    out = array("I", crcs[:count])
    cut = new_length % BLOCK_SIZE
    if cut:
        assert last_block is not None and len(last_block) == BLOCK_SIZE
        out[count - 1] = native.crc32c(last_block[:cut] + bytes(BLOCK_SIZE - cut))
    return TruncatePlan(new_length, out)
