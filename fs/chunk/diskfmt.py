"""The chunk index's record formats, and OS/LMDB errors as store errors.

Shared by DiskChunkStore (fs/chunk/disk.py); fs/chunk/journal.py has the
intent records'.  Keys are big-endian u64 handles, so LMDB order is handle
order; values are msgpack (docs/chunk-server.md, "Storage").

Invariant: `translate` is the one place an OSError or an lmdb error
becomes a `StoreError`: ENOSPC/EDQUOT and a full LMDB map are `NoSpace`
(nothing changed), everything else `StoreIOError`.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

import native
from coord.lease import FencingToken
from fs.chunk import blocks
from fs.chunk.intent import Intent, IntentKey
from fs.chunk.ordering import ReplicaState
from fs.chunk.store import NoSpace, StoreError, StoreIOError, check_handle
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion

log = logging.getLogger(__name__)
KEY = struct.Struct(">Q")


def key_of(handle: int) -> bytes:
    return KEY.pack(check_handle(handle))


@dataclass(frozen=True, slots=True)
class Record:
    state: ReplicaState
    crcs: array[int]


class Writer:
    """One write transaction and what it changes, published after commit."""

    __slots__ = ("deleted", "fences", "gone", "intents", "states", "txn")

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.states: dict[ChunkHandle, ReplicaState] = {}
        self.fences: dict[ChunkHandle, FencingToken] = {}
        self.deleted: list[ChunkHandle] = []
        self.intents: list[Intent] = []  # put (new or changed status)
        self.gone: list[tuple[ChunkHandle, IntentKey]] = []  # intent records deleted


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    old_length: int
    old: dict[int, int]  # block -> checksum before the write


def pack_record(st: ReplicaState, crcs: array[int]) -> bytes:
    out: bytes = msgpack.packb(
        [st.version, st.length, st.token, st.serial, blocks.crcs_to_bytes(crcs)])
    return out


def unpack_record(handle: ChunkHandle, raw: bytes) -> Record:
    version, length, token, serial, crcs = msgpack.unpackb(raw)
    st = ReplicaState(handle, ChunkVersion(version), length, FencingToken(token), serial)
    return Record(st, blocks.crcs_from_bytes(crcs))


def unpack_pending(raw: bytes) -> Pending:
    seq, old_length, pairs = msgpack.unpackb(raw)
    return Pending(seq, old_length, {b: c for b, c in pairs})


def pack_pending(p: Pending) -> bytes:
    out: bytes = msgpack.packb([p.seq, p.old_length, sorted(p.old.items())])
    return out


def is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, lmdb.MapFullError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left" in str(exc) or "MDB_MAP_FULL" in str(exc)


def translate(exc: BaseException, what: str) -> StoreError:
    if is_enospc(exc):
        return NoSpace(f"{what}: no space left on device")
    return StoreIOError(f"{what}: {exc}")


def pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n




def check_pending(fd: int, rec: Record, pend: Pending) -> tuple[array[int], int]:
    """Settle a pending record against the file (`fd` -1: missing): the old
    checksum back for every block whose new data did not land; the old length
    back if no block landed.  A block matching neither was torn by a crash and
    keeps a checksum it fails."""
    crcs = array("I", rec.crcs)
    landed = False
    for block, old in sorted(pend.old.items()):
        if block >= len(crcs):
            continue
        raw = os.pread(fd, BLOCK_SIZE, block * BLOCK_SIZE) if fd >= 0 else b""
        crc = native.crc32c(blocks.padded_block(raw, block, rec.state.length))
        if crc == crcs[block]:
            landed = True
        elif crc == old:
            crcs[block] = old
        else:
            landed = True
            log.warning("chunk %d: block %d torn by a crash; it will fail verification",
                        rec.state.handle, block)
    if landed or pend.old_length >= rec.state.length:
        return crcs, rec.state.length
    return array("I", crcs[: blocks.block_count(pend.old_length)]), pend.old_length


def reserve_index(path: Path, size: int) -> None:
    """Allocate the index file's first `size` bytes (LMDB never shrinks it), so
    index commits - deletes above all, which free space - work on a full disk."""
    if size <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        log.warning("could not reserve %d bytes for the chunk index: %s", size, exc)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
