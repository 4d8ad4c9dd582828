"""The chunk store on disk: one sparse file per replica, an LMDB index beside them.

Layout under the data folder:

    chunks/<handle>.chunk   the replica's bytes (sparse; only [0, length) is meaningful)
    staged/                 data of prepared mutations (fs/chunk/journal.py)
    index/                  LMDB: replicas, fences, pending, intents, server (named DBs)

| DB | key (u64 BE) | value |
| --- | --- | --- |
| replicas | handle | msgpack [version, length, token, serial, checksums (LE u32s)] |
| fences | handle | msgpack token: the highest admitted, kept after deletion |
| pending | handle | msgpack [seq, old length, [[block, old checksum], ...]] |
| intents | handle, token, serial | a prepared / applied / aborted mutation (fs/chunk/journal.py) |
| server | b"id" | msgpack server id (a data folder belongs to one server) |

File names are built only from integer handles (`check_handle`), so no
request can name a path outside `chunks/`.

Crash safety (docs/chunk-server.md has the argument in full):

* **Two-phase commit** (what the service uses): `prepare` reserves the
  blocks (posix_fallocate), stages the data durably (fs/chunk/journal.py;
  small writes inline in the record) and commits the intent record;
  `commit` verifies the partial blocks, commits the new checksums, length
  and serial with the intent marked APPLIED, and writes the data without
  syncing it; `checkpoint` syncs the chunk file and forgets the APPLIED
  intents; recovery *redoes* APPLIED intents from their staged copies
  (never rolls a decided mutation back).  So a commit costs one index
  commit, and an acknowledged mutation survives any crash.  Reservations
  of prepared mutations are never trimmed away (`_keep_length`).
* **One-phase `write`** (kept for the store's tests and tools): index
  first, with a *pending* record of the old checksums and length; recovery
  resolves it block by block (landed / old checksum back / torn, detected).
* **Bytes at or past a replica's length** read as zeros (reads clip and
  pad); they are kept zero or reserved (`_retrim`), never old data.
* **Disk full**: blocks and staged data are allocated before the index is
  touched; ENOSPC there, or from LMDB, changes nothing and raises `NoSpace`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack

import native
from coord.lease import FencingToken
from fs.chunk import blocks
from fs.chunk.diskfmt import (
    KEY,
    Pending,
    Record,
    Writer,
    check_pending,
    key_of,
    pack_pending,
    pack_record,
    reserve_index,
    sync_dir,
    translate,
    unpack_pending,
    unpack_record,
)
from fs.chunk.diskfmt import (
    pwrite_all as _pwrite_all,  # a module global: crash tests replace it
)
from fs.chunk.intent import Intent, IntentKey, IntentStatus
from fs.chunk.journal import (
    INLINE_MAX,
    Journal,
    inline,
    inline_data,
    intent_key,
    pack_intent,
    reserve_span,
    unpack_intent,
)
from fs.chunk.ordering import ReplicaState
from fs.chunk.store import (
    CorruptBlock,
    Mutation,
    NoReplica,
    NoSpace,
    Space,
    StoreError,
    StoreIOError,
    aborted_serials,
    bad_blocks,
    check_handle,
    decided_state,
)
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion, ServerId

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_MAP_SIZE = 1 << 30  # sparse: ~4.1 KiB per replica, so room for ~200k replicas
DEFAULT_INDEX_RESERVE = 8 << 20  # index file allocated up front (diskfmt.reserve_index)
_VERIFY_STEP = 64  # blocks read per step when verifying a whole replica (4 MiB)


class DiskChunkStore:
    """Replica files plus an LMDB index.  See the module docstring."""

    def __init__(self, root: Path, server_id: ServerId | None = None,
                 map_size: int = DEFAULT_MAP_SIZE,
                 index_reserve: int = DEFAULT_INDEX_RESERVE) -> None:
        self.root = Path(root)
        self.chunk_dir = self.root / "chunks"
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "index").mkdir(exist_ok=True)
        self._env = lmdb.open(str(self.root / "index"), map_size=map_size, max_dbs=5,
                              sync=True, metasync=True, writemap=False)
        self._replicas = self._env.open_db(b"replicas")
        self._fences_db = self._env.open_db(b"fences")
        self._pending_db = self._env.open_db(b"pending")
        self._server_db = self._env.open_db(b"server")
        self._intents_db = self._env.open_db(b"intents")
        self.journal = Journal(self.root)
        self._lock = threading.Lock()  # guards the five fields below
        self._intents: dict[ChunkHandle, dict[IntentKey, Intent]] = {}  # == the intents DB
        self._states: dict[ChunkHandle, ReplicaState] = {}  # == the replicas DB
        self._fences: dict[ChunkHandle, FencingToken] = {}  # == the fences DB
        self._durable: dict[ChunkHandle, int] = {}  # pending seq whose data is fdatasynced
        self._seq = 0  # last pending-record sequence number handed out
        try:
            reserve_index(self.root / "index" / "data.mdb", index_reserve)
            self._claim(server_id)
            self._load()
            self.recover()
        except BaseException:
            self._env.close()
            raise

    # -- opening and recovery ------------------------------------------------

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
                h = ChunkHandle(KEY.unpack(k)[0])
                self._states[h] = unpack_record(h, v).state
            for k, v in txn.cursor(db=self._fences_db):
                self._fences[ChunkHandle(KEY.unpack(k)[0])] = FencingToken(msgpack.unpackb(v))
            for k, v in txn.cursor(db=self._intents_db):
                i = unpack_intent(k, v)
                self._intents.setdefault(i.handle, {})[i.key] = i

    def recover(self) -> None:
        """Resolve pending records, redo applied intents, trim garbage tails,
        create missing files, delete orphan files.  Idempotent; run at open."""
        with self._env.begin() as txn:
            pending = [ChunkHandle(KEY.unpack(k)[0]) for k, _ in txn.cursor(db=self._pending_db)]
        for handle in pending:
            self._resolve(handle)
        self._redo_applied()
        self._drop_orphan_staged()
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
                with self._open_write(handle) as fd:
                    self._retrim(fd, handle, st.length)
        for path in self.chunk_dir.iterdir():
            stem, _dot, ext = path.name.partition(".")
            if ext == "chunk" and stem.isdigit() and not self._known(ChunkHandle(int(stem))):
                log.info("removing orphan replica file %s", path.name)
                path.unlink()

    def _known(self, handle: ChunkHandle) -> bool:
        with self._lock:
            return handle in self._states or bool(self._intents.get(handle))

    def _keep_length(self, handle: ChunkHandle, length: int) -> int:
        """How much of the chunk file to keep: the data and the blocks reserved
        for prepared mutations."""
        with self._lock:
            ends = [sum(reserve_span(i.offset, i.length))
                    for i in self._intents.get(handle, {}).values()
                    if i.undecided and not i.truncate]
        return max([length, *ends])

    def _redo_applied(self) -> None:
        """Re-apply every APPLIED intent from its staged copy, in serial order,
        then sync and forget them (their data may not have reached the file)."""
        with self._lock:
            todo = {h: sorted((i for i in mine.values() if i.status is IntentStatus.APPLIED),
                              key=lambda i: i.key) for h, mine in self._intents.items()}
        for handle, applied in todo.items():
            if applied:
                with self._open_write(handle) as fd:
                    self.journal.redo_all(fd, [(i, self._inline(i)) for i in applied])
                self._forget_applied(handle, [i.key for i in applied])

    def _inline(self, intent: Intent) -> bytes | None:
        """A small write's data, kept in its intent record (None: not there)."""
        with self._env.begin() as txn:
            raw = txn.get(intent_key(intent.handle, intent.key), db=self._intents_db)
        return None if raw is None else inline_data(raw)

    def _drop_orphan_staged(self) -> None:
        with self._lock:
            live = {(h, k): i for h, mine in self._intents.items() for k, i in mine.items()
                    if i.status is not IntentStatus.ABORTED}
        self.journal.sweep(live)

    def _resolve(self, handle: ChunkHandle) -> None:
        """Put back the old checksum of every pending block whose data did not land."""
        def fix(w: Writer) -> None:
            raw = w.txn.get(key_of(handle), db=self._pending_db)
            rec = self._get_in(w.txn, handle)
            w.txn.delete(key_of(handle), db=self._pending_db)
            if raw is None or rec is None:
                return
            pend = unpack_pending(raw)
            crcs, length = self._check_pending(rec, pend)
            st = rec.state
            self._put_record(w, ReplicaState(handle, st.version, length, st.token, st.serial),
                             crcs)
        self._commit(fix)
        st = self.state(handle)
        path = self._path(handle)
        if st is not None and path.exists():
            keep = self._keep_length(handle, st.length)
            if path.stat().st_size > keep:
                os.truncate(path, keep)

    def _check_pending(self, rec: Record, pend: Pending) -> tuple[array[int], int]:
        with self._open_read(rec.state.handle, missing_ok=True) as fd:
            return check_pending(fd, rec, pend)

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

    def _get_in(self, txn: Any, handle: ChunkHandle) -> Record | None:
        raw = txn.get(key_of(handle), db=self._replicas)
        return None if raw is None else unpack_record(handle, raw)

    def _get(self, handle: ChunkHandle) -> Record | None:
        with self._env.begin() as txn:
            return self._get_in(txn, handle)

    def _put_record(self, w: Writer, st: ReplicaState, crcs: array[int]) -> None:
        w.txn.put(key_of(st.handle), pack_record(st, crcs), db=self._replicas)
        w.states[st.handle] = st

    def _put_fence(self, w: Writer, handle: ChunkHandle, token: FencingToken) -> None:
        with self._lock:
            if token <= self._fences.get(handle, 0):
                return
        w.txn.put(key_of(handle), msgpack.packb(token), db=self._fences_db)
        w.fences[handle] = token

    def _commit(self, fn: Callable[[Writer], T]) -> T:
        """Run fn in one durable write transaction, then publish what it put.

        Also deletes the pending records whose data has been fdatasynced since
        they were written.  In-memory views change only after the commit.
        """
        with self._lock:
            durable = dict(self._durable)
        try:
            with self._env.begin(write=True) as txn:
                for handle, seq in durable.items():
                    raw = txn.get(key_of(handle), db=self._pending_db)
                    if raw is not None and unpack_pending(raw).seq == seq:
                        txn.delete(key_of(handle), db=self._pending_db)
                w = Writer(txn)
                result = fn(w)
        except lmdb.Error as exc:
            raise translate(exc, "index") from exc
        with self._lock:
            for handle, seq in durable.items():
                if self._durable.get(handle) == seq:
                    del self._durable[handle]
            self._states.update(w.states)
            for handle in w.deleted:
                self._states.pop(handle, None)
                self._intents.pop(handle, None)
            for handle, key in w.gone:
                self._intents.get(handle, {}).pop(key, None)
            for i in w.intents:
                self._intents.setdefault(i.handle, {})[i.key] = i
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
            raise translate(exc, f"chunk {handle}") from exc
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

    def _old_block(self, fd: int, rec: Record, block: int) -> bytes:
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
            raise translate(exc, "chunk data") from exc

    @staticmethod
    def _trim(fd: int, length: int) -> None:
        """Drop bytes at or past `length` (garbage by the module's invariant)."""
        if os.fstat(fd).st_size > length:
            os.ftruncate(fd, length)

    def _retrim(self, fd: int, handle: ChunkHandle, length: int) -> None:
        """Cut the file at `length`, then reserve the blocks of prepared writes
        again: bytes past the length must read as zeros once a later commit
        extends the length over them, so old data there (a truncate's tail)
        must go, not merely be kept for a reservation."""
        keep = self._keep_length(handle, length)
        if os.fstat(fd).st_size <= length:
            return
        os.ftruncate(fd, length)
        if keep > length:
            try:
                os.posix_fallocate(fd, length, keep - length)
            except OSError as exc:  # the commit allocates then (and may fail: reported)
                log.warning("chunk %d: could not re-reserve %d bytes: %s", handle,
                            keep - length, exc)

    def _stage_index(self, w: Writer, new: ReplicaState, crcs: array[int], m: Mutation,
                     seq: int, old_length: int, old: dict[int, int]) -> None:
        """The index half of a write: new state + checksums + pending record."""
        k = key_of(new.handle)
        raw = w.txn.get(k, db=self._pending_db)
        if raw is not None:  # an earlier write's data is not known durable: keep its olds
            prev = unpack_pending(raw)
            old = {**old, **prev.old}
            old_length = prev.old_length
        w.txn.put(k, pack_pending(Pending(seq, old_length, old)), db=self._pending_db)
        self._put_record(w, new, crcs)
        self._put_fence(w, new.handle, m.token)

    def write(self, handle: ChunkHandle, m: Mutation, offset: int, data: bytes,
              sync: bool) -> ReplicaState:
        blocks.check_range(offset, len(data))
        rec = self._get(handle) or Record(ReplicaState(handle, m.version, 0, m.token, 0),
                                           array("I"))
        path = self._path(handle)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise translate(exc, f"chunk {handle}") from exc
        try:
            return self._write_fd(fd, rec, m, offset, data, sync)
        except StoreError:
            if self.state(handle) is None:  # a replica this write meant to create
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def _write_fd(self, fd: int, rec: Record, m: Mutation, offset: int, data: bytes,
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
            raise translate(exc, f"chunk {handle}") from exc
        if sync:
            with self._lock:
                self._durable[handle] = seq
        return new

    def _sync_dir(self) -> None:
        sync_dir(self.chunk_dir)

    def truncate(self, handle: ChunkHandle, m: Mutation, length: int,
                 sync: bool) -> ReplicaState:
        return self._truncate(handle, m, length, sync)

    def _truncate(self, handle: ChunkHandle, m: Mutation, length: int, sync: bool,
                  extra: Callable[[Writer], None] | None = None) -> ReplicaState:
        """Cut the data to `length`; `extra` adds to the same index transaction.
        Also a checkpoint: earlier writes are synced first, so their pending
        records and APPLIED intents are dropped with it."""
        blocks.check_range(length, 0)
        rec = self._get(handle)
        if rec is None:
            return self.set_version(handle, m, extra)
        applied = self._applied(handle)
        try:
            fd = os.open(self._path(handle), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise translate(exc, f"chunk {handle}") from exc
        try:
            last = None
            if length < rec.state.length and length % BLOCK_SIZE:
                last = self._old_block(fd, rec, length // BLOCK_SIZE)
            plan = blocks.plan_truncate(rec.state.length, rec.crcs, length, last)
            # Earlier writes' data must be durable before their pending record
            # goes: a truncate changes the checksums the record refers to.
            os.fdatasync(fd)
            new = ReplicaState(handle, m.version, plan.length, m.token, m.serial)

            def index(w: Writer) -> None:
                w.txn.delete(key_of(handle), db=self._pending_db)
                self._put_record(w, new, plan.crcs)
                self._put_fence(w, handle, m.token)
                for key in applied:
                    self._drop_intent(w, handle, key)
                if extra is not None:
                    extra(w)

            self._commit(index)
            for key in applied:
                self.journal.drop(handle, key)
            self._retrim(fd, handle, plan.length)
            if sync:
                os.fdatasync(fd)
            return new
        except OSError as exc:
            raise translate(exc, f"chunk {handle}") from exc
        finally:
            os.close(fd)

    def set_version(self, handle: ChunkHandle, m: Mutation,
                    extra: Callable[[Writer], None] | None = None) -> ReplicaState:
        rec = self._get(handle)
        crcs = rec.crcs if rec else array("I")
        length = rec.state.length if rec else 0
        new = ReplicaState(handle, m.version, length, m.token, m.serial)
        if rec is None:
            try:
                self._path(handle).touch()
            except OSError as exc:
                raise translate(exc, f"chunk {handle}") from exc

        def index(w: Writer) -> None:
            self._put_record(w, new, crcs)
            self._put_fence(w, handle, m.token)
            if extra is not None:
                extra(w)

        self._commit(index)
        return new

    def delete(self, handle: ChunkHandle) -> bool:
        """Forget the replica and its intents (index first: a crash leaves orphan
        files, which the next open removes).  Its fence stays."""
        with self._lock:
            keys = list(self._intents.get(handle, {}))
        if self.state(handle) is None and not keys:
            return False

        def index(w: Writer) -> None:
            w.txn.delete(key_of(handle), db=self._replicas)
            w.txn.delete(key_of(handle), db=self._pending_db)
            for key in keys:
                w.txn.delete(intent_key(handle, key), db=self._intents_db)
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
        for key in keys:
            self.journal.drop(handle, key)
        return True

    # -- ChunkStore: two-phase commit -----------------------------------------------

    def intents(self, handle: ChunkHandle) -> list[Intent]:
        with self._lock:
            return sorted(self._intents.get(handle, {}).values(), key=lambda i: i.key)

    def intent_handles(self) -> list[ChunkHandle]:
        with self._lock:
            return [h for h, mine in self._intents.items() if mine]

    def aborted(self, handle: ChunkHandle) -> list[int]:
        return aborted_serials(self.state(handle), self.intents(handle))

    def _applied(self, handle: ChunkHandle) -> list[IntentKey]:
        return [i.key for i in self.intents(handle) if i.status is IntentStatus.APPLIED]

    def _put_intent(self, w: Writer, intent: Intent, data: bytes | None = None) -> None:
        w.txn.put(intent_key(intent.handle, intent.key),
                  pack_intent(intent, data if inline(intent) else None), db=self._intents_db)
        w.intents.append(intent)

    def _drop_intent(self, w: Writer, handle: ChunkHandle, key: IntentKey) -> None:
        w.txn.delete(intent_key(handle, key), db=self._intents_db)
        w.gone.append((handle, key))

    def _decided(self, w: Writer, st: ReplicaState, fence: FencingToken) -> None:
        """In a decision's transaction: ABORTED markers of older tokens go."""
        for i in self.intents(st.handle):
            if i.status is IntentStatus.ABORTED and i.token < st.token:
                self._drop_intent(w, st.handle, i.key)
        self._put_fence(w, st.handle, fence)

    @contextmanager
    def _open_write(self, handle: ChunkHandle) -> Iterator[int]:
        try:
            fd = os.open(self._path(handle), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise translate(exc, f"chunk {handle}") from exc
        try:
            yield fd
        finally:
            os.close(fd)

    def stage(self, handle: ChunkHandle, key: IntentKey, data: bytes) -> None:
        """Make a mutation's data durable before it is prepared (no index change,
        so the caller need not hold the chunk's lock meanwhile).  Small writes
        skip this: their data goes into the intent record."""
        if len(data) <= INLINE_MAX:
            return
        try:
            self.journal.stage(handle, key, data)
        except OSError as exc:
            raise translate(exc, f"chunk {handle}: staging {len(data)} bytes") from exc

    def unstage(self, handle: ChunkHandle, key: IntentKey) -> None:
        """Drop staged data that will not be prepared after all."""
        with self._lock:
            intent = self._intents.get(handle, {}).get(key)
        if intent is None or intent.status is IntentStatus.ABORTED:
            self.journal.drop(handle, key)

    def prepare(self, handle: ChunkHandle, intent: Intent, data: bytes) -> None:
        """Reserve, stage durably, record the intent (see the module docstring)."""
        blocks.check_range(intent.offset, 0 if intent.truncate else len(data))
        created = not self._path(handle).exists()
        rec = self._get(handle)
        length = rec.state.length if rec else 0
        try:
            with self._open_write(handle) as fd:
                if not intent.truncate:
                    if rec is not None:
                        for b in blocks.partial_blocks(length, intent.offset, len(data)):
                            self._old_block(fd, rec, b)  # a corrupt replica votes no
                    start, size = reserve_span(intent.offset, len(data))
                    os.posix_fallocate(fd, start, size)
                    if not inline(intent) and \
                            not self.journal.staged(handle, intent.key, len(data)):
                        self.journal.stage(handle, intent.key, data)
            if created:
                self._sync_dir()

            def index(w: Writer) -> None:
                self._put_intent(w, intent, data)
                self._put_fence(w, handle, intent.token)

            self._commit(index)
        except (OSError, StoreError) as exc:
            self._unprepare(handle, intent.key, length)
            if isinstance(exc, StoreError):
                raise
            raise translate(exc, f"chunk {handle}: prepare") from exc

    def _unprepare(self, handle: ChunkHandle, key: IntentKey, length: int) -> None:
        """Undo what a failed or aborted prepare left on disk."""
        self.journal.drop(handle, key)
        path = self._path(handle)
        if not self._known(handle):
            path.unlink(missing_ok=True)
            return
        keep = self._keep_length(handle, length)
        with contextlib.suppress(OSError):
            if path.stat().st_size > keep:
                os.truncate(path, keep)

    def commit(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
               version: ChunkVersion, data: bytes | None = None) -> ReplicaState:
        with self._lock:
            intent = self._intents.get(handle, {}).get(key)
        if intent is None or not intent.undecided:
            raise StoreIOError(f"chunk {handle}: no prepared mutation {key} to commit")
        rec = self._get(handle)
        st = decided_state(rec.state if rec else None, handle,
                           ChunkVersion(max(version, intent.version)), key)
        done = Intent(handle, key[0], key[1], st.version, intent.offset, intent.length,
                      intent.truncate, IntentStatus.APPLIED, st.length)
        if intent.truncate:
            m = Mutation(st.version, intent.token, intent.serial)

            def forget(w: Writer) -> None:
                self._drop_intent(w, handle, key)
                self._decided(w, ReplicaState(handle, st.version, 0, key[0], key[1]), fence)

            return self._truncate(handle, m, intent.offset, True, forget)
        if data is None or len(data) != intent.length:
            data = self._inline(intent) if inline(intent) else None
        if data is None or len(data) != intent.length:
            try:
                data = self.journal.load(handle, key, intent.length)
            except (OSError, ValueError) as exc:
                raise StoreIOError(f"chunk {handle}: staged data of {key}: {exc}") from exc
        with self._open_write(handle) as fd:
            old = {b: self._old_block(fd, rec, b)
                   for b in blocks.partial_blocks(st.length, intent.offset, len(data))
                   if rec is not None}
            plan = blocks.plan_write(st.length, rec.crcs if rec else array("I"),
                                     intent.offset, data, old)
            new = ReplicaState(handle, st.version, plan.length, key[0], key[1])

            def index(w: Writer) -> None:
                self._put_record(w, new, plan.crcs)
                self._put_intent(w, done, data)  # inline data stays for the redo
                self._decided(w, new, fence)

            self._commit(index)
            try:  # no sync: the staged copy is durable, recovery redoes it
                _pwrite_all(fd, plan.image, plan.image_offset)
            except OSError as exc:
                raise translate(exc, f"chunk {handle}") from exc
        return new

    def abort(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
              version: ChunkVersion) -> ReplicaState:
        with self._lock:
            old = self._intents.get(handle, {}).get(key)
        if old is not None and not old.undecided:
            raise StoreIOError(f"chunk {handle}: mutation {key} was decided already")
        rec = self._get(handle)
        st = decided_state(rec.state if rec else None, handle,
                           old.version if old is not None else version, key)
        marker = Intent(handle, key[0], key[1], st.version, 0, 0, False, IntentStatus.ABORTED)

        def index(w: Writer) -> None:
            if rec is not None:  # a replica never written stays without a state
                self._put_record(w, st, rec.crcs)
            self._put_intent(w, marker)
            self._decided(w, st, fence)

        self._commit(index)
        self._unprepare(handle, key, st.length)
        return st

    def raise_fence(self, handle: ChunkHandle, token: FencingToken) -> None:
        self._commit(lambda w: self._put_fence(w, handle, token))

    def checkpoint(self, handle: ChunkHandle) -> int:
        """Sync the chunk file, then forget the APPLIED intents it now holds.
        The caller keeps mutations of `handle` out meanwhile."""
        keys = self._applied(handle)
        if not keys:
            return 0
        with self._open_read(handle, missing_ok=True) as fd:  # never recreate it
            if fd >= 0:
                os.fdatasync(fd)
        self._forget_applied(handle, keys)
        return len(keys)

    def _forget_applied(self, handle: ChunkHandle, keys: list[IntentKey]) -> None:
        def index(w: Writer) -> None:
            for key in keys:
                self._drop_intent(w, handle, key)

        self._commit(index)
        for key in keys:
            self.journal.drop(handle, key)

    def close(self) -> None:
        self._env.close()
