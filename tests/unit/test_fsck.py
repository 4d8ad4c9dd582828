"""fs/fsck.py: each cross-check finds what it names, and nothing on a healthy state."""

from __future__ import annotations

import stat

from fs.fsck import (
    ChunkMap,
    Entry,
    Inode,
    Kind,
    Namespace,
    ReplicaSeen,
    ServerView,
    check,
    persistent,
    probe_plan,
    second_look,
    suspects,
)
from fs.types import CHUNK_SIZE, ROOT_INODE, ChunkHandle, ChunkVersion, InodeId, ServerId

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
S1, S2, S3 = ServerId(1), ServerId(2), ServerId(3)
SERVERS = {S1: "a:1", S2: "a:2", S3: "a:3"}


def ino(n: int) -> InodeId:
    return InodeId(n)


def h(n: int) -> ChunkHandle:
    return ChunkHandle(n)


def healthy(**changes: object) -> Namespace:
    """/ (1) -> d (2) -> f (3, two chunks, also linked as /g)."""
    inodes = {
        ROOT_INODE: Inode(ROOT_INODE, DIR, 3, 0),
        ino(2): Inode(ino(2), DIR, 2, 0),
        ino(3): Inode(ino(3), REG, 2, CHUNK_SIZE + 10),
    }
    entries = (Entry(ROOT_INODE, b"d", ino(2)), Entry(ino(2), b"f", ino(3)),
               Entry(ROOT_INODE, b"g", ino(3)))
    chunks = (ChunkMap(ino(3), 0, h(10), ChunkVersion(2), (S1, S2, S3)),
              ChunkMap(ino(3), 1, h(11), ChunkVersion(1), (S2, S3, S1)))
    fields: dict[str, object] = {"inodes": inodes, "entries": entries, "chunks": chunks,
                                 "servers": SERVERS}
    fields.update(changes)
    return Namespace(**fields)  # type: ignore[arg-type]


def views(ns: Namespace, **overrides: ServerView) -> dict[ServerId, ServerView]:
    """Every server holds exactly what the maps list, at the map's version."""
    out = {}
    for s, plan in probe_plan(ns, {}).items():
        seen = {handle: ReplicaSeen(True, v) for handle, v in plan.items()}
        out[s] = ServerView(s, SERVERS[s], True, replicas=seen, files=dict.fromkeys(seen, 5.0),
                            count=len(seen))
    for key, view in overrides.items():
        out[ServerId(int(key[1:]))] = view
    return out


def kinds(ns: Namespace, servers: dict[ServerId, ServerView], replicas: int = 3) -> list[Kind]:
    return [p.kind for p in check(ns, servers, replicas=replicas).problems]


def with_replica(ns: Namespace, server: ServerId, handle: ChunkHandle, seen: ReplicaSeen,
                 files: dict[ChunkHandle, float] | None = None) -> dict[ServerId, ServerView]:
    out = views(ns)
    old = out[server]
    replicas = {**old.replicas, handle: seen}
    out[server] = ServerView(server, old.address, True, replicas=replicas,
                             files=old.files if files is None else files, count=old.count)
    return out


def test_a_healthy_file_system_is_clean() -> None:
    ns = healthy()
    report = check(ns, views(ns), replicas=3)
    assert report.clean, report.problems
    assert report.notes == ()


def test_orphaned_inode_is_unreachable_and_not_open() -> None:
    inodes = {**healthy().inodes, ino(4): Inode(ino(4), REG, 0, 0)}
    ns = healthy(inodes=inodes)
    assert kinds(ns, views(ns)) == [Kind.ORPHANED_INODE]
    # The same inode held open (an unlinked file still in use) is fine.
    ns_open = healthy(inodes=inodes, open_inodes=frozenset({ino(4)}))
    assert kinds(ns_open, views(ns_open)) == []


def test_a_directory_cycle_cut_off_from_the_root_is_orphaned() -> None:
    inodes = {**healthy().inodes, ino(5): Inode(ino(5), DIR, 3, 0),
              ino(6): Inode(ino(6), DIR, 3, 0)}
    entries = (*healthy().entries, Entry(ino(5), b"x", ino(6)), Entry(ino(6), b"y", ino(5)))
    ns = healthy(inodes=inodes, entries=entries)
    problems = check(ns, views(ns), replicas=3).problems
    assert [(p.kind, p.inode) for p in problems if p.kind is Kind.ORPHANED_INODE] == [
        (Kind.ORPHANED_INODE, ino(5)), (Kind.ORPHANED_INODE, ino(6))]


