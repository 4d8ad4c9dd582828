"""The file system's replicated state: typed records over the store's tables.

Tables (one LMDB named DB each, in the KV store's environment; integers in
keys are big-endian u64 so byte order is numeric order):

| table | key | value |
| --- | --- | --- |
| fs_inodes | inode | [mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, target, |
| | | parent, next_cookie, chunks] |
| fs_dirents | parent ++ name | [child, cookie] |
| fs_dircookies | parent ++ cookie | name (readdir order = cookie order) |
| fs_xattrs | inode ++ name | value |
| fs_chunks | inode ++ index | [handle, version, replicas, primary, token, lease_until] |
| fs_handles | handle | inode ++ index (which chunk a handle is) |
| fs_open | inode ++ session | open count |
| fs_session_open | session ++ inode | "" (what a session holds open) |
| fs_orphans | inode | "" (nlink 0, still open) |
| fs_servers | server | [address, capacity, free, alive] |
| fs_meta | name | u64 counters: next_inode, next_handle, inodes |

Invariants kept by the operations (and checked by the tests' fsck):

* every dirent (p, n) -> (c, k) has a matching cookie row (p, k) -> n, and
  `k < inode(p).next_cookie`;
* an inode's nlink counts its dirents (+1 for a directory's own "." and
  +1 per subdirectory's ".."), or is 0 for an orphan, which then has an
  fs_orphans row and at least one fs_open row;
* fs_open and fs_session_open are mirror images; counts are >= 1;
* every fs_chunks row has one fs_handles row pointing back; a regular
  file's `chunks` counts its rows;
* `inodes` counts fs_inodes rows; ids and handles come from the counters
  and are never reused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from coord.kv.store import KVReadView, KVWriteView, TableReader, TableWriter
from fs.types import (
    Attr,
    ChunkHandle,
    ChunkVersion,
    InodeId,
    ServerId,
)

INODES, DIRENTS, COOKIES, XATTRS = "fs_inodes", "fs_dirents", "fs_dircookies", "fs_xattrs"
CHUNKS, HANDLES, OPEN, SESSION_OPEN = "fs_chunks", "fs_handles", "fs_open", "fs_session_open"
ORPHANS, SERVERS, META = "fs_orphans", "fs_servers", "fs_meta"
TABLES = (INODES, DIRENTS, COOKIES, XATTRS, CHUNKS, HANDLES, OPEN, SESSION_OPEN, ORPHANS,
          SERVERS, META)

FIRST_COOKIE = 3  # 1 and 2 are left for "." and ".." should a caller synthesize them
_U64 = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")


def u64(n: int) -> bytes:
    return _U64.pack(n)


def pair(a: int, b: int) -> bytes:
    return _PAIR.pack(a, b)


def _pack(obj: object) -> bytes:
    raw: bytes = msgpack.packb(obj, use_bin_type=True)
    return raw


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def fs_time(now_ms: int, index: int) -> int:
    """Nanoseconds for an entry: its log time (ms) plus the index modulo 10^6.

    Strictly increasing from entry to entry (log time never goes back, and a
    million entries never share one millisecond), so make-style tools see
    every change as newer than the previous one, and every replica agrees."""
    return now_ms * 1_000_000 + index % 1_000_000


@dataclass(frozen=True, slots=True)
class InodeRec:
    """An inode as stored; `attr()` is what clients see."""

    ino: InodeId
    mode: int  # type bits | permission bits
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    target: bytes = b""  # symlinks: the target
    parent: InodeId = InodeId(0)  # noqa: RUF009 - directories: the containing one (root: 1)
    next_cookie: int = FIRST_COOKIE  # directories: the cookie of the next new entry
    chunks: int = 0  # regular files: rows in fs_chunks

    def attr(self) -> Attr:
        blocks = min((self.size + 511) // 512, self.chunks * (64 * 1024 * 1024 // 512))
        return Attr(
            self.ino, self.mode, self.nlink, self.uid, self.gid, self.size,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev, blocks,
        )


@dataclass(frozen=True, slots=True)
class ChunkRec:
    inode: InodeId
    index: int
    handle: ChunkHandle
    version: ChunkVersion
    replicas: tuple[ServerId, ...]  # placement order
    primary: ServerId = ServerId(0)  # noqa: RUF009 - 0: no lease was ever granted
    token: int = 0  # the fencing token of the current/last lease
    lease_until: int = 0  # log time (ms) the lease ends


@dataclass(frozen=True, slots=True)
class ServerRec:
    server: ServerId
    address: str
    capacity: int
    free: int
    alive: bool


def _inode_from(ino: int, raw: bytes) -> InodeRec:
    mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, target, parent, cookie, chunks = (
        _unpack(raw)
    )
    return InodeRec(
        InodeId(ino), mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, target,
        InodeId(parent), cookie, chunks,
    )


def _chunk_from(inode: int, index: int, raw: bytes) -> ChunkRec:
    handle, version, replicas, primary, token, until = _unpack(raw)
    return ChunkRec(
        InodeId(inode), index, ChunkHandle(handle), ChunkVersion(version),
        tuple(ServerId(s) for s in replicas), ServerId(primary), token, until,
    )


class FsReader:
    """Typed reads over one read (or write) transaction of the store."""

    def __init__(self, view: KVReadView) -> None:
        self.view = view
        self._tables: dict[str, TableReader] = {}  # opened on first use

    def _t(self, name: str) -> TableReader:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self.view.table(name)
        return table

    def rows(self, table: str, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Raw rows of a table from `start` (for fsck and tools)."""
        return self._t(table).scan(start, None, limit)

    def counter(self, name: bytes) -> int:
        raw = self._t(META).get(name)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def initialized(self) -> bool:
        return self._t(META).get(b"next_inode") is not None

    def inode(self, ino: int) -> InodeRec | None:
        raw = self._t(INODES).get(u64(ino))
        return None if raw is None else _inode_from(ino, raw)

    def dirent(self, parent: int, name: bytes) -> tuple[InodeId, int] | None:
        raw = self._t(DIRENTS).get(u64(parent) + name)
        if raw is None:
            return None
        child, cookie = _unpack(raw)
        return InodeId(child), cookie

    def has_entries(self, parent: int) -> bool:
        return bool(self._t(COOKIES).scan(u64(parent), u64(parent + 1), 1))

    def entries_after(self, parent: int, cookie: int, limit: int) -> list[tuple[int, bytes]]:
        """(cookie, name) of up to `limit` entries with a cookie > `cookie`, in order."""
        rows = self._t(COOKIES).scan(pair(parent, cookie + 1), u64(parent + 1), limit)
        return [(_PAIR.unpack(k)[1], v) for k, v in rows]

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        return self._t(XATTRS).get(u64(ino) + name)

    def xattr_names(self, ino: int, after: bytes, limit: int) -> list[bytes]:
        rows = self._t(XATTRS).scan(u64(ino) + after, u64(ino + 1), limit)
        return [k[8:] for k, _ in rows]

    def chunk(self, ino: int, index: int) -> ChunkRec | None:
        raw = self._t(CHUNKS).get(pair(ino, index))
        return None if raw is None else _chunk_from(ino, index, raw)

    def chunks_from(self, ino: int, first: int, limit: int) -> list[ChunkRec]:
        rows = self._t(CHUNKS).scan(pair(ino, first), u64(ino + 1), limit)
        return [_chunk_from(ino, _PAIR.unpack(k)[1], v) for k, v in rows]

    def chunk_of_handle(self, handle: int) -> ChunkRec | None:
        raw = self._t(HANDLES).get(u64(handle))
        if raw is None:
            return None
        ino, index = _PAIR.unpack(raw)
        return self.chunk(ino, index)

    def all_chunks(self, after: bytes, limit: int) -> tuple[list[ChunkRec], bytes | None]:
        """A page of every chunk row; returns the key to continue after (None: done)."""
        rows = self._t(CHUNKS).scan(after, None, limit)
        recs = []
        for key, raw in rows:
            ino, index = _PAIR.unpack(key)
            recs.append(_chunk_from(ino, index, raw))
        return recs, (rows[-1][0] + b"\x00" if len(rows) == limit else None)

    def open_count(self, ino: int, session: int) -> int:
        raw = self._t(OPEN).get(pair(ino, session))
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def is_open(self, ino: int) -> bool:
        return bool(self._t(OPEN).scan(u64(ino), u64(ino + 1), 1))

    def opened_by(self, session: int, limit: int) -> list[InodeId]:
        rows = self._t(SESSION_OPEN).scan(u64(session), u64(session + 1), limit)
        return [InodeId(_PAIR.unpack(k)[1]) for k, _ in rows]

    def server(self, server: int) -> ServerRec | None:
        raw = self._t(SERVERS).get(u64(server))
        if raw is None:
            return None
        address, capacity, free, alive = _unpack(raw)
        return ServerRec(ServerId(server), address, capacity, free, alive)

    def orphans(self, limit: int) -> list[InodeId]:
        return [InodeId(_U64.unpack(k)[0]) for k, _ in self._t(ORPHANS).scan(b"", None, limit)]

    def servers(self) -> list[ServerRec]:
        rows = self._t(SERVERS).scan(b"", None, 1 << 20)
        out = []
        for k, _ in rows:
            rec = self.server(_U64.unpack(k)[0])
            assert rec is not None
            out.append(rec)
        return out


