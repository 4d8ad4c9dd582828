"""Chunk maps: allocation and placement, primary leases (version bump, fencing
tokens, renewal, expiry in log time), replica loss, sizes and truncation, garbage."""

from __future__ import annotations

import errno
import stat

from fs.meta.commands import (
    AcquireLease,
    AllocChunk,
    ChunkInfo,
    ChunkLocations,
    DropReplica,
    Garbage,
    ListServers,
    Mknod,
    ServerState,
    SetAttr,
    SetSize,
    StatFsQuery,
    UnderReplicated,
)
from fs.meta.context import FsConfig
from fs.meta.results import (
    ChunkResult,
    ChunksResult,
    CountResult,
    HandlesResult,
    LeaseResult,
    ServersResult,
    StatFsResult,
)
from fs.types import (
    CHUNK_SIZE,
    MAX_FILE_SIZE,
    ChunkHandle,
    ChunkLocation,
    InodeId,
    ServerId,
    SetAttrFields,
)
from tests.unit.test_fs_meta_support import (
    ALICE,
    ROOT,
    ROOT_DIR,
    FsHarness,
    Session,
    code,
    fs,
)

__all__ = ["fs"]
S1, S2, S3, S4 = (ServerId(i) for i in (1, 2, 3, 4))
LEASE_MS = FsConfig().lease_ms


def _servers(h: FsHarness, n: int = 4) -> None:
    for i in range(1, n + 1):
        h.leader(ServerState(ServerId(i), f"10.0.0.{i}:7000", 100 << 30, (50 - i) << 30, True))


def _file(h: FsHarness) -> tuple[Session, InodeId]:
    _servers(h)
    s = h.session()
    return s, s.create(ROOT_DIR, b"f").inode


def _alloc(s: Session, ino: InodeId, index: int, placement: tuple[ServerId, ...]) -> ChunkLocation:
    result = s.ok(AllocChunk(ino, index, placement))
    assert isinstance(result, ChunkResult)
    return result.location


def _lease(s: Session, ino: InodeId, index: int, live: tuple[ServerId, ...]) -> LeaseResult:
    result = s.ok(AcquireLease(ino, index, live))
    assert isinstance(result, LeaseResult)
    return result


def test_alloc_creates_the_chunk_on_the_leaders_placement(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S2, S1, S3))
    assert loc.index == 0 and loc.version == 1
    assert loc.replicas == ((S2, "10.0.0.2:7000"), (S1, "10.0.0.1:7000"), (S3, "10.0.0.3:7000"))
    again = _alloc(s, ino, 0, (S4,))
    assert again == loc  # a second allocation of the same chunk returns the first
    other = _alloc(s, ino, 5, (S1,))
    assert other.handle != loc.handle and other.replicas == ((S1, "10.0.0.1:7000"),)
    found = fs.ask(ChunkLocations(ino, 0, 10))
    assert isinstance(found, ChunksResult) and found.locations == (loc, other)  # hole at 1..4


def test_alloc_takes_at_most_the_replication_factor(fs: FsHarness) -> None:
    s, ino = _file(fs)
    assert len(_alloc(s, ino, 0, (S1, S2, S3, S4)).replicas) == FsConfig().replicas


def test_alloc_with_no_live_server_is_enospc_and_bad_placement_einval(fs: FsHarness) -> None:
    s, ino = _file(fs)
    assert s.fails(AllocChunk(ino, 0, ())) == errno.ENOSPC
    assert s.fails(AllocChunk(ino, 0, (S1, S1))) == errno.EINVAL
    assert s.fails(AllocChunk(ino, 0, (ServerId(99),))) == errno.EINVAL


