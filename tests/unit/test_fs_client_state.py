"""fs/client caches, per-file state, error translation, config and run_all."""

from __future__ import annotations

import errno
import stat

import pytest
import trio

from coord.kv.remote import KvError, KvTimeout
from coord.rpc import ConnectionLost, ProtocolError, RemoteError, ReplyExpired, Timeout, Unavailable
from fs.chunk import protocol as cp
from fs.client.caches import LeaseTable, LocationCache, Suspects, Unknown
from fs.client.config import FsClientConfig
from fs.client.errors import is_unreachable, translate
from fs.client.files import FileState
from fs.client.tasks import run_all
from fs.meta.results import LeaseResult
from fs.types import (
    ROOT_CRED,
    Attr,
    ChunkHandle,
    ChunkLocation,
    ChunkVersion,
    Cred,
    FsError,
    InodeId,
    ServerId,
)

INO = InodeId(7)
R3 = ((ServerId(1), "a:1"), (ServerId(2), "b:1"), (ServerId(3), "c:1"))


def loc(index: int, version: int = 1, replicas: tuple[tuple[ServerId, str], ...] = R3,
        handle: int = 100) -> ChunkLocation:
    return ChunkLocation(index, ChunkHandle(handle + index), ChunkVersion(version), replicas)


# --------------------------------------------------------------------------- location cache


def test_location_cache_answers_holes_and_locations_until_ttl() -> None:
    cache = LocationCache(ttl=5.0, max_entries=100)
    assert isinstance(cache.get(INO, 0, now=0.0), Unknown)
    cache.put_range(INO, 0, 4, [loc(1), loc(3)], now=10.0)
    assert cache.get(INO, 0, 11.0) is None  # a hole, known
    assert cache.get(INO, 1, 11.0) == loc(1)
    assert isinstance(cache.get(INO, 4, 11.0), Unknown)  # outside the answered range
    assert isinstance(cache.get(INO, 1, 15.0), Unknown)  # expired
    assert len(cache) == 3


def test_location_cache_invalidation_and_lru_bound() -> None:
    cache = LocationCache(ttl=100.0, max_entries=3)
    for i in range(3):
        cache.put(INO, i, loc(i), now=0.0)
    assert cache.get(INO, 0, 1.0) == loc(0)  # 0 is now the most recent
    cache.put(INO, 3, loc(3), now=1.0)  # evicts 1, the least recently used
    assert isinstance(cache.get(INO, 1, 1.0), Unknown)
    assert cache.get(INO, 0, 1.0) == loc(0)
    cache.invalidate(INO, 0)
    assert isinstance(cache.get(INO, 0, 1.0), Unknown)
    cache.put(InodeId(8), 0, loc(0), now=1.0)
    cache.drop_inode(INO)
    assert len(cache) == 1 and cache.get(InodeId(8), 0, 1.0) == loc(0)


def _lease(location: ChunkLocation, primary: int = 1, token: int = 50) -> LeaseResult:
    return LeaseResult(location, ServerId(primary), token, 0, 10_000)


def test_lease_table_expiry_and_replica_drop() -> None:
    table = LeaseTable()
    table.put(INO, 0, _lease(loc(0)), valid_until=8.0)
    assert table.get(INO, 0, 7.9) is not None and table.get(INO, 0, 8.0) is None
    # A secondary dropped: same token, fewer replicas, higher version.
    smaller = loc(0, version=3, replicas=R3[:2])
    table.replace_location(INO, 0, smaller)
    held = table.get(INO, 0, 1.0)
    assert held is not None and held.location == smaller and held.token == 50
    assert [a for _, a in held.secondaries] == ["b:1"]
    # The primary dropped: the lease is gone.
    table.replace_location(INO, 0, loc(0, version=4, replicas=R3[1:2]))
    assert table.get(INO, 0, 1.0) is None


def test_lease_table_drop_from_forgets_later_chunks_only() -> None:
    table = LeaseTable()
    for i in range(4):
        table.put(INO, i, _lease(loc(i)), valid_until=99.0)
    table.drop_from(INO, 2)
    assert [table.get(INO, i, 0.0) is not None for i in range(4)] == [True, True, False, False]


def test_suspects_expire() -> None:
    suspects = Suspects(ttl=10.0)
    suspects.mark("a:1", now=0.0)
    assert suspects.current(5.0) == {"a:1"}
    assert suspects.current(10.0) == frozenset()
    suspects.mark("b:1", now=20.0)
    suspects.clear("b:1")
    assert suspects.current(21.0) == frozenset()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("failure", "code"), [
    (trio.TooSlowError(), errno.ETIMEDOUT),
    (Timeout("slow"), errno.ETIMEDOUT),
    (KvTimeout("no leader"), errno.ETIMEDOUT),
    (RemoteError(cp.ENOSPC, "disk full"), errno.ENOSPC),
    (RemoteError(cp.CHECKSUM, "block 3"), errno.EIO),
    (RemoteError(cp.STALE_VERSION, "replica at version 2"), errno.EIO),
    (Unavailable("refused"), errno.EIO),
    (ConnectionLost("reset"), errno.EIO),
    (ReplyExpired("forgot"), errno.EIO),
    (ProtocolError("garbage"), errno.EIO),
    (KvError("bad"), errno.EIO),
    (OSError(errno.ECONNREFUSED, "refused"), errno.EIO),
    (FsError(errno.EACCES, "no"), errno.EACCES),
])
def test_every_failure_kind_has_one_errno(failure: BaseException, code: int) -> None:
    translated = translate(failure, "op")
    assert isinstance(translated, FsError) and translated.errno == code
    if isinstance(failure, FsError):
        assert translated is failure


