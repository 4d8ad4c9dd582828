"""A member's snapshot files: the newest complete snapshot and the one being received.

Layout (one folder, e.g. ``<data>/snap``):

* ``snapshot.bin`` — the newest complete snapshot;
* ``partial.bin``  — a snapshot being received from a leader;
* ``taking.tmp``   — a snapshot being written by this member.

Every file is a fixed 4 KiB header (magic, length, msgpack `SnapshotMeta`)
followed by the snapshot data, so the data's offset `o` is at file offset
4096 + o and a partial file's received length is its size - 4096.

Invariants:

* ``snapshot.bin`` only ever appears by `rename` of a complete, fsynced file
  whose data matched its digest (xxh3_64), so after any crash it is either
  the old or the new snapshot, never a torn one;
* a chunk is fsynced before `write_chunk` returns (the driver acknowledges it
  only then); after a power loss a partial file may end in unsynced bytes,
  which the digest check at the end catches (the transfer then restarts);
* `read` and the handle swap in `_publish` share a lock, so a leader's core
  reading a chunk on the trio thread never sees a half-replaced snapshot;
* the snapshot replaced last stays readable through its open handle (the
  file is gone, the inode is not), so a transfer in progress finishes
  instead of restarting whenever a new snapshot is taken.

Blocking I/O: `take`, `commit_taken`, `write_chunk`, `open_data` run in
worker threads; `read` (one pread of at most a chunk) and `latest` are cheap
enough for the trio thread, like the LMDB log reads.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import msgpack
import xxhash

from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.types import LogIndex, NodeId, Term

HEADER = 4096
_MAGIC = b"DDFSSNP1"
_LEN = struct.Struct(">I")
_COPY = 1 << 20


class SnapshotFileError(Exception):
    """A snapshot file is unreadable (bad header) or a chunk does not fit the partial file."""


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _encode_header(meta: SnapshotMeta) -> bytes:
    body: bytes = msgpack.packb(
        [meta.index, meta.term, list(meta.voters), list(meta.learners), meta.size, meta.digest,
         [list(a) for a in meta.addresses]]
    )
    head = _MAGIC + _LEN.pack(len(body)) + body
    if len(head) > HEADER:
        raise SnapshotFileError(f"snapshot header of {len(head)} bytes exceeds {HEADER}")
    return head.ljust(HEADER, b"\0")


def _decode_header(raw: bytes) -> SnapshotMeta:
    if len(raw) < HEADER or raw[:8] != _MAGIC:
        raise SnapshotFileError("not a ddfs snapshot file")
    (n,) = _LEN.unpack(raw[8:12])
    fields = msgpack.unpackb(raw[12 : 12 + n])
    index, term, voters, learners, size, digest = fields[:6]
    addresses = fields[6] if len(fields) > 6 else []  # older files have no address book
    return SnapshotMeta(
        LogIndex(index), Term(term), tuple(NodeId(v) for v in voters),
        tuple(NodeId(v) for v in learners), size, digest,
        tuple((NodeId(i), str(a)) for i, a in addresses),
    )


def _read_meta(path: Path) -> SnapshotMeta | None:
    try:
        with path.open("rb") as f:
            return _decode_header(f.read(HEADER))
    except FileNotFoundError:
        return None


def current_meta(folder: Path) -> SnapshotMeta | None:
    """The meta of the newest complete snapshot in `folder` (read-only; for tools, tests)."""
    return _read_meta(folder / "snapshot.bin")


def partial_state(folder: Path) -> tuple[SnapshotMeta, int] | None:
    """The snapshot being received into `folder` and how many bytes of it are on disk."""
    path = folder / "partial.bin"
    try:
        meta = _read_meta(path)
        size = path.stat().st_size
    except (FileNotFoundError, SnapshotFileError):
        return None  # absent, or replaced / just created under our feet
    return None if meta is None else (meta, max(0, min(meta.size, size - HEADER)))


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingSink:
    """Writes through to a file, counting bytes and hashing them (the snapshot digest)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.size = 0
        self.hash = xxhash.xxh3_64()

    def write(self, data: bytes, /) -> int:
        self._f.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class Taken:
    """A snapshot written to ``taking.tmp`` whose meta is not final yet."""

    index: LogIndex
    size: int
    digest: int


