"""The chunk store on disk: one sparse file per replica, an LMDB index beside them.

Layout under the data folder:

    chunks/<handle>.chunk   the replica's bytes (sparse; only [0, length) is meaningful)
    index/                  LMDB: replicas, fences, pending, server (named DBs)

| DB | key (u64 BE) | value |
| --- | --- | --- |
| replicas | handle | msgpack [version, length, token, serial, checksums (LE u32s)] |
| fences | handle | msgpack token: the highest admitted, kept after deletion |
| pending | handle | msgpack [seq, old length, [[block, old checksum], ...]] |
| server | b"id" | msgpack server id (a data folder belongs to one server) |

File names are built only from integer handles (`check_handle`), so no
request can name a path outside `chunks/`.

Crash safety (docs/chunk-server.md has the argument in full):

* **Index first, then data.**  A write commits the new checksums, length,
  version, token and serial together with a *pending* record (the old
  checksum of every block whose checksum changes, and the old length) in
  one LMDB transaction, then writes the data, then (sync) fdatasyncs the
  file before answering.  LMDB commits are durable (sync + metasync).
* **Recovery** (at open, and at once after a failed data write) resolves
  each pending record block by block: a block matching its new checksum
  landed; one matching the old checksum did not (the old checksum is put
  back); one matching neither was torn and stays detectably corrupt.  If
  no block landed the old length is restored too.  So after a crash every
  block is the old or the new content, or fails verification: never
  silently wrong.
* A pending record is deleted (lazily, by the next index transaction) once
  the data it protects was fdatasynced; only records of writes in flight
  or unsynced survive a crash, which bounds the work of recovery.
* **Bytes at or past a replica's length are garbage** from unacknowledged
  mutations: nothing reads them (reads clip at the length and pad with
  zeros), recovery and failed writes truncate them away.
* **Disk full**: a write first reserves its blocks (posix_fallocate) and
  only then touches the index and data; ENOSPC there, or from LMDB,
  leaves the replica unchanged and raises `NoSpace`.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack

import native
from coord.lease import FencingToken
from fs.chunk import blocks
from fs.chunk.ordering import ReplicaState
from fs.chunk.store import (
    CorruptBlock,
    Mutation,
    NoReplica,
    NoSpace,
    Space,
    StoreError,
    StoreIOError,
    bad_blocks,
    check_handle,
)
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId

log = logging.getLogger(__name__)
T = TypeVar("T")
_KEY = struct.Struct(">Q")
DEFAULT_MAP_SIZE = 1 << 30  # sparse: ~4.1 KiB per replica, so room for ~200k replicas
# Disk blocks allocated to the index file up front, so that index commits
# (deletes above all, which free space) still work when chunk data has
# filled the file system.
DEFAULT_INDEX_RESERVE = 8 << 20
_VERIFY_STEP = 64  # blocks read per step when verifying a whole replica (4 MiB)


def _key(handle: int) -> bytes:
    return _KEY.pack(check_handle(handle))


@dataclass(frozen=True, slots=True)
class _Record:
    state: ReplicaState
    crcs: array[int]


class _Writer:
    """One write transaction and what it changes, published after commit."""

    __slots__ = ("deleted", "fences", "states", "txn")

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.states: dict[ChunkHandle, ReplicaState] = {}
        self.fences: dict[ChunkHandle, FencingToken] = {}
        self.deleted: list[ChunkHandle] = []


@dataclass(frozen=True, slots=True)
class _Pending:
    seq: int
    old_length: int
    old: dict[int, int]  # block -> checksum before the write


def _pack_record(st: ReplicaState, crcs: array[int]) -> bytes:
    out: bytes = msgpack.packb(
        [st.version, st.length, st.token, st.serial, blocks.crcs_to_bytes(crcs)])
    return out


def _unpack_record(handle: ChunkHandle, raw: bytes) -> _Record:
    version, length, token, serial, crcs = msgpack.unpackb(raw)
    st = ReplicaState(handle, ChunkVersion(version), length, FencingToken(token), serial)
    return _Record(st, blocks.crcs_from_bytes(crcs))


def _unpack_pending(raw: bytes) -> _Pending:
    seq, old_length, pairs = msgpack.unpackb(raw)
    return _Pending(seq, old_length, {b: c for b, c in pairs})


def _pack_pending(p: _Pending) -> bytes:
    out: bytes = msgpack.packb([p.seq, p.old_length, sorted(p.old.items())])
    return out


def _is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, lmdb.MapFullError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left" in str(exc) or "MDB_MAP_FULL" in str(exc)


def _translate(exc: BaseException, what: str) -> StoreError:
    if _is_enospc(exc):
        return NoSpace(f"{what}: no space left on device")
    return StoreIOError(f"{what}: {exc}")


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class DiskChunkStore:
    """Replica files plus an LMDB index.  See the module docstring."""

    def __init__(self, root: Path, server_id: ServerId | None = None,
                 map_size: int = DEFAULT_MAP_SIZE,
                 index_reserve: int = DEFAULT_INDEX_RESERVE) -> None:
        self.root = Path(root)
        self.chunk_dir = self.root / "chunks"
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "index").mkdir(exist_ok=True)
        self._env = lmdb.open(str(self.root / "index"), map_size=map_size, max_dbs=4,
                              sync=True, metasync=True, writemap=False)
        self._replicas = self._env.open_db(b"replicas")
        self._fences_db = self._env.open_db(b"fences")
        self._pending_db = self._env.open_db(b"pending")
        self._server_db = self._env.open_db(b"server")
        self._lock = threading.Lock()  # guards the four fields below
        self._states: dict[ChunkHandle, ReplicaState] = {}  # == the replicas DB
        self._fences: dict[ChunkHandle, FencingToken] = {}  # == the fences DB
        self._durable: dict[ChunkHandle, int] = {}  # pending seq whose data is fdatasynced
        self._seq = 0  # last pending-record sequence number handed out
        try:
            self._reserve_index(index_reserve)
            self._claim(server_id)
            self._load()
            self.recover()
        except BaseException:
            self._env.close()
            raise

    # -- opening and recovery ------------------------------------------------

    def _reserve_index(self, size: int) -> None:
        """Allocate the index file's first `size` bytes (LMDB never shrinks it)."""
        if size <= 0:
            return
        fd = os.open(self.root / "index" / "data.mdb", os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.warning("could not reserve %d bytes for the chunk index: %s", size, exc)
        finally:
            os.close(fd)

    def _claim(self, server_id: ServerId | None) -> None:
        if server_id is None:
            return
        with self._env.begin(write=True, db=self._server_db) as txn:
            raw = txn.get(b"id")
            if raw is None:
                txn.put(b"id", msgpack.packb(server_id))
            elif msgpack.unpackb(raw) != server_id:
                raise StoreError(f"{self.root} belongs to chunk server {msgpack.unpackb(raw)}, "
                                 f"not {server_id}")

    def _load(self) -> None:
        with self._env.begin() as txn:
            for k, v in txn.cursor(db=self._replicas):
                h = ChunkHandle(_KEY.unpack(k)[0])
                self._states[h] = _unpack_record(h, v).state
            for k, v in txn.cursor(db=self._fences_db):
                self._fences[ChunkHandle(_KEY.unpack(k)[0])] = FencingToken(msgpack.unpackb(v))

    def recover(self) -> None:
        """Resolve pending records, trim garbage tails, create missing files,
        delete orphan files.  Idempotent; run at open."""
        with self._env.begin() as txn:
            pending = [ChunkHandle(_KEY.unpack(k)[0]) for k, _ in txn.cursor(db=self._pending_db)]
        for handle in pending:
            self._resolve(handle)
        for handle, st in list(self._states.items()):
            path = self._path(handle)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                if st.length:
                    log.warning("chunk %d: file missing, its blocks will fail verification",
                                handle)
                path.touch()
                continue
            if size > st.length:
                os.truncate(path, st.length)
        for path in self.chunk_dir.iterdir():
            stem, _dot, ext = path.name.partition(".")
            if ext == "chunk" and stem.isdigit() and ChunkHandle(int(stem)) not in self._states:
                log.info("removing orphan replica file %s", path.name)
                path.unlink()

    def _resolve(self, handle: ChunkHandle) -> None:
        """Put back the old checksum of every pending block whose data did not land."""
        def fix(w: _Writer) -> None:
            raw = w.txn.get(_key(handle), db=self._pending_db)
            rec = self._get_in(w.txn, handle)
            w.txn.delete(_key(handle), db=self._pending_db)
            if raw is None or rec is None:
                return
            pend = _unpack_pending(raw)
            crcs, length = self._check_pending(rec, pend)
            st = rec.state
            self._put_record(w, ReplicaState(handle, st.version, length, st.token, st.serial),
                             crcs)
        self._commit(fix)
        st = self.state(handle)
        path = self._path(handle)
        if st is not None and path.exists() and path.stat().st_size > st.length:
            os.truncate(path, st.length)

    def _check_pending(self, rec: _Record, pend: _Pending) -> tuple[array[int], int]:
        crcs = array("I", rec.crcs)
        landed = False
        with self._open_read(rec.state.handle, missing_ok=True) as fd:
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

    # -- index helpers ---------------------------------------------------------

    def _path(self, handle: int) -> Path:
        return self.chunk_dir / f"{check_handle(handle):d}.chunk"

    @contextmanager
    def _open_read(self, handle: ChunkHandle, missing_ok: bool = False) -> Iterator[int]:
        try:
            fd = os.open(self._path(handle), os.O_RDONLY)
        except FileNotFoundError:
            if not missing_ok:
                raise NoReplica(handle) from None
            fd = -1
        try:
            yield fd
        finally:
            if fd >= 0:
                os.close(fd)

    def _get_in(self, txn: Any, handle: ChunkHandle) -> _Record | None:
        raw = txn.get(_key(handle), db=self._replicas)
        return None if raw is None else _unpack_record(handle, raw)

    def _get(self, handle: ChunkHandle) -> _Record | None:
        with self._env.begin() as txn:
            return self._get_in(txn, handle)

    def _put_record(self, w: _Writer, st: ReplicaState, crcs: array[int]) -> None:
        w.txn.put(_key(st.handle), _pack_record(st, crcs), db=self._replicas)
        w.states[st.handle] = st

    def _put_fence(self, w: _Writer, handle: ChunkHandle, token: FencingToken) -> None:
        with self._lock:
            if token <= self._fences.get(handle, 0):
                return
        w.txn.put(_key(handle), msgpack.packb(token), db=self._fences_db)
        w.fences[handle] = token

    def _commit(self, fn: Callable[[_Writer], T]) -> T:
        """Run fn in one durable write transaction, then publish what it put.

        Also deletes the pending records whose data has been fdatasynced since
        they were written.  In-memory views change only after the commit.
        """
        with self._lock:
            durable = dict(self._durable)
        try:
            with self._env.begin(write=True) as txn:
                for handle, seq in durable.items():
                    raw = txn.get(_key(handle), db=self._pending_db)
                    if raw is not None and _unpack_pending(raw).seq == seq:
                        txn.delete(_key(handle), db=self._pending_db)
                w = _Writer(txn)
                result = fn(w)
        except lmdb.Error as exc:
            raise _translate(exc, "index") from exc
        with self._lock:
            for handle, seq in durable.items():
                if self._durable.get(handle) == seq:
                    del self._durable[handle]
            self._states.update(w.states)
            for handle in w.deleted:
                self._states.pop(handle, None)
            for handle, token in w.fences.items():
                self._fences[handle] = FencingToken(max(token, self._fences.get(handle, 0)))
        return result

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    # -- ChunkStore: queries ---------------------------------------------------

    def states(self) -> dict[ChunkHandle, ReplicaState]:
        with self._lock:
            return dict(self._states)

    def state(self, handle: ChunkHandle) -> ReplicaState | None:
        with self._lock:
            return self._states.get(handle)

    def fences(self) -> dict[ChunkHandle, FencingToken]:
        with self._lock:
            return dict(self._fences)

    def space(self) -> Space:
        vfs = os.statvfs(self.root)
        with self._lock:
            used = sum(st.length for st in self._states.values())
        return Space(vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize, used)

    def read(self, handle: ChunkHandle, offset: int, size: int) -> bytes:
        blocks.check_range(offset, size)
        rec = self._get(handle)  # length and checksums from one snapshot
        if rec is None:
            raise NoReplica(handle)
        end = min(offset + size, rec.state.length)
        span = blocks.touched(offset, end - offset)
        if not span:
            return b""
        start = span[0] * BLOCK_SIZE
        buf = bytearray(len(span) * BLOCK_SIZE)
        want = min(len(buf), rec.state.length - start)
        try:
            with self._open_read(handle) as fd:
                os.preadv(fd, [memoryview(buf)[:want]], start)
        except OSError as exc:
            raise _translate(exc, f"chunk {handle}") from exc
        bad = native.verify_blocks(buf, rec.crcs[span[0]:span[-1] + 1], BLOCK_SIZE)
        if bad >= 0:
            raise CorruptBlock(handle, span[0] + bad)
        return bytes(memoryview(buf)[offset - start:end - start])

    def verify(self, handle: ChunkHandle) -> list[int]:
        rec = self._get(handle)
        if rec is None:
            raise NoReplica(handle)
        out: list[int] = []
        with self._open_read(handle) as fd:
            for first in range(0, len(rec.crcs), _VERIFY_STEP):
                count = min(_VERIFY_STEP, len(rec.crcs) - first)
                buf = bytearray(count * BLOCK_SIZE)
                want = max(0, min(len(buf), rec.state.length - first * BLOCK_SIZE))
                os.preadv(fd, [memoryview(buf)[:want]], first * BLOCK_SIZE)
                out.extend(bad_blocks(buf, rec.crcs[first:first + count], first))
        return out

    # -- ChunkStore: mutations -------------------------------------------------

    def _old_block(self, fd: int, rec: _Record, block: int) -> bytes:
        """Block `block` as it stands, verified (a partial write merges into it)."""
        raw = os.pread(fd, BLOCK_SIZE, block * BLOCK_SIZE)
        padded = blocks.padded_block(raw, block, rec.state.length)
        if native.crc32c(padded) != rec.crcs[block]:
            raise CorruptBlock(rec.state.handle, block)
        return padded

    def _reserve(self, fd: int, plan: blocks.WritePlan, length: int) -> None:
        """Allocate the blocks the data will occupy, so writing it cannot hit ENOSPC."""
        if not plan.image:
            return
        try:
            os.posix_fallocate(fd, plan.image_offset, len(plan.image))
        except OSError as exc:
            self._trim(fd, length)
            raise _translate(exc, "chunk data") from exc

    @staticmethod
    def _trim(fd: int, length: int) -> None:
        """Drop bytes at or past `length` (garbage by the module's invariant)."""
        if os.fstat(fd).st_size > length:
            os.ftruncate(fd, length)

    def _stage_index(self, w: _Writer, new: ReplicaState, crcs: array[int], m: Mutation,
                     seq: int, old_length: int, old: dict[int, int]) -> None:
        """The index half of a write: new state + checksums + pending record."""
        k = _key(new.handle)
        raw = w.txn.get(k, db=self._pending_db)
        if raw is not None:  # an earlier write's data is not known durable: keep its olds
            prev = _unpack_pending(raw)
            old = {**old, **prev.old}
            old_length = prev.old_length
        w.txn.put(k, _pack_pending(_Pending(seq, old_length, old)), db=self._pending_db)
        self._put_record(w, new, crcs)
        self._put_fence(w, new.handle, m.token)

    def write(self, handle: ChunkHandle, m: Mutation, offset: int, data: bytes,
              sync: bool) -> ReplicaState:
        blocks.check_range(offset, len(data))
        rec = self._get(handle) or _Record(ReplicaState(handle, m.version, 0, m.token, 0),
                                           array("I"))
        path = self._path(handle)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _translate(exc, f"chunk {handle}") from exc
        try:
            return self._write_fd(fd, rec, m, offset, data, sync)
        except StoreError:
            if self.state(handle) is None:  # a replica this write meant to create
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def _write_fd(self, fd: int, rec: _Record, m: Mutation, offset: int, data: bytes,
                  sync: bool) -> ReplicaState:
        handle, length = rec.state.handle, rec.state.length
        created = self.state(handle) is None
        old = {b: self._old_block(fd, rec, b)
               for b in blocks.partial_blocks(length, offset, len(data))}
        plan = blocks.plan_write(length, rec.crcs, offset, data, old)
        self._reserve(fd, plan, length)
        new = ReplicaState(handle, m.version, plan.length, m.token, m.serial)
        seq = self._next_seq()
        try:
            self._commit(lambda w: self._stage_index(w, new, plan.crcs, m, seq, length,
                                                     plan.old_crcs))
        except StoreError:
            self._trim(fd, length)
            raise
        try:
            _pwrite_all(fd, plan.image, plan.image_offset)
            if sync:
                os.fdatasync(fd)
                if created:
                    self._sync_dir()
        except OSError as exc:
            # The index already describes the new data: settle it block by block.
            try:
                self._resolve(handle)
            except (OSError, StoreError):
                log.exception("chunk %d: could not settle a failed write; its torn "
                              "blocks will fail verification", handle)
            raise _translate(exc, f"chunk {handle}") from exc
        if sync:
            with self._lock:
                self._durable[handle] = seq
        return new

    def _sync_dir(self) -> None:
        dfd = os.open(self.chunk_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def truncate(self, handle: ChunkHandle, m: Mutation, length: int,
                 sync: bool) -> ReplicaState:
        blocks.check_range(length, 0)
        rec = self._get(handle)
        if rec is None:
            return self.set_version(handle, m)
        try:
            fd = os.open(self._path(handle), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _translate(exc, f"chunk {handle}") from exc
        try:
            last = None
            if length < rec.state.length and length % BLOCK_SIZE:
                last = self._old_block(fd, rec, length // BLOCK_SIZE)
            plan = blocks.plan_truncate(rec.state.length, rec.crcs, length, last)
            # Earlier writes' data must be durable before their pending record
            # goes: a truncate changes the checksums the record refers to.
            os.fdatasync(fd)
            new = ReplicaState(handle, m.version, plan.length, m.token, m.serial)

            def index(w: _Writer) -> None:
                w.txn.delete(_key(handle), db=self._pending_db)
                self._put_record(w, new, plan.crcs)
                self._put_fence(w, handle, m.token)

            self._commit(index)
            self._trim(fd, plan.length)
            if sync:
                os.fdatasync(fd)
            return new
        except OSError as exc:
            raise _translate(exc, f"chunk {handle}") from exc
        finally:
            os.close(fd)

    def set_version(self, handle: ChunkHandle, m: Mutation) -> ReplicaState:
        rec = self._get(handle)
        crcs = rec.crcs if rec else array("I")
        length = rec.state.length if rec else 0
        new = ReplicaState(handle, m.version, length, m.token, m.serial)
        if rec is None:
            try:
                self._path(handle).touch()
            except OSError as exc:
                raise _translate(exc, f"chunk {handle}") from exc

        def index(w: _Writer) -> None:
            self._put_record(w, new, crcs)
            self._put_fence(w, handle, m.token)

        self._commit(index)
        return new

    def delete(self, handle: ChunkHandle) -> bool:
        """Forget the replica (index first: a crash leaves an orphan file, which
        the next open removes).  Its fence stays."""
        if self.state(handle) is None:
            return False

        def index(w: _Writer) -> None:
            w.txn.delete(_key(handle), db=self._replicas)
            w.txn.delete(_key(handle), db=self._pending_db)
            w.deleted.append(handle)

        try:
            self._commit(index)
        except NoSpace:
            # The index cannot grow: free the data first.  A crash before the
            # retry commits leaves a record without a file, whose blocks then
            # fail verification (never served) until it is deleted again.
            self._path(handle).unlink(missing_ok=True)
            self._commit(index)
        with self._lock:
            self._durable.pop(handle, None)
        self._path(handle).unlink(missing_ok=True)
        return True

    def close(self) -> None:
        self._env.close()