def test_untranslatable_failures_are_bugs() -> None:
    with pytest.raises(TypeError):
        translate(ValueError("bug"))


def test_unreachable_means_no_answer_at_all() -> None:
    assert is_unreachable(Unavailable("x")) and is_unreachable(Timeout("x"))
    assert not is_unreachable(RemoteError(cp.EIO, "disk")) and not is_unreachable(ReplyExpired(""))


# --------------------------------------------------------------------------- config


def test_config_validation() -> None:
    FsClientConfig(meta_endpoints=("a:1",))
    bad: list[dict[str, object]] = [
        {"meta_endpoints": ()},
        {"op_timeout": 0.0},
        {"op_timeout": float("inf")},
        {"meta_attempt_timeout": 40.0},
        {"push_part": 0},
        {"write_buffer": 1 << 40},
        {"flushes_in_flight": 0},
        {"lease_margin": 10.0},
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            FsClientConfig(**{"meta_endpoints": ("a:1",), **fields})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- file state


def _attr(size: int = 0, mode: int = stat.S_IFREG | 0o6755) -> Attr:
    return Attr(INO, mode, 1, 0, 0, size, 1, 2, 3)


ALICE = Cred(1000, 1000)


def test_overlay_shows_unflushed_size_mtime_and_lost_setid_bits() -> None:
    state = FileState(INO, _attr(size=10))
    assert state.overlay(_attr(size=10)) == _attr(size=10)
    state.buffered(100, b"xyz", ALICE, now_ns=99)
    seen = state.overlay(_attr(size=10))
    assert (seen.size, seen.mtime_ns, seen.ctime_ns) == (103, 99, 99)
    assert stat.S_IMODE(seen.mode) == 0o755  # a non-root writer kills set-id bits
    ticket, cred = state.start_job([(100, 103)])
    assert (ticket, cred) == (0, ALICE) and state.writer == ROOT_CRED
    state.buffer.take()
    assert state.dirty  # the job still runs
    state.end_job(ticket)
    assert not state.dirty and state.size == 10  # the service's answer rules again
    state.truncated(_attr(size=50))
    assert state.written_end == 50


def test_errors_of_buffered_data_are_reported_once() -> None:
    state = FileState(INO, _attr())
    state.fail(FsError(errno.ENOSPC))
    state.fail(FsError(errno.EIO))  # the first one is kept
    error = state.take_error()
    assert error is not None and error.errno == errno.ENOSPC
    assert state.take_error() is None


async def test_overlapping_ranges_are_written_in_job_order_disjoint_ones_at_once() -> None:
    state = FileState(INO, _attr())
    order: list[str] = []
    first, _ = state.start_job([(0, 100), (200, 300)])
    second, _ = state.start_job([(50, 60), (400, 500)])  # overlaps the first's (0, 100)
    third, _ = state.start_job([(250, 260)])

    async def write(ticket: int, start: int, end: int, delay: float = 0.0) -> None:
        await trio.sleep(delay)
        await state.wait_clear(ticket, start, end)
        order.append(f"{ticket}:{start}")
        state.written(ticket, start, end)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, second, 50, 60)  # must wait for first:0
            nursery.start_soon(write, second, 400, 500)  # disjoint: goes at once
            nursery.start_soon(write, first, 0, 100, 0.05)
            await trio.sleep(0.01)
            assert order == ["1:400"]
        # The first job fails before writing (200, 300): ending it unblocks the third.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, third, 250, 260)
            await trio.sleep(0.01)
            assert order[-1] != "2:250"
            state.end_job(first)
    assert order == ["1:400", "0:0", "1:50", "2:250"]
    state.end_job(second)
    state.end_job(third)
    assert state.jobs == 0 and not state.dirty


# --------------------------------------------------------------------------- run_all


async def test_run_all_raises_the_first_failure_unwrapped_and_cancels_the_rest() -> None:
    finished: list[int] = []

    async def ok() -> None:
        await trio.sleep(0.01)
        finished.append(1)

    async def slow() -> None:
        await trio.sleep(10)
        finished.append(2)

    async def bad() -> None:
        raise Unavailable("down")

    with trio.fail_after(5), pytest.raises(Unavailable):
        await run_all([ok, bad, slow], limit=3)
    assert 2 not in finished
    await run_all([ok, ok], limit=1)
    assert finished.count(1) >= 2
