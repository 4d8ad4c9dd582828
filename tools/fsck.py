"""`ddfs fsck`: check a running cluster's file system end to end.

    ddfs fsck [--dir D | --config F] [--verify-checksums] [--json]

Exit status 0 when clean, 1 with the list of problems, 2 when the check
could not run.  From Python (tests end with it):

    report = await check_cluster(FsckTarget(...))          # inside trio
    problems = fsck_problems(FsckTarget.from_config(cfg))  # outside trio

How the facts are gathered (the comparison is fs/fsck.py, sans-IO):

* **Namespace and chunk maps** come from a metadata member's own state when
  its data folder is on this host (the leader's by preference): first an
  `fs.read` to that member (its ReadIndex barrier makes it apply everything
  committed), then its LMDB state is opened and read in one read
  transaction, and `fs.meta.fsck.check` verifies the state's internal
  invariants too.  Without a local data folder, the tree is walked over RPC
  (`ReadDir`, `ChunkLocations`): orphans and garbage cannot be judged then,
  and the report says so in its notes.
* **Chunk servers**: `chunk.stat` (reachable? how many replicas?), then one
  probe per replica the maps list on it - a 1-byte `chunk.read` at the
  map's version (STALE_VERSION tells the replica's version, NO_CHUNK its
  absence, CHECKSUM a bad first block) or, with --verify-checksums,
  `chunk.checksum` (every block verified; the server reports bad replicas to
  the leader itself) - and, when its data folder is local, the list of
  replica files on disk (garbage by handle; otherwise by count).
* Findings about replicas are checked twice: after `SETTLE` seconds the
  chunks concerned are observed again (their current maps from
  `ChunkInfo`, fresh probes, the files listed again), and only findings
  both observations share are reported (`fs.fsck.persistent`).  So a write
  or a deletion racing with the check is passed over (as a note), while a
  lasting problem is reported whatever the timing.

Run it on a quiet cluster for a verdict; on a busy one it stays correct for
what lasts, and says in its notes what it passed over.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from coord.rpc import RemoteError, RpcClient, RpcError
from fs.chunk import protocol as cp
from fs.fsck import (
    ChunkMap,
    Entry,
    Inode,
    Namespace,
    Problem,
    ReplicaSeen,
    Report,
    ServerView,
    check,
    persistent,
    probe_plan,
    second_look,
    suspects,
)
from fs.meta.commands import (
    MAX_LOCATIONS,
    MAX_READDIR,
    ChunkInfo,
    ChunkLocations,
    GetAttr,
    ListServers,
    ReadDir,
    StatFsQuery,
)
from fs.meta.results import (
    AttrResult,
    ChunksResult,
    EntriesResult,
    FsErr,
    LeaseResult,
    ServersResult,
    StatFsResult,
)
from fs.meta.state import FsReader
from fs.types import (
    CHUNK_SIZE,
    ROOT_CRED,
    ROOT_INODE,
    ChunkHandle,
    ChunkVersion,
    InodeId,
    ServerId,
)
from tools.clusterconf import ClusterConfig
from tools.clusterrpc import ClusterUnavailable, fs_query, fs_query_at, member_statuses

PROBE_TIMEOUT = 10.0
CHECKSUM_TIMEOUT = 120.0  # a whole 64 MiB replica is read and verified
PROBES_IN_FLIGHT = 16
SETTLE = 0.5  # seconds between the two observations of a suspect chunk


@dataclass(frozen=True, slots=True)
class FsckTarget:
    """Where the cluster is.  Data folders are optional: given for members and
    servers on this host, they make the check complete (see the module doc)."""

    endpoints: tuple[str, ...]
    secret: bytes
    replicas: int = 3
    meta_data: Mapping[int, Path] = field(default_factory=dict)  # member id -> data folder
    chunk_data: Mapping[int, Path] = field(default_factory=dict)  # server id -> data folder
    chunk_addresses: Mapping[int, str] = field(default_factory=dict)  # server id -> address

    @classmethod
    def from_config(cls, config: ClusterConfig, secret: bytes) -> FsckTarget:
        return cls(
            endpoints=tuple(config.endpoints), secret=secret, replicas=config.replicas,
            meta_data={m.id: m.data for m in config.meta if (m.data / "kv").is_dir()},
            chunk_data={c.id: c.data for c in config.chunks if (c.data / "chunks").is_dir()},
            chunk_addresses={c.id: c.address for c in config.chunks},
        )


@dataclass(frozen=True, slots=True)
class FsckOutcome:
    report: Report
    source: str  # where the namespace came from
    inodes: int
    chunks: int
    servers: int
    probes: int

    def to_json(self) -> dict[str, object]:
        return {**self.report.to_json(), "source": self.source, "inodes": self.inodes,
                "chunks": self.chunks, "servers": self.servers, "probes": self.probes}


# --- the namespace from a member's state ------------------------------------------------------


def _page(r: FsReader, table: str) -> list[bytes]:
    """Every key of `table` (paged; bounded by the table's size)."""
    keys: list[bytes] = []
    start = b""
    while True:
        rows = r.rows(table, start, 4096)
        keys += [k for k, _ in rows]
        if len(rows) < 4096:
            return keys
        start = rows[-1][0] + b"\x00"


def _read_state(r: FsReader) -> Namespace:
    from fs.meta import fsck as meta_fsck
    from fs.meta.state import INODES

    invariants = tuple(meta_fsck.check(r))
    inodes: dict[InodeId, Inode] = {}
    entries: list[Entry] = []
    opened: set[InodeId] = set()
    for key in _page(r, INODES):
        rec = r.inode(int.from_bytes(key, "big"))
        if rec is None:
            continue  # cannot happen within one read transaction
        inodes[rec.ino] = Inode(rec.ino, rec.mode, rec.nlink, rec.size)
        if r.is_open(rec.ino):
            opened.add(rec.ino)
        if stat.S_ISDIR(rec.mode):
            entries += _entries_of(r, rec.ino)
    chunks: list[ChunkMap] = []
    after: bytes | None = b""
    while after is not None:
        recs, after = r.all_chunks(after, 4096)
        chunks += [ChunkMap(c.inode, c.index, c.handle, c.version, c.replicas)
                   for c in recs]
    servers = {s.server: s.address for s in r.servers()}
    return Namespace(inodes, tuple(entries), tuple(chunks), servers, frozenset(opened),
                     invariants=invariants)


def _entries_of(r: FsReader, parent: InodeId) -> list[Entry]:
    out: list[Entry] = []
    cookie = 0
    while True:
        page = r.entries_after(parent, cookie, 4096)
        for position, name in page:
            found = r.dirent(parent, name)
            out.append(Entry(parent, name, found[0] if found else InodeId(0)))
            cookie = position
        if len(page) < 4096:
            return out


def namespace_from_store(data_dir: Path) -> Namespace:
    """Read a member's FS state from its data folder (safe while it runs: LMDB
    readers never block its writer; this opens its own read transaction)."""
    from fs.meta.machine import open_meta_store

    if not (data_dir / "kv" / "data.mdb").exists():
        raise FileNotFoundError(f"no metadata state in {data_dir}")
    store = open_meta_store(data_dir / "kv")
    try:
        with store.reader() as view:
            return _read_state(FsReader(view))
    finally:
        store.close()


async def _local_member(rpc: RpcClient,
                        target: FsckTarget) -> tuple[Path, str, bool] | None:
    """The data folder to read (the leader's if local), a note on its freshness, and
    whether a member answered (False: the state is read as last applied)."""
    if not target.meta_data:
        return None
    rows = await member_statuses(rpc, target.endpoints)
    by_id = {r["id"]: r for r in rows if "id" in r}
    leader = next((r["id"] for r in rows if r.get("role") == "leader"), None)
    order = sorted(target.meta_data, key=lambda i: (i != leader, i not in by_id, i))
    for ident in order:
        row = by_id.get(ident)
        if row is None:
            continue
        try:  # the ReadIndex barrier: the member applies all that was committed
            await fs_query_at(rpc, row["address"], StatFsQuery(), timeout=10.0)
        except ClusterUnavailable:
            continue
        return (target.meta_data[ident], f"metadata state of member {ident} (after a barrier)",
                True)
    ident = order[0]
    return target.meta_data[ident], (f"metadata state of member {ident} as last applied "
                                     "(no member answered a read barrier)"), False


# --- the namespace by walking over RPC --------------------------------------------------------


async def _ask(rpc: RpcClient, endpoints: Sequence[str], query: Any, kind: type[Any]) -> Any:
    result = await fs_query(rpc, endpoints, query)
    if isinstance(result, FsErr):
        raise ClusterUnavailable(f"{type(query).__name__}: errno {result.errno} "
                                 f"{result.message}")
    if not isinstance(result, kind):
        raise ClusterUnavailable(f"{type(query).__name__}: unexpected {type(result).__name__}")
    return result


async def walk_namespace(rpc: RpcClient, endpoints: Sequence[str]) -> Namespace:
    """The tree reachable from / with its chunk maps (an incomplete Namespace)."""
    root = (await _ask(rpc, endpoints, GetAttr(ROOT_INODE), AttrResult)).attr
    inodes = {ROOT_INODE: Inode(ROOT_INODE, root.mode, root.nlink, root.size)}
    entries: list[Entry] = []
    todo = [ROOT_INODE]
    while todo:  # bounded: a directory is queued once, when first named
        parent, cookie = todo.pop(), 0
        while True:
            page = await _ask(rpc, endpoints, ReadDir(parent, cookie, MAX_READDIR, ROOT_CRED),
                              EntriesResult)
            for e in page.entries:
                a = e.attr
                entries.append(Entry(parent, e.name, a.inode))
                if a.inode not in inodes and stat.S_ISDIR(a.mode):
                    todo.append(a.inode)
                inodes[a.inode] = Inode(a.inode, a.mode, a.nlink, a.size)
            if not page.more or not page.entries:
                break
            cookie = page.entries[-1].cookie
    chunks: list[ChunkMap] = []
    for inode in inodes.values():
        if stat.S_ISREG(inode.mode) and inode.size > 0:
            chunks += await _chunk_maps(rpc, endpoints, inode)
    servers = (await _ask(rpc, endpoints, ListServers(), ServersResult)).servers
    total = (await _ask(rpc, endpoints, StatFsQuery(), StatFsResult)).statfs.files
    return Namespace(inodes, tuple(entries), tuple(chunks),
                     {s.server: s.address for s in servers}, complete=False, total_inodes=total)


async def _chunk_maps(rpc: RpcClient, endpoints: Sequence[str], inode: Inode) -> list[ChunkMap]:
    out: list[ChunkMap] = []
    count = -(-inode.size // CHUNK_SIZE)
    for first in range(0, count, MAX_LOCATIONS):
        page = await _ask(rpc, endpoints, ChunkLocations(
            inode.ino, first, min(MAX_LOCATIONS, count - first)), ChunksResult)
        out += [ChunkMap(inode.ino, loc.index, loc.handle, loc.version,
                         tuple(s for s, _ in loc.replicas)) for loc in page.locations]
    return out


# --- chunk servers ---------------------------------------------------------------------------


def replica_files(data_dir: Path) -> dict[ChunkHandle, float]:
    """Handles of the replica files in a chunk server's data folder -> seconds
    since each file last changed."""
    out: dict[ChunkHandle, float] = {}
    now = time.time()
    for path in (data_dir / "chunks").iterdir():
        stem, _, ext = path.name.partition(".")
        if ext == "chunk" and stem.isdigit():
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                out[ChunkHandle(int(stem))] = max(0.0, now - path.stat().st_mtime)
    return out


async def probe(rpc: RpcClient, address: str, handle: ChunkHandle, version: ChunkVersion,
                verify: bool) -> ReplicaSeen:
    """What the server at `address` holds of `handle` (see the module doc)."""
    try:
        if verify:
            reply = await rpc.call(address, cp.ChunkChecksum(handle), timeout=CHECKSUM_TIMEOUT)
            return ReplicaSeen(True, reply.version, tuple(reply.bad_blocks))
        await rpc.call(address, cp.ChunkRead(handle, version, 0, 1), timeout=PROBE_TIMEOUT)
        return ReplicaSeen(True, version)
    except RemoteError as exc:
        if exc.code == cp.NO_CHUNK:
            return ReplicaSeen(False)
        if exc.code == cp.STALE_VERSION:
            found = cp.replica_version_of(exc.message)
            if found is not None:
                return ReplicaSeen(True, found)
        if exc.code == cp.CHECKSUM:
            return ReplicaSeen(True, version, (cp.bad_block_of(exc.message) or 0,))
        return ReplicaSeen(False, error=f"{exc.code}: {exc.message}")
    except RpcError as exc:
        return ReplicaSeen(False, error=str(exc))


async def observe_server(rpc: RpcClient, server: ServerId, address: str,
                         plan: Mapping[ChunkHandle, ChunkVersion],
                         files: Mapping[ChunkHandle, float] | None, verify: bool,
                         limiter: trio.CapacityLimiter) -> ServerView:
    if not address:
        return ServerView(server, address, False, "no address known")
    try:
        st = await rpc.call(address, cp.ChunkStat(), timeout=PROBE_TIMEOUT)
    except RpcError as exc:
        return ServerView(server, address, False, str(exc))
    seen: dict[ChunkHandle, ReplicaSeen] = {}

    async def one(handle: ChunkHandle, version: ChunkVersion) -> None:
        async with limiter:
            seen[handle] = await probe(rpc, address, handle, version, verify)

    async with trio.open_nursery() as nursery:
        for handle, version in plan.items():
            nursery.start_soon(one, handle, version)
    return ServerView(server, address, True, replicas=seen, files=files, count=st.chunks)


async def observe_servers(rpc: RpcClient, target: FsckTarget, ns: Namespace, verify: bool,
                          only: set[ChunkHandle] | None = None
                          ) -> tuple[dict[ServerId, ServerView], int]:
    """Every server the state or the target knows, probed concurrently; with
    `only`, just those chunks (and no replica count: it covers every chunk)."""
    addresses = {**ns.servers, **{ServerId(i): a for i, a in target.chunk_addresses.items()}}
    files = {ServerId(i): replica_files(d) for i, d in target.chunk_data.items()}
    if only is not None:
        files = {s: {h: age for h, age in f.items() if h in only} for s, f in files.items()}
    plan = probe_plan(ns, files)
    limiter = trio.CapacityLimiter(PROBES_IN_FLIGHT)
    views: dict[ServerId, ServerView] = {}

    async def one(server: ServerId) -> None:
        view = await observe_server(rpc, server, addresses.get(server, ""),
                                    plan.get(server, {}), files.get(server), verify, limiter)
        views[server] = view if only is None else replace(view, count=None)

    async with trio.open_nursery() as nursery:
        for server in sorted(set(addresses) | set(plan)):
            nursery.start_soon(one, server)
    return views, sum(len(p) for p in plan.values())


# --- the whole check -------------------------------------------------------------------------


async def latest_maps(rpc: RpcClient, endpoints: Sequence[str],
                      handles: set[ChunkHandle]) -> dict[ChunkHandle, ChunkMap | None]:
    """The current map of each handle (None: no such chunk any more)."""
    out: dict[ChunkHandle, ChunkMap | None] = {}
    for handle in sorted(handles):
        result = await fs_query(rpc, endpoints, ChunkInfo(handle))
        if isinstance(result, LeaseResult):
            loc = result.location
            out[handle] = ChunkMap(InodeId(0), loc.index, loc.handle, loc.version,
                                   tuple(s for s, _ in loc.replicas))
        elif isinstance(result, FsErr) and result.errno == errno.ENOENT:
            out[handle] = None
    return out


async def _namespace(rpc: RpcClient, target: FsckTarget) -> tuple[Namespace, str, bool]:
    """(namespace, where it came from, whether the metadata service answers)."""
    local = await _local_member(rpc, target)
    if local is not None:
        path, source, answers = local
        return await trio.to_thread.run_sync(namespace_from_store, path), source, answers
    return (await walk_namespace(rpc, target.endpoints),
            "a walk over RPC (no local metadata data folder)", True)


async def check_cluster(target: FsckTarget, *, verify_checksums: bool = False,
                        rpc: RpcClient | None = None) -> FsckOutcome:
    """Gather, cross-check, look again at suspect chunks.  Raises ClusterUnavailable
    if the namespace cannot be read."""
    from tools.common import rpc_client

    if rpc is None:
        async with rpc_client(target.secret, role="fsck") as own:
            return await check_cluster(target, verify_checksums=verify_checksums, rpc=own)
    ns, source, answers = await _namespace(rpc, target)
    views, probes = await observe_servers(rpc, target, ns, verify_checksums)
    report = check(ns, views, replicas=target.replicas)
    again = suspects(report)
    if again and not answers:
        report = Report(report.problems, (*report.notes, "not looked at twice: no metadata "
                                          "member answers"))
    elif again:
        await trio.sleep(SETTLE)
        try:
            ns2 = second_look(ns, await latest_maps(rpc, target.endpoints, again))
        except ClusterUnavailable as exc:
            report = Report(report.problems, (*report.notes, f"not looked at twice: {exc}"))
        else:
            views2, _ = await observe_servers(rpc, target, ns2, verify_checksums, only=again)
            report = persistent(report, check(ns2, views2, replicas=target.replicas))
    return FsckOutcome(report, source, len(ns.inodes), len(ns.chunks), len(views), probes)


def fsck_problems(target: FsckTarget, *, verify_checksums: bool = False) -> list[Problem]:
    """The problems found (empty: clean), for code outside trio (tests)."""
    outcome = trio.run(lambda: check_cluster(target, verify_checksums=verify_checksums))
    return list(outcome.report.problems)


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.cluster import add_target_arguments

    add_target_arguments(parser)
    parser.add_argument("--verify-checksums", action="store_true",
                        help="have every chunk server verify every block of every replica")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--notes", type=int, default=10, metavar="N",
                        help="show at most N notes (default 10)")


def _print(outcome: FsckOutcome, max_notes: int) -> None:
    report = outcome.report
    print(f"checked {outcome.inodes} inodes, {outcome.chunks} chunks, {outcome.servers} chunk "
          f"servers ({outcome.probes} replicas probed); namespace from {outcome.source}")
    for problem in report.problems:
        print(f"  {problem}")
    for note in report.notes[:max_notes]:
        print(f"  note: {note}")
    if len(report.notes) > max_notes:
        print(f"  ({len(report.notes) - max_notes} more notes; --notes N shows more)")
    print("clean" if report.clean else f"{len(report.problems)} problem(s)")


def run(args: argparse.Namespace) -> int:
    from tools.cli import UserError
    from tools.cluster import load_target
    from tools.clusterconf import read_secret

    _, config = load_target(args)
    target = FsckTarget.from_config(config, read_secret(config))
    try:
        outcome = trio.run(lambda: check_cluster(target, verify_checksums=args.verify_checksums))
    except ClusterUnavailable as exc:
        raise UserError(f"fsck could not run: {exc}") from None
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        _print(outcome, args.notes)
    return 0 if outcome.report.clean else 1
