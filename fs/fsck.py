"""Whole-file-system check: namespace <-> chunk maps <-> chunk servers.  Sans-IO.

The collector (tools/fsck.py) gathers a `Namespace` (from a metadata member's
state, or by walking the tree over RPC) and one `ServerView` per chunk
server (what each holds, as probed over RPC and, where its data folder is
local, listed on disk); `check` compares them and returns a `Report`.
`probe_plan` tells the collector what to ask each server.  Findings about
replicas are only believed when they persist: the collector observes the
chunks concerned a second time (their current maps, fresh probes) and
`persistent` keeps what both observations found, so a write or deletion
racing with the check is not reported.

What counts as a problem (`Kind`):

* namespace: an inode unreachable from the root and not open (orphaned), a
  directory entry naming a missing inode or under a non-directory
  (dangling), an nlink that does not count the names (directories: 2 + one
  per subdirectory), a chunk map of a missing or non-regular inode, a chunk
  wholly past the end of its file;
* chunk maps vs servers: a listed replica the server does not hold
  (missing), holds at a lower version (stale) or a higher one (ahead), whose
  blocks fail their checksums, a listed server no one recorded (unknown) or
  that does not answer (unreachable), a chunk with fewer replicas in its
  map than min(replication factor, chunk servers known), or with no
  readable replica at all;
* servers vs maps: a replica file on a server that no map lists for that
  server and that the server does not index (it is never collected), or a
  replica it indexes that no map lists and that has outlived the leader's
  garbage collection (`GARBAGE_GRACE_S` since its last change; younger ones
  are pending collection and only noted) (garbage).

Invariants: `check` is a pure function of its inputs, deterministic in its
output order, and never raises on inconsistent input (an inconsistency is
what it reports).  Checksum failures are facts about the bytes on disk and
are reported from one observation; every other replica-level finding
(`TRANSIENT_KINDS`) needs two.
"""

from __future__ import annotations

import stat
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from fs.types import CHUNK_SIZE, ROOT_INODE, ChunkHandle, ChunkVersion, InodeId, ServerId


class Kind(StrEnum):
    META_INVARIANT = "metadata-invariant"  # fs.meta.fsck found the state inconsistent
    ORPHANED_INODE = "orphaned-inode"
    DANGLING_ENTRY = "dangling-entry"
    NLINK_MISMATCH = "nlink-mismatch"
    CHUNK_WITHOUT_FILE = "chunk-without-file"
    CHUNK_PAST_EOF = "chunk-past-eof"
    UNKNOWN_SERVER = "unknown-server"
    SERVER_UNREACHABLE = "server-unreachable"
    MISSING_REPLICA = "missing-replica"
    STALE_REPLICA = "stale-replica"
    REPLICA_AHEAD = "replica-ahead"
    CHECKSUM = "checksum"
    PROBE_FAILED = "probe-failed"
    UNDER_REPLICATED = "under-replicated"
    UNREADABLE_CHUNK = "unreadable-chunk"
    GARBAGE = "garbage"


#: How long a replica no chunk map lists may wait for the leader's garbage rule:
#: an unchanged replica is reported only in a chunk server's full report (every
#: 60 heartbeats of 1 s by default, fs/chunk/server.py), then deleted.
GARBAGE_GRACE_S = 90.0

#: Findings about a chunk that a concurrent write, deletion or replica drop can
#: produce for a moment: reported only when a second observation finds them too.
TRANSIENT_KINDS = frozenset({Kind.MISSING_REPLICA, Kind.STALE_REPLICA, Kind.REPLICA_AHEAD,
                             Kind.GARBAGE, Kind.UNDER_REPLICATED, Kind.UNREADABLE_CHUNK,
                             Kind.PROBE_FAILED})


