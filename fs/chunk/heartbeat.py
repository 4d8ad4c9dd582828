"""Heartbeats to the metadata leader and reports of bad replicas.

The chunk server talks to the metadata service only through `HeartbeatSink`
(two calls); `FakeMeta` is its in-memory twin for tests, and `MetaLink`
(fs/chunk/metalink.py) the real one over `meta.heartbeat` /
`meta.bad_replica`.

Invariants:

* One heartbeat per `interval` (the next is scheduled from the start of the
  previous one, so a slow leader does not make them drift apart; a
  heartbeat that overruns delays the next, never overlaps it).
* `Reporter` decides what a report lists: every replica (a full report)
  at first, every `full_every`-th time, after any failed heartbeat and
  whenever the leader asks; otherwise only the replicas whose version is
  new or changed since the last report the leader acknowledged (a delta,
  often empty).  So the leader's view is never missing a change: a delta
  is computed against what was *acknowledged*, not what was sent.
* A handle the leader asks us to delete is deleted only if its replica is
  exactly as it was when this heartbeat's report was built (same version,
  length, token and serial): a replica written or re-versioned since is
  kept, and the leader judges it again from the next report.
* A failed heartbeat is logged and retried at the next tick; the loop only
  ends when cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fs.chunk.ordering import ReplicaState
from fs.types import ChunkHandle, ChunkVersion, ServerId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeartbeatReport:
    server_id: ServerId
    address: str  # where clients and other chunk servers reach us
    capacity: int  # bytes of the data file system
    free: int  # bytes available on it
    chunks: list[tuple[ChunkHandle, ChunkVersion]]  # sorted by handle
    full: bool  # chunks lists every replica; else only those new or changed


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    delete: list[ChunkHandle]  # replicas the leader wants gone
    send_full: bool = False  # the leader wants a full report next time


class HeartbeatSink(Protocol):
    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        """Deliver one report to the leader; raises if no leader took it."""
        ...

    async def bad_replica(self, server_id: ServerId, handle: ChunkHandle) -> None:
        """Tell the leader our replica of `handle` failed verification."""
        ...


@dataclass
class FakeMeta:
    """In-memory twin of the metadata leader, for tests.

    Records every report and bad-replica notice; answers each heartbeat with
    the handles in `to_delete` (and forgets them: one order per handle).
    `fail` makes heartbeats raise, like an unreachable leader.
    """

    reports: list[HeartbeatReport] = field(default_factory=list)
    bad: list[tuple[ServerId, ChunkHandle]] = field(default_factory=list)
    to_delete: set[ChunkHandle] = field(default_factory=set)
    fail: bool = False
    want_full: bool = False  # answer send_full
    beat: trio.Event = field(default_factory=trio.Event)  # set (and replaced) per heartbeat

    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        if self.fail:
            raise ConnectionError("fake leader unreachable")
        self.reports.append(report)
        out = sorted(self.to_delete)
        self.to_delete.clear()
        self.beat.set()
        self.beat = trio.Event()
        return HeartbeatAnswer(out, self.want_full)

    async def bad_replica(self, server_id: ServerId, handle: ChunkHandle) -> None:
        self.bad.append((server_id, handle))


class Reporter:
    """Chooses full reports or deltas (see the module docstring).  Sans-IO."""

    def __init__(self, server_id: ServerId, address: str, full_every: int = 60) -> None:
        if full_every < 1:
            raise ValueError("full_every must be >= 1")
        self.server_id = server_id
        self.address = address
        self.full_every = full_every
        self._acked: dict[ChunkHandle, ChunkVersion] | None = None  # None: next is full
        self._since_full = 0  # heartbeats acknowledged since the last full one

    def build(self, capacity: int, free: int,
              states: dict[ChunkHandle, ReplicaState]) -> HeartbeatReport:
        full = self._acked is None or self._since_full + 1 >= self.full_every
        acked = self._acked or {}
        chunks = [(h, states[h].version) for h in sorted(states)
                  if full or acked.get(h) != states[h].version]
        return HeartbeatReport(self.server_id, self.address, capacity, free, chunks, full)

    def acknowledged(self, report: HeartbeatReport, answer: HeartbeatAnswer) -> None:
        if report.full:
            self._acked, self._since_full = dict(report.chunks), 0
        else:
            assert self._acked is not None
            self._acked.update(report.chunks)
            self._since_full += 1
        if answer.send_full:
            self._acked = None

    def failed(self) -> None:
        """The leader may have changed: tell the next one everything."""
        self._acked = None


# What the loop needs from the service: the replicas and the space, and a
# conditional delete.
Snapshot = Callable[[], Awaitable[tuple[int, int, dict[ChunkHandle, ReplicaState]]]]
DeleteIfUnchanged = Callable[[ChunkHandle, ReplicaState | None], Awaitable[bool]]


async def heartbeat_loop(
    sink: HeartbeatSink, reporter: Reporter, snapshot: Snapshot,
    delete_if_unchanged: DeleteIfUnchanged, interval: float, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send a heartbeat every `interval` seconds until cancelled."""
    task_status.started()
    while True:
        started = trio.current_time()
        try:
            await beat_once(sink, reporter, snapshot, delete_if_unchanged, interval)
        except Exception as exc:  # the leader may be down or changing: try again next tick
            reporter.failed()
            log.info("heartbeat failed: %s", exc)
        await trio.sleep_until(started + interval)


async def beat_once(sink: HeartbeatSink, reporter: Reporter, snapshot: Snapshot,
                    delete_if_unchanged: DeleteIfUnchanged,
                    timeout: float) -> list[ChunkHandle]:
    """One heartbeat and the deletions it orders; returns the handles deleted."""
    capacity, free, states = await snapshot()
    report = reporter.build(capacity, free, states)
    with trio.fail_after(max(timeout, 0.5) * 3):
        answer = await sink.heartbeat(report)
    reporter.acknowledged(report, answer)
    deleted: list[ChunkHandle] = []
    for handle in answer.delete:
        if await delete_if_unchanged(handle, states.get(handle)):
            deleted.append(handle)
        else:
            log.info("keeping chunk %d: it changed since the report", handle)
    return deleted
