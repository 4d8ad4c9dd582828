"""The file-system state machine, plugged into the KV state machine as an extension.

`FsMachine` implements `coord.kv.machine.Extension` for `FS_SPACE`: the KV
machine hands it the FS commands of the log (inside the same session
envelope and the same LMDB write transaction that records the applied
index), every entry (to bootstrap the root directory), the end of every
session (to release its open files) and the FS queries.

Invariants:

* deterministic: results and state depend only on the stored state and the
  entry (index, log time, session) - no clocks, no randomness;
* the root directory (inode 1, mode 0o40755, uid/gid 0) exists from the
  first applied entry on, created in that entry's transaction with its log
  time, identically on every replica;
* a refused command (`FsErr`) changes nothing: every operation checks
  before it writes;
* `ServerState` is accepted only as a leader command, and only
  `ServerState` and `DropReplica` may be leader commands (EPERM otherwise).

`meta_machine(store)` builds the composite machine (KV + FS) the metadata
server runs; `open_meta_store`/`memory_meta_store` give stores with the FS
tables declared.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coord.kv.lmdb_state import DEFAULT_MAP_SIZE, LmdbKVStore
from coord.kv.machine import ApplyContext, KVStateMachine
from coord.kv.store import KVReadView, KVStore, KVWriteView, MemoryKVStore
from coord.kv.types import ClientId, KVConfig
from fs.meta import attrs, chunks, files, namespace
from fs.meta.commands import (
    Access,
    AcquireLease,
    AllocChunk,
    ChunkInfo,
    ChunkLocations,
    Create,
    DropReplica,
    FsCommand,
    FsQuery,
    Garbage,
    GetAttr,
    GetXattr,
    Link,
    ListServers,
    ListXattr,
    Lookup,
    Mkdir,
    Mknod,
    Open,
    ReadDir,
    ReadLink,
    Release,
    RemoveXattr,
    Rename,
    Rmdir,
    ServerState,
    SetAttr,
    SetSize,
    SetXattr,
    StatFsQuery,
    Symlink,
    UnderReplicated,
    Unlink,
    decode_command,
    decode_query,
)
from fs.meta.context import FsConfig, Op
from fs.meta.perms import Refused
from fs.meta.protocol import FS_SPACE
from fs.meta.rename import rename
from fs.meta.results import (
    AttrResult,
    ChunkResult,
    ChunksResult,
    CountResult,
    DataResult,
    Done,
    EntriesResult,
    FsErr,
    FsResult,
    HandlesResult,
    LeaseResult,
    NamesResult,
    ServerRecord,
    ServersResult,
    StatFsResult,
    encode_result,
)
from fs.meta.state import META, TABLES, ChunkRec, FsReader, FsWriter, InodeRec, ServerRec
from fs.types import ROOT_INODE, ChunkHandle

_Run = Callable[[FsWriter, Op, Any], FsResult]
_Ask = Callable[[FsReader, FsConfig, Any], FsResult]


def _attr(rec: InodeRec) -> AttrResult:
    return AttrResult(rec.attr())


def _done(action: Callable[[], None]) -> Done:
    action()
    return Done()


def _lease_of(r: FsReader, chunk: ChunkRec, config: FsConfig) -> LeaseResult:
    return LeaseResult(
        chunks.location(r, chunk), chunk.primary, chunk.token,
        chunk.lease_until * 1_000_000, config.lease_ms,
    )


def _lease(w: FsWriter, op: Op, c: AcquireLease) -> LeaseResult:
    return _lease_of(w, chunks.acquire_lease(w, op, c.inode, c.index, c.live), op.config)


def _chunk_info(r: FsReader, config: FsConfig, q: ChunkInfo) -> LeaseResult:
    chunk = r.chunk_of_handle(q.handle)
    if chunk is None:
        raise Refused(errno.ENOENT, f"no chunk has handle {q.handle}")
    return _lease_of(r, chunk, config)


def _server(w: FsWriter, op: Op, c: ServerState) -> Done:
    if op.session != 0:
        raise Refused(errno.EPERM, "ServerState is the leader's command")
    chunks.server_state(w, ServerRec(c.server, c.address, c.capacity, c.free, c.alive))
    return Done()


_COMMANDS: dict[type, _Run] = {
    Mknod: lambda w, op, c: _attr(
        namespace.mknod(w, op, c.parent, c.name, c.mode, c.rdev, c.cred)),
    Mkdir: lambda w, op, c: _attr(namespace.mkdir(w, op, c.parent, c.name, c.mode, c.cred)),
    Symlink: lambda w, op, c: _attr(
        namespace.symlink(w, op, c.parent, c.name, c.target, c.cred)),
    Link: lambda w, op, c: _attr(
        namespace.link(w, op, c.inode, c.new_parent, c.new_name, c.cred)),
    Unlink: lambda w, op, c: _done(lambda: namespace.unlink(w, op, c.parent, c.name, c.cred)),
    Rmdir: lambda w, op, c: _done(lambda: namespace.rmdir(w, op, c.parent, c.name, c.cred)),
    Rename: lambda w, op, c: _done(lambda:
        rename(w, op, c.parent, c.name, c.new_parent, c.new_name, c.flags, c.cred)),
    SetAttr: lambda w, op, c: _attr(
        attrs.setattr(w, op, c.inode, c.fields, c.cred, c.times_now)),
    SetXattr: lambda w, op, c: _done(lambda:
        attrs.setxattr(w, op, c.inode, c.name, c.value, c.flags, c.cred)),
    RemoveXattr: lambda w, op, c: _done(lambda: attrs.removexattr(w, op, c.inode, c.name, c.cred)),
    Create: lambda w, op, c: _attr(
        files.create(w, op, c.parent, c.name, c.mode, c.flags, c.cred)),
    Open: lambda w, op, c: _attr(files.open_file(w, op, c.inode, c.flags, c.cred)),
    Release: lambda w, op, c: _done(lambda: files.release(w, op, c.inode)),
    AllocChunk: lambda w, op, c: ChunkResult(
        chunks.location(w, chunks.alloc_chunk(w, op, c.inode, c.index, c.placement))),
    AcquireLease: _lease,
    DropReplica: lambda w, op, c: ChunkResult(
        chunks.location(w, chunks.drop_replica(w, op, c.handle, c.server))),
    SetSize: lambda w, op, c: _attr(
        chunks.set_size(w, op, c.inode, c.size, c.truncate, c.cred)),
    ServerState: _server,
}

_LEADER_COMMANDS = (ServerState, DropReplica)


def _servers(r: FsReader) -> ServersResult:
    return ServersResult(tuple(
        ServerRecord(s.server, s.address, s.capacity, s.free, s.alive) for s in r.servers()
    ))


def _readdir(r: FsReader, c: ReadDir) -> EntriesResult:
    entries, more = namespace.readdir(r, c.inode, c.cookie, c.limit, c.cred)
    return EntriesResult(tuple(entries), more)


_QUERIES: dict[type, _Ask] = {
    Lookup: lambda r, cfg, q: AttrResult(namespace.lookup(r, q.parent, q.name, q.cred)),
    GetAttr: lambda r, cfg, q: _attr(namespace.get(r, q.inode)),
    ReadLink: lambda r, cfg, q: DataResult(namespace.readlink(r, q.inode)),
    ReadDir: lambda r, cfg, q: _readdir(r, q),
    Access: lambda r, cfg, q: _done(lambda: attrs.access(r, q.inode, q.mask, q.cred)),
    StatFsQuery: lambda r, cfg, q: StatFsResult(attrs.statfs(r, cfg.replicas)),
    GetXattr: lambda r, cfg, q: DataResult(attrs.getxattr(r, q.inode, q.name, q.cred)),
    ListXattr: lambda r, cfg, q: NamesResult(tuple(attrs.listxattr(r, q.inode, q.cred))),
    ChunkLocations: lambda r, cfg, q: ChunksResult(
        tuple(chunks.locations(r, q.inode, q.first, q.count))),
    Garbage: lambda r, cfg, q: HandlesResult(
        tuple(ChunkHandle(h) for h in chunks.garbage(r, q.server, q.handles))),
    ListServers: lambda r, cfg, q: _servers(r),
    UnderReplicated: lambda r, cfg, q: CountResult(
        *chunks.under_replicated(r, q.live, q.want, q.limit)),
    ChunkInfo: _chunk_info,
}


def bootstrap(w: FsWriter, op: Op) -> None:
    """Create the root directory and the counters in an empty FS state."""
    w.put_inode(InodeRec(
        ROOT_INODE, stat.S_IFDIR | 0o755, 0, 0, 2, 0, op.ns, op.ns, op.ns, parent=ROOT_INODE,
    ))
    w.set_counter(b"inodes", 1)
    w.set_counter(b"next_inode", ROOT_INODE + 1)
    w.set_counter(b"next_handle", 1)


class FsMachine:
    """The FS extension of the metadata state machine (see the module docstring)."""

    def __init__(self, config: FsConfig | None = None) -> None:
        self.config = (config or FsConfig()).validate()
        # The write view (transaction) in which the root is known to exist: `on_entry`
        # runs for every applied entry and need look only once per transaction
        # (about 1.5 us per entry saved; tools/bench_apply).  The counter is never
        # removed, and a later transaction is a new view, so an aborted bootstrap
        # is looked for again.  Holding the view keeps its id from being reused.
        self._booted_in: KVWriteView | None = None

    @property
    def space(self) -> int:
        return FS_SPACE

    def _op(self, ctx: ApplyContext) -> Op:
        return Op(ctx.index, ctx.now, ctx.client_id or 0, self.config)

    def on_entry(self, view: KVWriteView, ctx: ApplyContext) -> None:
        if view is self._booted_in:
            return
        if view.table(META).get(b"next_inode") is None:
            bootstrap(FsWriter(view), self._op(ctx))
        self._booted_in = view

    def execute(self, view: KVWriteView, payload: bytes, ctx: ApplyContext) -> bytes:
        command = decode_command(payload)  # CodecError: BAD_COMMAND, nothing written
        return encode_result(self.run(FsWriter(view), self._op(ctx), command))

    def run(self, w: FsWriter, op: Op, command: FsCommand) -> FsResult:
        """Execute one decoded command (also used directly by tests)."""
        if op.session == 0 and not isinstance(command, _LEADER_COMMANDS):
            return FsErr(errno.EPERM, f"{type(command).__name__} needs a session")
        try:
            return _COMMANDS[type(command)](w, op, command)
        except Refused as exc:
            return FsErr(exc.errno, exc.message)

    def session_ended(self, view: KVWriteView, client_id: ClientId, ctx: ApplyContext) -> None:
        files.session_ended(FsWriter(view), client_id)

    def query(self, view: KVReadView, payload: bytes) -> bytes:
        return encode_result(self.ask(FsReader(view), decode_query(payload)))

    def ask(self, r: FsReader, query: FsQuery) -> FsResult:
        try:
            return _QUERIES[type(query)](r, self.config, query)
        except Refused as exc:
            return FsErr(exc.errno, exc.message)


def meta_machine(
    store: KVStore, kv_config: KVConfig | None = None, fs_config: FsConfig | None = None
) -> KVStateMachine:
    """The metadata server's state machine: the KV store plus the file system."""
    return KVStateMachine(store, kv_config, [FsMachine(fs_config)])


def open_meta_store(path: Path | str, map_size: int = DEFAULT_MAP_SIZE) -> LmdbKVStore:
    return LmdbKVStore(path, map_size, tables=TABLES)


def memory_meta_store() -> MemoryKVStore:
    return MemoryKVStore(tables=TABLES)
