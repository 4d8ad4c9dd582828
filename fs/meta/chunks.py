"""Chunk maps, primary leases, replica loss, file sizes, chunk-server records.

Rules (all in log time, identical on every replica):

* `alloc_chunk` creates chunk (inode, index) once, on the servers the leader
  chose (`placement`: distinct registered servers, at most `replicas` of
  them, never none - ENOSPC), with a fresh handle and version 1.  If the
  chunk exists it is returned unchanged (two writers racing for one chunk).
* `acquire_lease`: a lease whose primary is still a replica and whose term
  has not ended is renewed (same token and version, new end) when its
  primary is live, and refused with EAGAIN while a silent primary's term
  runs out.  Otherwise a new lease is granted: the primary is the first
  live replica in the leader's order (none live: EIO), the version is bumped, and the
  fencing token is the index of this entry (so tokens only grow).
* `drop_replica` removes a server from a chunk's replicas and bumps the
  version in one entry; a dropped primary's lease ends at once.  Dropping
  an absent replica changes nothing; the last replica is never dropped (EIO).
* `set_size` grows the size after writes (`truncate` False) or sets it
  (truncate), releasing every chunk wholly past the new end.
* a replica is garbage for its server when no chunk has its handle or the
  server is not among that chunk's replicas (a listed replica whose version
  lags the map is not garbage: the version bump reaches replicas with the
  next write).
"""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from fs.meta.context import Op
from fs.meta.namespace import get
from fs.meta.perms import Refused, kill_suid
from fs.meta.state import ChunkRec, FsReader, FsWriter, InodeRec, ServerRec
from fs.types import (
    CHUNK_SIZE,
    MAX_FILE_SIZE,
    ChunkHandle,
    ChunkLocation,
    ChunkVersion,
    Cred,
    ServerId,
)

_PAGE = 512
MAX_CHUNKS = MAX_FILE_SIZE // CHUNK_SIZE


def open_regular(r: FsReader, op: Op, ino: int) -> InodeRec:
    """The regular file `ino`, which the entry's session must have open."""
    rec = get(r, ino)
    if stat.S_ISDIR(rec.mode):
        raise Refused(errno.EISDIR, "a directory has no data")
    if not stat.S_ISREG(rec.mode):
        raise Refused(errno.EINVAL, "not a regular file")
    if op.session == 0 or r.open_count(ino, op.session) == 0:
        raise Refused(errno.EBADF, f"inode {ino} is not open in session {op.session}")
    return rec


def location(r: FsReader, chunk: ChunkRec) -> ChunkLocation:
    replicas = []
    for server in chunk.replicas:
        rec = r.server(server)
        replicas.append((server, rec.address if rec is not None else ""))
    return ChunkLocation(chunk.index, chunk.handle, chunk.version, tuple(replicas))


def alloc_chunk(
    w: FsWriter, op: Op, ino: int, index: int, placement: tuple[ServerId, ...]
) -> ChunkRec:
    rec = open_regular(w, op, ino)
    if index >= MAX_CHUNKS:
        raise Refused(errno.EFBIG, f"chunk {index} is past the largest file size")
    existing = w.chunk(ino, index)
    if existing is not None:
        return existing
    if not placement:
        raise Refused(errno.ENOSPC, "no live chunk server")
    if len(set(placement)) != len(placement) or any(w.server(s) is None for s in placement):
        raise Refused(errno.EINVAL, f"bad placement {placement}")
    handle = ChunkHandle(w.next_id(b"next_handle"))
    chunk = ChunkRec(rec.ino, index, handle, ChunkVersion(1), placement[: op.config.replicas])
    w.put_chunk(chunk)
    w.put_inode(replace(rec, chunks=rec.chunks + 1))
    return chunk