class FsWriter(FsReader):
    """Typed writes in the same transaction as everything else the entry does."""

    def __init__(self, view: KVWriteView) -> None:
        super().__init__(view)
        self._wview = view
        self._writers: dict[str, TableWriter] = {}

    def _t(self, name: str) -> TableReader:
        return self._w(name)  # one table object per table, also for reads

    def _w(self, name: str) -> TableWriter:
        table = self._writers.get(name)
        if table is None:
            table = self._writers[name] = self._wview.table(name)
        return table

    def set_counter(self, name: bytes, value: int) -> None:
        self._w(META).put(name, u64(value))

    def next_id(self, name: bytes) -> int:
        value = self.counter(name)
        self.set_counter(name, value + 1)
        return value

    def put_inode(self, rec: InodeRec) -> None:
        v = [rec.mode, rec.uid, rec.gid, rec.nlink, rec.size, rec.atime_ns, rec.mtime_ns,
             rec.ctime_ns, rec.rdev, rec.target, rec.parent, rec.next_cookie, rec.chunks]
        self._w(INODES).put(u64(rec.ino), _pack(v))

    def new_inode(self, rec: InodeRec) -> InodeRec:
        """Store `rec` under a fresh inode number; returns it with the number."""
        rec = replace(rec, ino=InodeId(self.next_id(b"next_inode")))
        self.put_inode(rec)
        self.set_counter(b"inodes", self.counter(b"inodes") + 1)
        return rec

    def delete_inode(self, ino: int) -> None:
        if self._w(INODES).delete(u64(ino)):
            self.set_counter(b"inodes", self.counter(b"inodes") - 1)
        self._w(ORPHANS).delete(u64(ino))

    def add_entry(self, parent: InodeRec, name: bytes, child: int) -> InodeRec:
        """Insert (parent, name) -> child with the next cookie; returns the updated parent
        (the caller stores it, usually after changing its times)."""
        cookie = parent.next_cookie
        self.put_entry(parent.ino, name, child, cookie)
        return replace(parent, next_cookie=cookie + 1)

    def put_entry(self, parent: int, name: bytes, child: int, cookie: int) -> None:
        self._w(DIRENTS).put(u64(parent) + name, _pack([child, cookie]))
        self._w(COOKIES).put(pair(parent, cookie), name)

    def remove_entry(self, parent: int, name: bytes) -> None:
        found = self.dirent(parent, name)
        if found is None:
            return
        self._w(DIRENTS).delete(u64(parent) + name)
        self._w(COOKIES).delete(pair(parent, found[1]))

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._w(XATTRS).put(u64(ino) + name, value)

    def delete_xattr(self, ino: int, name: bytes) -> bool:
        return self._w(XATTRS).delete(u64(ino) + name)

    def put_chunk(self, rec: ChunkRec) -> None:
        v = [rec.handle, rec.version, list(rec.replicas), rec.primary, rec.token,
             rec.lease_until]
        self._w(CHUNKS).put(pair(rec.inode, rec.index), _pack(v))
        self._w(HANDLES).put(u64(rec.handle), pair(rec.inode, rec.index))

    def delete_chunk(self, rec: ChunkRec) -> None:
        self._w(CHUNKS).delete(pair(rec.inode, rec.index))
        self._w(HANDLES).delete(u64(rec.handle))

    def set_open_count(self, ino: int, session: int, count: int) -> None:
        if count > 0:
            self._w(OPEN).put(pair(ino, session), u64(count))
            self._w(SESSION_OPEN).put(pair(session, ino), b"")
        else:
            self._w(OPEN).delete(pair(ino, session))
            self._w(SESSION_OPEN).delete(pair(session, ino))

    def mark_orphan(self, ino: int) -> None:
        self._w(ORPHANS).put(u64(ino), b"")

    def put_server(self, rec: ServerRec) -> None:
        v = [rec.address, rec.capacity, rec.free, rec.alive]
        self._w(SERVERS).put(u64(rec.server), _pack(v))