class SnapshotFiles:
    """The snapshot folder of one member; satisfies `coord.raft.snapshot.SnapshotReader`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._current = folder / "snapshot.bin"
        self._partial = folder / "partial.bin"
        self._taking = folder / "taking.tmp"
        self._lock = threading.Lock()  # guards _meta/_fd against `read` on another thread
        self._meta: SnapshotMeta | None = None
        self._fd: int | None = None
        self._previous: tuple[SnapshotMeta, int] | None = None  # the one replaced last
        self._taking.unlink(missing_ok=True)  # an interrupted take is worthless
        self._open_current()

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._previous[1] if self._previous else None):
                if fd is not None:
                    os.close(fd)
            self._fd, self._meta, self._previous = None, None, None

    def _open_current(self) -> None:
        meta = _read_meta(self._current)
        fd = os.open(self._current, os.O_RDONLY) if meta is not None else None
        with self._lock:
            dropped = self._previous[1] if self._previous else None
            if self._meta is not None and self._fd is not None:
                self._previous = (self._meta, self._fd)
            self._fd, self._meta = fd, meta
        if dropped is not None:
            os.close(dropped)

    # -- reading ----------------------------------------------------------
    def latest(self) -> SnapshotMeta | None:
        return self._meta

    def read(self, meta: SnapshotMeta, offset: int, max_bytes: int) -> bytes | None:
        with self._lock:
            if meta == self._meta and self._fd is not None:
                fd = self._fd
            elif self._previous is not None and meta == self._previous[0]:
                fd = self._previous[1]
            else:
                return None
            return os.pread(fd, max(0, min(max_bytes, meta.size - offset)), HEADER + offset)

    @contextlib.contextmanager
    def open_data(self, meta: SnapshotMeta) -> Iterator[BinaryIO]:
        """The data of the current snapshot `meta`, positioned at its first byte."""
        if meta != self._meta:
            raise SnapshotFileError(f"snapshot {meta.index} is not the current one")
        with self._current.open("rb") as f:
            f.seek(HEADER)
            yield f

    # -- taking a snapshot of our own state ---------------------------------
    def take(self, write_state: Callable[[ByteSink], LogIndex]) -> Taken:
        """Write the state machine's snapshot to ``taking.tmp`` (header left blank)."""
        with self._taking.open("wb") as f:
            f.write(b"\0" * HEADER)
            sink = _HashingSink(f)
            index = write_state(sink)
        return Taken(index, sink.size, sink.hash.intdigest())

    def commit_taken(self, meta: SnapshotMeta) -> None:
        """Fill in the header, fsync and make ``taking.tmp`` the current snapshot."""
        with self._taking.open("r+b") as f:
            f.write(_encode_header(meta))
            f.flush()
            os.fsync(f.fileno())
        self._publish(self._taking)

    def discard_taken(self) -> None:
        self._taking.unlink(missing_ok=True)

    def _publish(self, path: Path) -> None:
        os.replace(path, self._current)
        fsync_dir(self.folder)
        self._open_current()

    # -- receiving a snapshot from a leader ---------------------------------
    def partial(self) -> tuple[SnapshotMeta, int] | None:
        """The snapshot being received and how many of its bytes are on disk."""
        return partial_state(self.folder)

    def write_chunk(self, chunk: SnapshotChunk) -> bool:
        """Write (and fsync) a chunk; for the last one, verify the digest and publish
        the snapshot.  False only when a complete snapshot failed its digest (the
        partial file is then removed)."""
        if chunk.offset == 0:
            with self._partial.open("wb") as f:
                f.write(_encode_header(chunk.meta))
        with self._partial.open("r+b") as f:
            if _decode_header(f.read(HEADER)) != chunk.meta:
                raise SnapshotFileError(f"chunk of snapshot {chunk.meta.index} for another one")
            f.truncate(HEADER + chunk.offset)
            f.seek(HEADER + chunk.offset)
            f.write(chunk.data)
            f.flush()
            os.fsync(f.fileno())
        if not chunk.last:
            return True
        if self._digest(self._partial) != chunk.meta.digest:
            self._partial.unlink()
            return False
        self._publish(self._partial)
        return True

    @staticmethod
    def _digest(path: Path) -> int:
        h = xxhash.xxh3_64()
        with path.open("rb") as f:
            f.seek(HEADER)
            while block := f.read(_COPY):
                h.update(block)
        return h.intdigest()

    def finish_partial(self) -> bool:
        """At start-up: publish a partial file that is complete and valid (the member
        stopped between its last chunk and the install); True if it did."""
        got = self.partial()
        if got is None or got[1] != got[0].size:
            return False
        newest = self._meta
        if (newest is not None and newest.index >= got[0].index) or (
            self._digest(self._partial) != got[0].digest
        ):
            self._partial.unlink()
            return False
        self._publish(self._partial)
        return True