def test_alloc_needs_the_file_open_in_the_session_and_within_the_size_limit(
    fs: FsHarness,
) -> None:
    s, ino = _file(fs)
    stranger = fs.session()
    assert stranger.fails(AllocChunk(ino, 0, (S1,))) == errno.EBADF
    assert s.fails(AllocChunk(ino, MAX_FILE_SIZE // CHUNK_SIZE, (S1,))) == errno.EFBIG
    d = s.mkdir(ROOT_DIR, b"d")
    assert s.fails(AllocChunk(d.inode, 0, (S1,))) == errno.EISDIR


def test_lease_grant_bumps_the_version_and_the_token_is_the_entry_index(fs: FsHarness) -> None:
    s, ino = _file(fs)
    _alloc(s, ino, 0, (S1, S2, S3))
    index = fs.log.next_index
    lease = _lease(s, ino, 0, (S2, S1, S3))
    assert lease.primary == S2  # the first live replica in the leader's order
    assert lease.token == index and lease.location.version == 2
    assert lease.secondaries == ((S1, "10.0.0.1:7000"), (S3, "10.0.0.3:7000"))
    assert lease.primary_address == "10.0.0.2:7000" and lease.lease_ms == LEASE_MS


def test_a_live_lease_is_renewed_with_the_same_token_and_version(fs: FsHarness) -> None:
    s, ino = _file(fs)
    _alloc(s, ino, 0, (S1, S2, S3))
    first = _lease(s, ino, 0, (S1, S2, S3))
    fs.advance(LEASE_MS - 1)
    other = fs.session()  # any client asking renews the current lease
    other.open(ino)
    again = _lease(other, ino, 0, (S3, S1))
    assert (again.primary, again.token, again.location.version) == (
        first.primary, first.token, first.location.version)
    assert again.expires_ns > first.expires_ns


def test_an_expired_lease_is_granted_anew_with_a_higher_token(fs: FsHarness) -> None:
    s, ino = _file(fs)
    _alloc(s, ino, 0, (S1, S2, S3))
    first = _lease(s, ino, 0, (S1, S2, S3))
    fs.advance(LEASE_MS)
    second = _lease(s, ino, 0, (S2, S1, S3))
    assert second.token > first.token and second.location.version == first.location.version + 1
    assert second.primary == S2


def test_a_silent_primary_keeps_its_lease_until_it_runs_out_eagain(fs: FsHarness) -> None:
    s, ino = _file(fs)
    _alloc(s, ino, 0, (S1, S2, S3))
    _lease(s, ino, 0, (S1, S2, S3))
    assert s.fails(AcquireLease(ino, 0, (S2, S3))) == errno.EAGAIN
    fs.advance(LEASE_MS)
    assert _lease(s, ino, 0, (S2, S3)).primary == S2


def test_lease_with_no_live_replica_is_eio_and_needs_an_allocated_chunk(fs: FsHarness) -> None:
    s, ino = _file(fs)
    assert s.fails(AcquireLease(ino, 0, (S1,))) == errno.ENOENT
    _alloc(s, ino, 0, (S1, S2))
    assert s.fails(AcquireLease(ino, 0, (S3, S4))) == errno.EIO
    assert s.fails(AcquireLease(ino, 0, ())) == errno.EIO  # the leader knows none live


def test_drop_replica_removes_it_and_bumps_the_version_in_one_entry(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2, S3))
    lease = _lease(s, ino, 0, (S1, S2, S3))
    before = fs.machine.applied_index
    dropped = s.ok(DropReplica(loc.handle, S3))
    assert fs.machine.applied_index == before + 1
    assert isinstance(dropped, ChunkResult)
    assert [r for r, _ in dropped.location.replicas] == [S1, S2]
    assert dropped.location.version == lease.location.version + 1
    assert s.ok(DropReplica(loc.handle, S3)) == dropped  # idempotent


def test_dropping_the_primary_ends_its_lease_at_once(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2, S3))
    first = _lease(s, ino, 0, (S1, S2, S3))
    s.ok(DropReplica(loc.handle, S1))
    second = _lease(s, ino, 0, (S1, S2, S3))
    assert second.primary == S2 and second.token > first.token


def test_the_last_replica_is_never_dropped_eio(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2))
    s.ok(DropReplica(loc.handle, S1))
    assert s.fails(DropReplica(loc.handle, S2)) == errno.EIO
    assert s.fails(DropReplica(ChunkHandle(999), S2)) == errno.ENOENT


def test_bad_replica_from_the_leader_drops_it_too(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2))
    result = fs.leader(DropReplica(loc.handle, S2))
    assert isinstance(result, ChunkResult) and result.location.replicas == ((S1, "10.0.0.1:7000"),)


def test_set_size_grows_after_writes_and_never_shrinks_without_truncate(fs: FsHarness) -> None:
    s, ino = _file(fs)
    first = s.attr_of(SetSize(ino, 1000, False, ROOT))
    assert first.size == 1000
    second = s.attr_of(SetSize(ino, 10, False, ROOT))
    assert second.size == 1000 and second.mtime_ns > first.mtime_ns  # a write, still
    assert s.fails(SetSize(ino, MAX_FILE_SIZE + 1, False, ROOT)) == errno.EFBIG
    assert fs.session().fails(SetSize(ino, 5, False, ROOT)) == errno.EBADF