def test_dangling_entry_and_nlink_mismatch() -> None:
    entries = (*healthy().entries, Entry(ino(2), b"ghost", ino(99)))
    ns = healthy(entries=entries)
    assert kinds(ns, views(ns)) == [Kind.DANGLING_ENTRY]
    inodes = {**healthy().inodes, ino(3): Inode(ino(3), REG, 1, CHUNK_SIZE + 10)}
    ns2 = healthy(inodes=inodes)
    problems = check(ns2, views(ns2), replicas=3).problems
    assert [(p.kind, p.inode) for p in problems] == [(Kind.NLINK_MISMATCH, ino(3))]
    assert "expected 2" in problems[0].message


def test_directory_nlink_counts_subdirectories() -> None:
    inodes = {**healthy().inodes, ROOT_INODE: Inode(ROOT_INODE, DIR, 2, 0)}
    ns = healthy(inodes=inodes)
    problems = check(ns, views(ns), replicas=3).problems
    assert [(p.kind, p.inode) for p in problems] == [(Kind.NLINK_MISMATCH, ROOT_INODE)]


def test_metadata_invariants_replace_the_entry_checks() -> None:
    entries = (*healthy().entries, Entry(ino(2), b"ghost", ino(99)))
    ns = healthy(entries=entries, invariants=("entry 2/b'ghost' -> 99: bad parent or child",))
    assert kinds(ns, views(ns)) == [Kind.META_INVARIANT]


def test_chunk_of_a_missing_file_and_chunk_past_eof() -> None:
    stray = ChunkMap(ino(77), 0, h(12), ChunkVersion(1), (S1, S2, S3))
    past = ChunkMap(ino(3), 5, h(13), ChunkVersion(1), (S1, S2, S3))
    ns = healthy(chunks=(*healthy().chunks, stray, past))
    assert kinds(ns, views(ns)) == [Kind.CHUNK_WITHOUT_FILE, Kind.CHUNK_PAST_EOF]


def test_missing_replica() -> None:
    ns = healthy()
    servers = with_replica(ns, S2, h(10), ReplicaSeen(False), files={h(11): 5.0})
    problems = check(ns, servers, replicas=3).problems
    assert [(p.kind, p.handle, p.server) for p in problems] == [
        (Kind.MISSING_REPLICA, h(10), S2)]


def test_stale_ahead_and_checksum_replicas() -> None:
    ns = healthy()
    assert kinds(ns, with_replica(ns, S3, h(10), ReplicaSeen(True, 1))) == [Kind.STALE_REPLICA]
    assert kinds(ns, with_replica(ns, S3, h(10), ReplicaSeen(True, 3))) == [Kind.REPLICA_AHEAD]
    assert kinds(ns, with_replica(ns, S3, h(10), ReplicaSeen(True, 2, (0, 7)))) == [
        Kind.CHECKSUM]
    assert kinds(ns, with_replica(ns, S3, h(10), ReplicaSeen(False, error="EIO: disk"))) == [
        Kind.PROBE_FAILED]


def test_no_readable_replica() -> None:
    ns = healthy()
    servers = views(ns)
    for s in (S1, S2, S3):
        old = servers[s]
        servers[s] = ServerView(s, old.address, True,
                                replicas={**old.replicas, h(11): ReplicaSeen(False)},
                                files=old.files, count=old.count)
    found = kinds(ns, servers)
    assert found.count(Kind.MISSING_REPLICA) == 3
    assert Kind.UNREADABLE_CHUNK in found


def test_unreachable_server_is_reported_once_with_its_chunk_count() -> None:
    ns = healthy()
    servers = views(ns, s2=ServerView(S2, "a:2", False, error="connection refused"))
    problems = check(ns, servers, replicas=3).problems
    assert [(p.kind, p.server) for p in problems] == [(Kind.SERVER_UNREACHABLE, S2)]
    assert "listed by 2 chunk(s)" in problems[0].message


def test_under_replicated_and_unknown_server() -> None:
    short = ChunkMap(ino(3), 1, h(11), ChunkVersion(1), (S2, S3))
    ns = healthy(chunks=(healthy().chunks[0], short))
    assert kinds(ns, views(ns)) == [Kind.UNDER_REPLICATED]
    # With only two chunk servers known, two replicas is all that can be had.
    two = {S2: "a:2", S3: "a:3"}
    only = ChunkMap(ino(3), 0, h(10), ChunkVersion(1), (S2, S3))
    ns2 = healthy(chunks=(only,), servers=two,
                  inodes={**healthy().inodes, ino(3): Inode(ino(3), REG, 2, 10)})
    assert kinds(ns2, views(ns2)) == []
    odd = ChunkMap(ino(3), 0, h(10), ChunkVersion(1), (S2, S3, ServerId(9)))
    ns3 = healthy(chunks=(odd,), servers=two,
                  inodes={**healthy().inodes, ino(3): Inode(ino(3), REG, 2, 10)})
    found = kinds(ns3, {**views(ns2)})
    assert found == [Kind.UNKNOWN_SERVER, Kind.SERVER_UNREACHABLE]