def acquire_lease(
    w: FsWriter, op: Op, ino: int, index: int, live: tuple[ServerId, ...]
) -> ChunkRec:
    open_regular(w, op, ino)
    chunk = w.chunk(ino, index)
    if chunk is None:
        raise Refused(errno.ENOENT, f"chunk {index} of inode {ino} was never allocated")
    current = chunk.primary in chunk.replicas and op.now_ms < chunk.lease_until
    if current and chunk.primary in live:
        chunk = replace(chunk, lease_until=op.now_ms + op.config.lease_ms)
    elif current:
        raise Refused(errno.EAGAIN, f"primary {chunk.primary} is silent; its lease runs out "
                                    f"at log time {chunk.lease_until} ms")
    else:
        candidates = [s for s in live if s in chunk.replicas]
        if not candidates:
            raise Refused(errno.EIO, f"no live replica of chunk {chunk.handle}")
        chunk = replace(
            chunk, primary=candidates[0], version=ChunkVersion(chunk.version + 1),
            token=op.index, lease_until=op.now_ms + op.config.lease_ms,
        )
    w.put_chunk(chunk)
    return chunk


def drop_replica(w: FsWriter, op: Op, handle: int, server: ServerId) -> ChunkRec:
    chunk = w.chunk_of_handle(handle)
    if chunk is None:
        raise Refused(errno.ENOENT, f"no chunk has handle {handle}")
    if server not in chunk.replicas:
        return chunk
    if len(chunk.replicas) == 1:
        raise Refused(errno.EIO, f"server {server} holds the last replica of {handle}")
    chunk = replace(
        chunk,
        replicas=tuple(s for s in chunk.replicas if s != server),
        version=ChunkVersion(chunk.version + 1),
        lease_until=0 if chunk.primary == server else chunk.lease_until,
    )
    w.put_chunk(chunk)
    return chunk


def truncate_chunks(w: FsWriter, rec: InodeRec, size: int) -> InodeRec:
    """Release the chunks wholly past `size`; returns the inode with its new chunk count."""
    first_gone = -(-size // CHUNK_SIZE)
    removed = 0
    for _ in range(MAX_CHUNKS // _PAGE + 1):
        doomed = w.chunks_from(rec.ino, first_gone, _PAGE)
        for chunk in doomed:
            w.delete_chunk(chunk)
        removed += len(doomed)
        if len(doomed) < _PAGE:
            break
    return replace(rec, size=size, chunks=rec.chunks - removed)


def set_size(w: FsWriter, op: Op, ino: int, size: int, truncate: bool, cred: Cred) -> InodeRec:
    rec = open_regular(w, op, ino)
    if size > MAX_FILE_SIZE:
        raise Refused(errno.EFBIG, f"size {size} > {MAX_FILE_SIZE}")
    grown = replace(rec, size=max(rec.size, size))
    rec = truncate_chunks(w, rec, size) if truncate else grown
    mode = rec.mode if cred.is_root else kill_suid(rec.mode)
    rec = replace(rec, mode=mode, mtime_ns=op.ns, ctime_ns=op.ns)
    w.put_inode(rec)
    return rec


def locations(r: FsReader, ino: int, first: int, count: int) -> list[ChunkLocation]:
    rec = get(r, ino)
    if not stat.S_ISREG(rec.mode):
        raise Refused(errno.EISDIR if stat.S_ISDIR(rec.mode) else errno.EINVAL, "no data")
    rows = r.chunks_from(ino, first, count)
    return [location(r, c) for c in rows if c.index < first + count]


def garbage(r: FsReader, server: ServerId, handles: tuple[ChunkHandle, ...]) -> list[ChunkHandle]:
    out = []
    for handle in handles:
        chunk = r.chunk_of_handle(handle)
        if chunk is None or server not in chunk.replicas:
            out.append(handle)
    return out


def under_replicated(
    r: FsReader, live: tuple[ServerId, ...], want: int, limit: int
) -> tuple[int, bool]:
    """Chunks with fewer than `want` replicas among `live` (scanning at most `limit`)."""
    alive = set(live)
    count = scanned = 0
    after: bytes | None = b""
    while after is not None and scanned < limit:
        page, after = r.all_chunks(after, min(_PAGE, limit - scanned))
        scanned += len(page)
        count += sum(1 for c in page if sum(1 for s in c.replicas if s in alive) < want)
    return count, after is None


def server_state(w: FsWriter, rec: ServerRec) -> None:
    w.put_server(rec)
