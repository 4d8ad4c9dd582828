"""Snapshots in the Raft core (thesis chapter 5, paper §7): the part of
`coord.raft.core.RaftNode` that learns of snapshots the driver took, streams
its newest one to a follower that needs compacted entries (InstallSnapshot,
in chunks that resume at the follower's offset), and receives one.

`SnapshotMixin` holds methods only; every field they use is RaftNode's
(declared and documented in `RaftNode.__init__`).  The core never looks
inside a snapshot; docs/raft.md ("Snapshots and compaction") has the rules.
Invariants:

* a follower takes only the chunk at the offset it expects and answers with
  the offset it wants next, so a broken stream resumes where it stopped and
  a new snapshot restarts at byte 0;
* a complete snapshot is installed by the driver before the core hears of
  it (`snapshot_installed`), and the "done" leaves only after the store's
  log was made to agree (the next Ready);
* the leader switches a follower to its newest snapshot when the one being
  streamed is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coord.raft.logview import LogUnavailable
from coord.raft.membership import snapshot_membership, tracker_from_log
from coord.raft.messages import InstallSnapshot, InstallSnapshotResponse
from coord.raft.progress import Progress, ProgressState
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.types import LogIndex, NodeId, Term

if TYPE_CHECKING:
    from coord.raft.config import RaftConfig
    from coord.raft.membership import ConfigTracker
    from coord.raft.messages import Message
    from coord.raft.raftlog import RaftLog
    from coord.raft.snapshot import SnapshotReader


class SnapshotMixin:
    """Methods of RaftNode for snapshots (see the module doc)."""

    if TYPE_CHECKING:  # RaftNode's fields and methods these use (documented there)
        id: NodeId
        config: RaftConfig
        term: Term
        log: RaftLog
        conf: ConfigTracker
        snapshot: SnapshotMeta | None
        snapshots: SnapshotReader | None
        receiving: tuple[SnapshotMeta, int] | None
        installing: tuple[SnapshotMeta, NodeId] | None
        _snapshot_writes: list[SnapshotChunk]
        _needs_flush: bool

        def _send(self, msg: Message) -> None: ...
        def _use_membership(self) -> None: ...

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """The driver durably stored a snapshot of this member's state (the newest)."""
        if self.snapshot is None or meta.index > self.snapshot.index:
            self.snapshot = meta

    def compact(self, index: LogIndex) -> Term:
        """Stop reading entries <= index (<= applied); returns term(index) for the store's
        `truncate_prefix`, which the driver calls after this."""
        return self.log.compact_to(index)

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        """The driver verified the received snapshot and, if meta.index > the applied
        index, replaced the state machine's state with it.  Call this *before* the
        store's `truncate_prefix(meta.index, meta.term)`: the core decides from its
        log as it stands whether the entries after the snapshot are kept, by the
        store's rule (§7), and from here on it never reads below the new floor.
        The "done" goes out in the next Ready, after that truncation."""
        if self.installing is None or self.installing[0] != meta:
            return
        leader = self.installing[1]
        self.installing = self.receiving = None
        if meta.index > self.log.applied:  # the driver replaced the state in exactly this case
            self.log.restore(meta.index, meta.term)
            # The snapshot's configuration, then any CONFIG entries kept after it.
            self.conf = tracker_from_log(
                self.log, self.log.committed, snapshot_membership(meta), meta.index
            )
            self._use_membership()
        self.snapshot_taken(meta)
        self._send(InstallSnapshotResponse(self.id, leader, self.term, meta.index, meta.size, True))

    def snapshot_corrupt(self, meta: SnapshotMeta) -> None:
        """The assembled snapshot failed its digest: forget it and ask for it from byte 0."""
        if self.installing is None or self.installing[0] != meta:
            return
        leader = self.installing[1]
        self.installing = self.receiving = None
        self._send(InstallSnapshotResponse(self.id, leader, self.term, meta.index, 0, False))

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> None:
        """Send the chunk the follower asked for; switch to our newest snapshot when the
        one being streamed is gone (a new snapshot id restarts at byte 0)."""
        meta = self.snapshot
        if meta is None or self.snapshots is None:
            raise LogUnavailable(f"follower {peer} needs entry {pr.next}: compacted, no snapshot")
        if pr.state is not ProgressState.SNAPSHOT or pr.snapshot is None:
            pr.become_snapshot(meta)
        assert pr.snapshot is not None
        size = self.config.snapshot_chunk_bytes
        data = self.snapshots.read(pr.snapshot, pr.snap_offset, size)
        if data is None and pr.snapshot != meta:
            pr.become_snapshot(meta)
            data = self.snapshots.read(meta, 0, size)
        if data is None:
            return  # our own snapshot is unreadable right now: retried next heartbeat
        self._send(InstallSnapshot(self.id, peer, self.term, pr.snapshot, pr.snap_offset, data))
        pr.probe_sent = True

    def _handle_snapshot_response(self, m: InstallSnapshotResponse, pr: Progress) -> None:
        if m.done:
            if m.index > pr.match or pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_done(m.index)
        elif pr.snapshot is not None and m.index == pr.snapshot.index:
            pr.snapshot_progress(m.offset)  # pr.snapshot is set only in SNAPSHOT
        self._needs_flush = True

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        """Follower: take the chunk at the offset we expect, answer with the next one."""
        meta = m.meta
        if meta.index <= self.log.committed:  # we hold all it covers already
            self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index, 0, True))
            return
        if self.installing is not None:
            return  # the complete snapshot is being installed; its "done" follows
        have = self.receiving[1] if self.receiving and self.receiving[0] == meta else 0
        end = m.offset + len(m.data)
        if m.offset != have or end > meta.size or (m.offset == end < meta.size):
            # Not the bytes we need next (lost, duplicated or a new snapshot mid-way):
            # say where we are; a new snapshot restarts from 0.
            self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index, have, False))
            return
        self.receiving = (meta, end)
        last = end == meta.size
        self._snapshot_writes.append(SnapshotChunk(meta, m.offset, m.data, last))
        if last:
            self.installing = (meta, m.src)
        else:
            self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index, end, False))
