"""The durable half of a prepared chunk mutation: staged data files and the
intent records' encoding.  Used by DiskChunkStore (fs/chunk/disk.py).

Layout under the data folder:

    staged/<handle>.<token>.<serial>.data   the bytes a prepared write will put at its offset
                                            (writes of more than INLINE_MAX bytes)

and, in the store's LMDB index, the `intents` DB:

| key | value |
| --- | --- |
| handle, token, serial (3 x u64 BE) | msgpack [version, offset, length, truncate, status, |
|                                    |          old_length, inline data or nil] |

A small write's data travels *inside* its intent record (`inline`): one
index commit makes it durable, saving the staged file's two syncs.

Invariants:

* A staged file is complete and durable (fdatasync of the file, fsync of
  `staged/`) before the intent record that names it is committed, so a
  PREPARED or APPLIED record always has its data after any crash (in the
  file, or inline in the record itself).  A
  file without a record (a crash in between, or after a checkpoint
  deleted the record) is garbage and removed at recovery.
* File names are built only from integers (`check_handle` and int
  formatting): no request can name a path outside `staged/`.
* `redo` re-applies an APPLIED write from its staged copy: it writes what
  the commit's block image held that can differ from the file - the data,
  and zeros between the old data length and the data's start inside the
  first block - so after a redo in serial order the file matches the
  index's checksums whether or not the commit's own write reached the disk.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgpack

from coord.lease import FencingToken
from fs.chunk.intent import Intent, IntentKey, IntentStatus
from fs.chunk.store import check_handle
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion

log = logging.getLogger(__name__)
_KEY3 = struct.Struct(">QQQ")
_SUFFIX = ".data"
INLINE_MAX = 64 << 10  # writes up to this size keep their data in the intent record


def intent_key(handle: ChunkHandle, key: IntentKey) -> bytes:
    return _KEY3.pack(check_handle(handle), key[0], key[1])


def handle_prefix(handle: ChunkHandle) -> bytes:
    return _KEY3.pack(check_handle(handle), 0, 0)[:8]


def inline(intent: Intent) -> bool:
    """Does this write keep its data in its record rather than a staged file?"""
    return not intent.truncate and intent.length <= INLINE_MAX


def pack_intent(i: Intent, data: bytes | None = None) -> bytes:
    out: bytes = msgpack.packb([i.version, i.offset, i.length, i.truncate, int(i.status),
                                i.old_length, data])
    return out


def unpack_intent(raw_key: bytes, raw: bytes) -> Intent:
    handle, token, serial = _KEY3.unpack(raw_key)
    version, offset, length, truncate, status, old_length, _ = msgpack.unpackb(raw)
    return Intent(ChunkHandle(handle), FencingToken(token), serial, ChunkVersion(version),
                  offset, length, bool(truncate), IntentStatus(status), old_length)


def inline_data(raw: bytes) -> bytes | None:
    data: bytes | None = msgpack.unpackb(raw)[6]
    return data


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Journal:
    """The staged-data files of prepared mutations."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "staged"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, handle: ChunkHandle, key: IntentKey) -> Path:
        token, serial = key
        return self.dir / f"{check_handle(handle):d}.{int(token):d}.{int(serial):d}{_SUFFIX}"

    def stage(self, handle: ChunkHandle, key: IntentKey, data: bytes) -> None:
        """Write `data` to its staged file and make it durable (raises OSError,
        leaving no file behind)."""
        path = self.path(handle, key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _pwrite_all(fd, data, 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self.sync_dir()
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def staged(self, handle: ChunkHandle, key: IntentKey, length: int) -> bool:
        """Is the staged file there, complete?  (Only `stage` creates it, and
        it removes what it could not finish, so the size tells.)"""
        try:
            return self.path(handle, key).stat().st_size == length
        except FileNotFoundError:
            return False

    def load(self, handle: ChunkHandle, key: IntentKey, length: int) -> bytes:
        """The staged bytes (OSError if missing; ValueError if short)."""
        with open(self.path(handle, key), "rb") as f:
            data = f.read(length + 1)
        if len(data) != length:
            raise ValueError(f"staged data of chunk {handle} mutation {key} has "
                             f"{len(data)} bytes, expected {length}")
        return data

    def drop(self, handle: ChunkHandle, key: IntentKey) -> None:
        self.path(handle, key).unlink(missing_ok=True)

    def sync_dir(self) -> None:
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def redo_all(self, fd: int, applied: Sequence[tuple[Intent, bytes | None]]) -> None:
        """Redo `applied` (one chunk's APPLIED writes, in serial order, each with
        its inline data if it has some) into the chunk file `fd`, then sync it."""
        for intent, kept in applied:
            if intent.truncate:
                continue  # a truncate's effect is the index's length: recovery trims
            try:
                data = kept if kept is not None else self.load(intent.handle, intent.key,
                                                               intent.length)
                redo(fd, intent, data)
            except (OSError, ValueError) as exc:  # a checkpoint had synced and dropped it
                log.info("chunk %d: no redo of %s: %s", intent.handle, intent.key, exc)
        os.fdatasync(fd)

    def sweep(self, live: Mapping[tuple[ChunkHandle, IntentKey], Intent]) -> None:
        """At recovery: remove staged files no live intent names (a crash between
        staging and recording, or after a checkpoint forgot the record)."""
        for (handle, key), path in self.files().items():
            intent = live.get((handle, key))
            if intent is None:
                path.unlink(missing_ok=True)
            elif intent.undecided and not inline(intent) and \
                    path.stat().st_size != intent.length:
                log.error("chunk %d: staged data of %s is damaged; its commit will fail",
                          handle, key)

    def files(self) -> dict[tuple[ChunkHandle, IntentKey], Path]:
        """Every staged file, by (handle, key); unrecognised names are skipped."""
        out: dict[tuple[ChunkHandle, IntentKey], Path] = {}
        for path in self.dir.iterdir():
            if not path.name.endswith(_SUFFIX):
                continue
            parts = path.name[: -len(_SUFFIX)].split(".")
            if len(parts) != 3 or not all(x.isdigit() for x in parts):
                continue
            h, t, s = (int(x) for x in parts)
            out[(ChunkHandle(h), (FencingToken(t), s))] = path
        return out


def reserve_span(offset: int, length: int) -> tuple[int, int]:
    """The byte range (whole blocks) a write's commit will put on disk."""
    if length <= 0:
        return offset, 0
    first = offset // BLOCK_SIZE * BLOCK_SIZE
    last = (offset + length + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    return first, last - first


def redo(fd: int, intent: Intent, data: bytes) -> None:
    """Re-apply an APPLIED write to the chunk file (see the module docstring)."""
    first = intent.offset // BLOCK_SIZE * BLOCK_SIZE
    gap_from = max(first, intent.old_length)
    if intent.offset > gap_from:
        _pwrite_all(fd, bytes(intent.offset - gap_from), gap_from)
    _pwrite_all(fd, data, intent.offset)
