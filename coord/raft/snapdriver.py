"""The driver's side of snapshots: start-up recovery, taking snapshots and
compacting the log, installing a snapshot received from the leader.

`SnapshotKeeper` is used by `coord.raft.driver.RaftDriver` when the member
has a snapshot folder.  Invariants:

* the log is compacted only behind a snapshot that is durably in
  ``snapshot.bin``, and the core's floor is raised (`RaftNode.compact`)
  before the store forgets anything, so the core never reads what a worker
  thread is removing;
* taking and installing exclude each other (`lock`), so the newest snapshot
  only moves forward and a take never publishes state older than an install;
* snapshots are taken at multiples of `snapshot_every` (the driver splits an
  apply batch there and pins the state in between), so members holding a
  snapshot of the same index hold the same bytes (the state and its encoding
  are deterministic) and a follower can resume a transfer from a new leader;
* start-up leaves the state machine and the log consistent: if the state is
  behind what the log can replay (state DB lost, or a power loss rolled it
  back past the compaction point) or behind a received snapshot the log does
  not contain, the snapshot is restored; if the state is at or past the
  snapshot but the log does not hold it (stopped between installing the
  state and truncating the log), the log is truncated to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import BinaryIO, Protocol, runtime_checkable

import trio

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.snapfile import ByteSink, SnapshotFiles
from coord.raft.snapshot import SnapshotMeta
from coord.raft.storage import RaftStorage
from coord.raft.types import Entry, LogIndex

log = logging.getLogger(__name__)


class SnapshotSource(Protocol):
    """A pinned state (a read transaction), streamed once by `write`, which closes it."""

    def write(self, out: ByteSink) -> LogIndex: ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotStateMachine(Protocol):
    """What a state machine offers for snapshots (coord.kv.machine.KVStateMachine)."""

    @property
    def applied_index(self) -> LogIndex: ...

    def open_snapshot(self) -> SnapshotSource: ...

    def write_snapshot(self, out: ByteSink) -> LogIndex: ...

    def restore_snapshot(self, inp: BinaryIO) -> LogIndex: ...

    def snapshot_taken(self, index: LogIndex) -> None: ...


class SnapshotKeeper:
    def __init__(
        self,
        files: SnapshotFiles,
        storage: RaftStorage,
        fsm: SnapshotStateMachine,
        config: RaftConfig,
    ) -> None:
        self.files = files
        self._storage = storage
        self._fsm = fsm
        self._config = config
        self.lock = trio.Lock()  # one take or install at a time
        self.taking = False  # a take is running (the driver starts at most one)
        self.taken = 0  # snapshots taken since start
        self.installed = 0  # snapshots installed from a leader since start

    # ------------------------------------------------------------------ start-up
    def recover(self) -> None:
        """Make the state and the log agree with the newest snapshot (blocking; before
        the core is built)."""
        self.files.finish_partial()
        partial = self.files.partial()
        if partial is not None:
            log.info("resuming snapshot %d: %d of %d bytes received", partial[0].index,
                     partial[1], partial[0].size)
        snap = self.files.latest()
        if snap is None:
            return
        applied = self._fsm.applied_index
        replayable = self._storage.first_index() - 1 <= applied
        if snap.index > applied and not (replayable and self._log_has(snap)):
            self._restore(snap)
            log.info("restored the state from snapshot %d (state was at %d)", snap.index, applied)
            applied = snap.index
        behind = self._storage.first_index() - 1 < snap.index
        if applied >= snap.index and behind and not self._log_has(snap):
            self._storage.truncate_prefix(snap.index, snap.term)
        self._fsm.snapshot_taken(snap.index)

    def _log_has(self, snap: SnapshotMeta) -> bool:
        st = self._storage
        if not st.first_index() - 1 <= snap.index <= st.last_index():
            return False
        return st.term(snap.index) == snap.term

    def _restore(self, meta: SnapshotMeta) -> None:
        with self.files.open_data(meta) as data:
            got = self._fsm.restore_snapshot(data)
        if got != meta.index:
            raise RuntimeError(f"snapshot {meta.index} restored a state at {got}")

    # ------------------------------------------------------------------ taking
    def boundary(self, entries: Sequence[Entry]) -> LogIndex | None:
        """The multiple of snapshot_every among `entries` to snapshot at, if one is due."""
        every = self._config.snapshot_every
        if every == 0 or self.taking or not entries:
            return None
        cut = entries[-1].index // every * every
        latest = self.files.latest()
        if cut < entries[0].index or (latest is not None and cut <= latest.index):
            return None
        return LogIndex(cut)

    def open_source(self) -> SnapshotSource:
        """Pin the state machine's current state (blocking briefly: a worker thread)."""
        return self._fsm.open_snapshot()

    async def take(self, core: RaftNode, source: SnapshotSource) -> None:
        """Stream the pinned state (applies go on meanwhile), publish it, compact the log."""
        started = trio.current_time()
        try:
            async with self.lock:
                await self._take(core, source, started)
        finally:
            source.close()  # no-op once written; releases the pin if we never got to it

    async def _take(self, core: RaftNode, source: SnapshotSource, started: float) -> None:
        taken = await trio.to_thread.run_sync(self.files.take, source.write)
        latest = self.files.latest()
        if latest is not None and taken.index <= latest.index:
            await trio.to_thread.run_sync(self.files.discard_taken)
            return
        # The term is read on the trio thread with no await before the meta is built;
        # taken.index > latest.index >= the core's floor, so the log still has it.
        config = core.conf.at(taken.index)  # the configuration in force at the snapshot
        meta = SnapshotMeta(
            taken.index, core.log.term(taken.index), tuple(sorted(config.voters)),
            tuple(sorted(config.learners)), taken.size, taken.digest, config.addresses,
        )
        await trio.to_thread.run_sync(self.files.commit_taken, meta)
        core.snapshot_taken(meta)
        self._fsm.snapshot_taken(meta.index)
        self.taken += 1
        await self._compact(core, meta)
        log.info("snapshot %d taken (%d bytes) and the log compacted in %.3f s", meta.index,
                 meta.size, trio.current_time() - started)

    async def _compact(self, core: RaftNode, meta: SnapshotMeta) -> None:
        floor = LogIndex(min(meta.index - self._config.keep_tail, core.log.applied))
        if floor > core.log.first_index() - 1:
            term = core.compact(floor)  # the core stops reading below first
            await trio.to_thread.run_sync(self._storage.truncate_prefix, floor, term)

    # ------------------------------------------------------------------ installing
    async def install(self, core: RaftNode, meta: SnapshotMeta, ok: bool) -> bool:
        """Ready step 6 for a completed transfer; True if the state was replaced."""
        if not ok:
            log.warning("snapshot %d failed its digest: asking for it again", meta.index)
            core.snapshot_corrupt(meta)
            return False
        started = trio.current_time()
        async with self.lock:
            replace = meta.index > core.log.applied
            if replace:
                await trio.to_thread.run_sync(self._restore, meta)
            core.snapshot_installed(meta)  # before the store changes (see the core)
            if replace:
                await trio.to_thread.run_sync(
                    self._storage.truncate_prefix, meta.index, meta.term
                )
                self.installed += 1
            self._fsm.snapshot_taken(meta.index)
        log.info("snapshot %d installed (state replaced: %s) in %.3f s", meta.index, replace,
                 trio.current_time() - started)
        return replace