def test_write_by_non_root_clears_setuid_and_setgid(fs: FsHarness) -> None:
    s, ino = _file(fs)
    s.ok(SetAttr(ino, SetAttrFields(mode=0o6777), ROOT))
    assert s.attr_of(SetSize(ino, 1, False, ROOT)).mode & 0o7777 == 0o6777
    assert s.attr_of(SetSize(ino, 2, False, ALICE)).mode & 0o7777 == 0o777


def test_truncate_releases_whole_chunks_past_the_end(fs: FsHarness) -> None:
    s, ino = _file(fs)
    locs = [_alloc(s, ino, i, (S1, S2)) for i in range(4)]
    s.ok(SetSize(ino, 4 * CHUNK_SIZE, False, ROOT))
    assert fs.attr(ino).blocks == 4 * CHUNK_SIZE // 512
    truncated = s.attr_of(SetSize(ino, CHUNK_SIZE + 1, True, ROOT))  # keeps chunks 0 and 1
    assert truncated.size == CHUNK_SIZE + 1
    found = fs.ask(ChunkLocations(ino, 0, 10))
    assert isinstance(found, ChunksResult) and found.locations == tuple(locs[:2])
    gone = fs.ask(Garbage(S1, tuple(loc.handle for loc in locs)))
    assert gone == HandlesResult((locs[2].handle, locs[3].handle))
    s.ok(SetAttr(ino, SetAttrFields(size=0), ROOT))  # truncate(2) does the same
    assert fs.ask(ChunkLocations(ino, 0, 10)) == ChunksResult(())


def test_garbage_is_unknown_handles_and_replicas_not_listed(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2))
    _lease(s, ino, 0, (S1, S2))  # bumps the map's version: listed replicas lag, not garbage
    assert fs.ask(Garbage(S1, (loc.handle, ChunkHandle(777)))) == HandlesResult(
        (ChunkHandle(777),))
    assert fs.ask(Garbage(S3, (loc.handle,))) == HandlesResult((loc.handle,))
    s.ok(DropReplica(loc.handle, S2))
    assert fs.ask(Garbage(S2, (loc.handle,))) == HandlesResult((loc.handle,))


def test_server_records_statfs_and_under_replication(fs: FsHarness) -> None:
    s, ino = _file(fs)
    listed = fs.ask(ListServers())
    assert isinstance(listed, ServersResult) and [r.server for r in listed.servers] == [
        S1, S2, S3, S4]
    fs.leader(ServerState(S4, "10.0.0.4:7000", 100 << 30, 46 << 30, False))  # S4 died
    st = fs.ask(StatFsQuery())
    assert isinstance(st, StatFsResult)
    assert st.statfs.blocks == 3 * (100 << 30) // 3 // st.statfs.block_size
    assert st.statfs.blocks_free == (49 + 48 + 47) * (1 << 30) // 3 // st.statfs.block_size
    assert st.statfs.files == 2  # root and f
    _alloc(s, ino, 0, (S1, S2, S4))
    _alloc(s, ino, 1, (S1, S2, S3))
    assert fs.ask(UnderReplicated((S1, S2, S3), 3)) == CountResult(1, True)
    assert fs.ask(UnderReplicated((S1, S2, S3), 3, limit=1)) == CountResult(1, False)


def test_server_state_is_the_leaders_command_only(fs: FsHarness) -> None:
    s = fs.session()
    assert s.fails(ServerState(S1, "x:1", 1, 1, True)) == errno.EPERM


def test_locations_of_a_directory_are_eisdir_and_of_a_fifo_einval(fs: FsHarness) -> None:
    s = fs.session()
    d = s.mkdir(ROOT_DIR, b"d")
    fifo = s.attr_of(Mknod(InodeId(ROOT_DIR), b"p", stat.S_IFIFO | 0o644, 0, ROOT))
    assert code(fs.ask(ChunkLocations(d.inode, 0, 1))) == errno.EISDIR
    assert code(fs.ask(ChunkLocations(fifo.inode, 0, 1))) == errno.EINVAL


def test_chunk_info_reports_the_last_lease_by_handle(fs: FsHarness) -> None:
    s, ino = _file(fs)
    loc = _alloc(s, ino, 0, (S1, S2))
    never = fs.ask(ChunkInfo(loc.handle))
    assert isinstance(never, LeaseResult) and (never.primary, never.token) == (0, 0)
    lease = _lease(s, ino, 0, (S2, S1))
    assert fs.ask(ChunkInfo(loc.handle)) == lease
    assert code(fs.ask(ChunkInfo(ChunkHandle(424242)))) == errno.ENOENT