def test_garbage_replicas_and_stray_files() -> None:
    ns = healthy()
    files = {h(10): 5.0, h(11): 5.0, h(50): 1000.0, h(51): 1.0, h(52): 3.0}
    servers = with_replica(ns, S1, h(50), ReplicaSeen(True, 1), files=files)
    servers[S1] = ServerView(S1, "a:1", True, replicas={
        **servers[S1].replicas, h(51): ReplicaSeen(False), h(52): ReplicaSeen(True, 4)},
        files=files, count=4)
    report = check(ns, servers, replicas=3)
    # 50: indexed, unchanged for longer than the collection takes; 51: a file the
    # server does not even index; 52: indexed and recent, so collection is pending.
    assert [(p.kind, p.handle, p.server) for p in report.problems] == [
        (Kind.GARBAGE, h(50), S1), (Kind.GARBAGE, h(51), S1)]
    assert "does not index" in report.problems[1].message
    assert any("await the leader's garbage collection: [52]" in n for n in report.notes)
    # With a shorter grace the recent one is a problem too.
    shorter = check(ns, servers, replicas=3, garbage_grace=2.0)
    assert (Kind.GARBAGE, h(52), S1) in [(p.kind, p.handle, p.server) for p in shorter.problems]


def test_garbage_of_unknown_age_is_only_noted() -> None:
    ns = healthy()
    servers = views(ns)
    old = servers[S1]
    servers[S1] = ServerView(S1, old.address, True, replicas={
        **old.replicas, h(60): ReplicaSeen(True, 1)}, files=None, count=len(old.replicas) + 3)
    report = check(ns, servers, replicas=3)
    assert report.clean
    assert any("1 replica(s)" in n and "[60]" in n for n in report.notes)
    assert any("2 replica(s) no chunk map lists on it (handles and ages unknown" in n
               for n in report.notes)


def test_an_incomplete_namespace_notes_what_it_cannot_tell() -> None:
    ns = healthy(complete=False, total_inodes=5)
    servers = with_replica(ns, S1, h(50), ReplicaSeen(True, 1))
    report = check(ns, servers, replicas=3)
    assert report.clean  # no orphan or garbage verdicts without the whole state
    assert any("2 inodes are not reachable" in n for n in report.notes)
    assert any("garbage not checked" in n for n in report.notes)


def test_probe_plan_lists_mapped_handles_and_unmapped_files() -> None:
    ns = healthy()
    plan = probe_plan(ns, {S1: [h(10), h(60)], ServerId(4): [h(70)]})
    assert plan[S1] == {h(10): 2, h(11): 1, h(60): 0}
    assert plan[ServerId(4)] == {h(70): 0}
    assert plan[S2] == {h(10): 2, h(11): 1}


def test_only_findings_seen_twice_are_reported() -> None:
    ns = healthy()
    servers = with_replica(ns, S2, h(10), ReplicaSeen(False))
    servers = {**servers, S1: ServerView(S1, "a:1", True, replicas={
        **servers[S1].replicas, h(50): ReplicaSeen(True, 1),
        h(11): ReplicaSeen(True, 1, (3,))}, files={h(10): 1.0, h(11): 1.0, h(50): 500.0},
        count=3)}
    first = check(ns, servers, replicas=3)
    assert {p.kind for p in first.problems} == {
        Kind.MISSING_REPLICA, Kind.GARBAGE, Kind.CHECKSUM}
    assert suspects(first) == {h(10), h(50)}  # a checksum failure needs no second look

    # Meanwhile the replica on S2 was dropped from the map and chunk 50 was
    # allocated on S1: the second look at those chunks finds nothing wrong.
    latest = {h(10): ChunkMap(ino(3), 0, h(10), ChunkVersion(3), (S1, S3)),
              h(50): ChunkMap(ino(3), 2, h(50), ChunkVersion(1), (S1,))}
    again = second_look(ns, latest)
    assert [c.handle for c in again.chunks] == [h(10), h(50)]
    views2 = {s: ServerView(s, SERVERS[s], True, replicas={
        handle: ReplicaSeen(True, v) for handle, v in plan.items()})
        for s, plan in probe_plan(again, {}).items()}
    second = check(again, views2, replicas=1)
    kept = persistent(first, second)
    assert [p.kind for p in kept.problems] == [Kind.CHECKSUM]
    assert sum("passed over" in n for n in kept.notes) == 2

    # Found again: kept.
    still = persistent(first, check(ns, servers, replicas=3))
    assert still.problems == first.problems