@dataclass(frozen=True, slots=True)
class Problem:
    kind: Kind
    message: str
    inode: InodeId | None = None
    handle: ChunkHandle | None = None
    server: ServerId | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @property
    def key(self) -> tuple[Kind, ChunkHandle | None, ServerId | None]:
        return self.kind, self.handle, self.server

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": str(self.kind), "message": self.message}
        for name in ("inode", "handle", "server"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inode:
    ino: InodeId
    mode: int
    nlink: int
    size: int


@dataclass(frozen=True, slots=True)
class Entry:
    parent: InodeId
    name: bytes
    child: InodeId


@dataclass(frozen=True, slots=True)
class ChunkMap:
    inode: InodeId
    index: int
    handle: ChunkHandle
    version: ChunkVersion
    replicas: tuple[ServerId, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    """The metadata side.  `complete`: every inode is listed (read from a member's
    state); otherwise only those reachable from the root (an RPC walk), and
    `total_inodes` says how many exist."""

    inodes: Mapping[InodeId, Inode]
    entries: tuple[Entry, ...]
    chunks: tuple[ChunkMap, ...]
    servers: Mapping[ServerId, str]  # chunk servers recorded in the state -> address
    open_inodes: frozenset[InodeId] = frozenset()
    complete: bool = True
    total_inodes: int | None = None
    invariants: tuple[str, ...] | None = None  # fs.meta.fsck.check's findings (None: not run)


@dataclass(frozen=True, slots=True)
class ReplicaSeen:
    """What a server said about one replica."""

    present: bool
    version: int = 0
    bad_blocks: tuple[int, ...] = ()
    error: str = ""  # the probe failed: neither present nor absent is known


@dataclass(frozen=True, slots=True)
class ServerView:
    server: ServerId
    address: str
    reachable: bool
    error: str = ""
    replicas: Mapping[ChunkHandle, ReplicaSeen] = field(default_factory=dict)
    # replica files on its disk -> seconds since each last changed (None: not listed)
    files: Mapping[ChunkHandle, float] | None = None
    count: int | None = None  # replicas it reports holding (chunk.stat)


@dataclass(frozen=True, slots=True)
class Report:
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()  # what was not checked, and transient findings passed over

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"clean": self.clean, "problems": [p.to_json() for p in self.problems],
                "notes": list(self.notes)}


# --- the plan --------------------------------------------------------------------------------


def referenced(ns: Namespace) -> dict[ServerId, dict[ChunkHandle, ChunkVersion]]:
    """Per server, the handles whose map lists it, with the map's version."""
    out: dict[ServerId, dict[ChunkHandle, ChunkVersion]] = defaultdict(dict)
    for c in ns.chunks:
        for s in c.replicas:
            out[s][c.handle] = c.version
    return out


def probe_plan(ns: Namespace, files: Mapping[ServerId, Iterable[ChunkHandle]]
               ) -> dict[ServerId, dict[ChunkHandle, ChunkVersion]]:
    """What to probe on each server: every handle its maps list (at the map's
    version) and every replica file found on its disk that no map lists (at
    version 0, which only tells presence and the replica's version)."""
    plan = referenced(ns)
    for server, handles in files.items():
        mine = plan.setdefault(server, {})
        for h in handles:
            mine.setdefault(h, ChunkVersion(0))
    return {s: dict(sorted(p.items())) for s, p in sorted(plan.items())}


# --- the checks ------------------------------------------------------------------------------


def _reachable(ns: Namespace) -> set[InodeId]:
    children: dict[InodeId, list[InodeId]] = defaultdict(list)
    for e in ns.entries:
        children[e.parent].append(e.child)
    seen = {ROOT_INODE}
    todo = [ROOT_INODE]
    while todo:  # bounded: each inode is pushed at most once
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                inode = ns.inodes.get(child)
                if inode is not None and stat.S_ISDIR(inode.mode):
                    todo.append(child)
    return seen


def check_namespace(ns: Namespace, notes: list[str]) -> list[Problem]:
    out: list[Problem] = []
    if ROOT_INODE not in ns.inodes:
        return [Problem(Kind.META_INVARIANT, "no root directory", ROOT_INODE)]
    reached = _reachable(ns)
    if ns.complete:
        for ino in sorted(set(ns.inodes) - reached - ns.open_inodes):
            out.append(Problem(Kind.ORPHANED_INODE, f"inode {ino} (nlink "
                               f"{ns.inodes[ino].nlink}) is unreachable from / and not open",
                               ino))
    elif ns.total_inodes is not None and ns.total_inodes > len(reached):
        notes.append(f"{ns.total_inodes - len(reached)} inodes are not reachable from /: "
                     "open files already unlinked, or orphans (telling which needs a "
                     "metadata member's data folder)")
    if ns.invariants is not None:
        return out  # fs.meta.fsck checked entries and link counts exactly
    names: Counter[InodeId] = Counter()
    subdirs: Counter[InodeId] = Counter()
    for e in ns.entries:
        parent, child = ns.inodes.get(e.parent), ns.inodes.get(e.child)
        if parent is None or not stat.S_ISDIR(parent.mode) or child is None:
            out.append(Problem(Kind.DANGLING_ENTRY, f"entry {e.parent}/{e.name!r} -> "
                               f"{e.child}: missing parent/child or parent not a directory",
                               e.child))
            continue
        names[e.child] += 1
        if stat.S_ISDIR(child.mode):
            subdirs[e.parent] += 1
    for ino in sorted(reached & set(ns.inodes)):
        inode = ns.inodes[ino]
        want = 2 + subdirs[ino] if stat.S_ISDIR(inode.mode) else names[ino]
        if inode.nlink != want:
            out.append(Problem(Kind.NLINK_MISMATCH,
                               f"inode {ino}: nlink {inode.nlink}, expected {want}", ino))
    return out


def _chunk_vs_file(ns: Namespace, c: ChunkMap) -> list[Problem]:
    inode = ns.inodes.get(c.inode)
    if inode is None or not stat.S_ISREG(inode.mode):
        if not ns.complete:
            return []  # the walk only lists reachable inodes
        return [Problem(Kind.CHUNK_WITHOUT_FILE, f"chunk {c.handle} (index {c.index}) "
                        f"belongs to inode {c.inode}, which is missing or not a file",
                        c.inode, c.handle)]
    if c.index * CHUNK_SIZE >= inode.size:
        return [Problem(Kind.CHUNK_PAST_EOF, f"chunk {c.handle} (index {c.index}) lies past "
                        f"the end of inode {c.inode} (size {inode.size})", c.inode, c.handle)]
    return []


def _replica(c: ChunkMap, s: ServerId,
             seen: ReplicaSeen | None) -> tuple[Problem | None, bool, str | None]:
    """(problem, readable, note) for the replica of chunk `c` on server `s`."""
    where = f"chunk {c.handle} (inode {c.inode}, index {c.index}) on server {s}"
    if seen is None:
        return None, False, f"{where}: not probed"
    if seen.error:
        return Problem(Kind.PROBE_FAILED, f"{where}: {seen.error}", c.inode, c.handle, s), \
            False, None
    if not seen.present:
        return Problem(Kind.MISSING_REPLICA, f"{where}: listed in the map, not on the server",
                       c.inode, c.handle, s), False, None
    if seen.version < c.version:
        return Problem(Kind.STALE_REPLICA, f"{where}: version {seen.version}, map says "
                       f"{c.version}", c.inode, c.handle, s), False, None
    if seen.version > c.version:
        return Problem(Kind.REPLICA_AHEAD, f"{where}: version {seen.version}, ahead of the "
                       f"map's {c.version}", c.inode, c.handle, s), False, None
    if seen.bad_blocks:
        return Problem(Kind.CHECKSUM, f"{where}: bad block(s) {list(seen.bad_blocks)}",
                       c.inode, c.handle, s), False, None
    return None, True, None


def check_chunks(ns: Namespace, servers: Mapping[ServerId, ServerView], replicas: int,
                 notes: list[str]) -> list[Problem]:
    out: list[Problem] = []
    want = min(replicas, max(1, len(ns.servers)))
    down: Counter[ServerId] = Counter()  # chunks listing a server that did not answer
    for c in sorted(ns.chunks, key=lambda c: c.handle):
        out += _chunk_vs_file(ns, c)
        if len(c.replicas) < want:
            out.append(Problem(Kind.UNDER_REPLICATED, f"chunk {c.handle} (inode {c.inode}, "
                               f"index {c.index}): {len(c.replicas)} replicas in its map, "
                               f"want {want}", c.inode, c.handle))
        readable = 0
        for s in c.replicas:
            if s not in ns.servers:
                out.append(Problem(Kind.UNKNOWN_SERVER, f"chunk {c.handle} lists server {s}, "
                                   "which is not recorded", c.inode, c.handle, s))
            view = servers.get(s)
            if view is None or not view.reachable:
                down[s] += 1
                continue
            problem, ok, note = _replica(c, s, view.replicas.get(c.handle))
            out += [problem] if problem is not None else []
            notes += [note] if note is not None else []
            readable += ok
        if readable == 0 and c.replicas:
            out.append(Problem(Kind.UNREADABLE_CHUNK, f"chunk {c.handle} (inode {c.inode}, "
                               f"index {c.index}): no replica is readable", c.inode, c.handle))
    for s, count in sorted(down.items()):
        error = servers[s].error if s in servers else "not checked"
        out.append(Problem(Kind.SERVER_UNREACHABLE, f"server {s} "
                           f"({ns.servers.get(s, '?')}), listed by {count} chunk(s): {error}",
                           server=s))
    return out


def check_garbage(ns: Namespace, servers: Mapping[ServerId, ServerView], grace: float,
                  notes: list[str]) -> list[Problem]:
    """Replicas no map lists on their server.  One the server indexes is deleted by
    the leader once the server reports it, which for an unchanged replica is only
    at its next full report: within `grace` seconds of its last change (or of
    unknown age) it is pending collection, a note; older, a problem.  A replica
    file the server does not index is never reported, so never collected."""
    if not ns.complete:
        notes.append("garbage not checked: the chunk maps of unreachable (open, unlinked) "
                     "files are unknown without a metadata member's data folder")
        return []
    out: list[Problem] = []
    refs = referenced(ns)
    for s, view in sorted(servers.items()):
        if not view.reachable:
            continue
        mine = refs.get(s, {})
        files = view.files or {}
        pending: list[ChunkHandle] = []
        for h in sorted((set(view.replicas) | set(files)) - set(mine)):
            seen = view.replicas.get(h)
            age = files.get(h) if view.files is not None else None
            if seen is None or seen.error:
                notes.append(f"server {s}: replica file of chunk {h} could not be probed")
            elif not seen.present:
                out.append(Problem(Kind.GARBAGE, f"server {s} holds a replica file of chunk "
                                   f"{h} that it does not index and no chunk map lists "
                                   "(removed at its next restart)", handle=h, server=s))
            elif age is not None and age > grace:
                out.append(Problem(Kind.GARBAGE, f"server {s} holds a replica of chunk {h}, "
                                   f"unchanged for {age:.0f} s, which no chunk map lists on "
                                   "it and the leader has not collected", handle=h, server=s))
            else:
                pending.append(h)
        if pending:
            notes.append(f"server {s}: {len(pending)} replica(s) no chunk map lists, changed "
                         f"within {grace:g} s or of unknown age, await the leader's garbage "
                         f"collection: {pending[:10]}")
        if view.files is None and view.count is not None:
            excess = view.count - sum(1 for r in view.replicas.values() if r.present)
            if excess > 0:
                notes.append(f"server {s}: {excess} replica(s) no chunk map lists on it "
                             "(handles and ages unknown: its data folder is not local)")
    return out


def check(ns: Namespace, servers: Mapping[ServerId, ServerView], *, replicas: int,
          garbage_grace: float = GARBAGE_GRACE_S) -> Report:
    """Every cross-check; problems in a stable order (by check, then by id)."""
    notes: list[str] = []
    problems = [Problem(Kind.META_INVARIANT, m) for m in ns.invariants or ()]
    problems += check_namespace(ns, notes)
    problems += check_chunks(ns, servers, replicas, notes)
    problems += check_garbage(ns, servers, garbage_grace, notes)
    return Report(tuple(problems), tuple(notes))


def suspects(report: Report) -> set[ChunkHandle]:
    """The chunks a second observation must look at again."""
    return {p.handle for p in report.problems
            if p.kind in TRANSIENT_KINDS and p.handle is not None}


def second_look(snapshot: Namespace, latest: Mapping[ChunkHandle, ChunkMap | None]) -> Namespace:
    """The namespace for the second observation: the same tree, and the current maps
    of the suspect chunks only (None: the chunk is gone)."""
    inode_of = {c.handle: c.inode for c in snapshot.chunks}
    chunks = tuple(ChunkMap(inode_of.get(h, c.inode), c.index, c.handle, c.version, c.replicas)
                   for h, c in sorted(latest.items()) if c is not None)
    return Namespace(snapshot.inodes, snapshot.entries, chunks, snapshot.servers,
                     snapshot.open_inodes, snapshot.complete, snapshot.total_inodes,
                     invariants=())


def persistent(first: Report, second: Report) -> Report:
    """`first` without the transient findings about chunks (handle known) that
    `second` - a later observation of those chunks - did not find again."""
    again = {p.key for p in second.problems}
    kept: list[Problem] = []
    notes = list(first.notes)
    for p in first.problems:
        if p.kind in TRANSIENT_KINDS and p.handle is not None and p.key not in again:
            notes.append(f"passed over (gone on a second look): {p}")
            continue
        kept.append(p)
    return Report(tuple(kept), tuple(notes))
