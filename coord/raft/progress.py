"""The leader's view of one follower's log (replication flow control).

States (an explicit enum):

* PROBE — the leader does not know where the follower's log matches; it sends
  at most one AppendEntries per heartbeat and moves `next` back on rejection,
  using the follower's hint to skip whole terms.
* REPLICATE — the follower is known to match up to `match`; the leader
  streams batches optimistically (`next` advances on send) with at most
  `max_inflight` messages / `max_inflight_bytes` unacknowledged (pipelining).
* SNAPSHOT — the entries the follower needs were compacted away; the leader
  streams `snapshot` one chunk at a time from `snap_offset` (the offset the
  follower last asked for), resending once per quiet heartbeat interval; the
  follower's "done" moves `match` to the snapshot index and the state to PROBE.

Invariants: match < next; in REPLICATE every inflight record has
last_index >= match + 1 and the records are in increasing order.
"""

from __future__ import annotations

import enum
from collections import deque

from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import LogIndex


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_since_heartbeat",
        "commit_sent",
        "inflight",
        "inflight_bytes",
        "match",
        "next",
        "probe_sent",
        "read_round",
        "recent_active",
        "snap_offset",
        "snapshot",
        "stalled_intervals",
        "state",
    )

    def __init__(self, last_index: LogIndex) -> None:
        self.match = LogIndex(0)  # highest index known replicated on the follower
        self.next = LogIndex(last_index + 1)  # next index to send
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: one append is outstanding, wait for an answer
        self.inflight: deque[tuple[LogIndex, int]] = deque()  # (last index sent, bytes)
        self.inflight_bytes = 0
        self.recent_active = False  # heard from since the last check-quorum round
        self.acked_since_heartbeat = False  # REPLICATE: some ack arrived this heartbeat period
        self.stalled_intervals = 0  # REPLICATE: heartbeat periods behind without any ack
        self.commit_sent = LogIndex(0)  # highest commit index sent (append or heartbeat)
        self.read_round = 0  # highest ReadIndex round the follower acknowledged this term
        self.snapshot: SnapshotMeta | None = None  # SNAPSHOT: the snapshot being streamed
        self.snap_offset = 0  # SNAPSHOT: the next byte to send (the follower's last request)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={len(self.inflight)})"
        )

    def can_send(self, max_inflight: int, max_inflight_bytes: int) -> bool:
        if self.state is ProgressState.PROBE:
            return not self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return False  # appends wait until the snapshot is in place
        return len(self.inflight) < max_inflight and self.inflight_bytes < max_inflight_bytes

    def sent(self, last_index: LogIndex, nbytes: int) -> None:
        """An AppendEntries whose last entry is `last_index` left for the follower."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True
        elif last_index >= self.next:
            self.next = LogIndex(last_index + 1)
            self.inflight.append((last_index, nbytes))
            self.inflight_bytes += nbytes

    def acked(self, index: LogIndex) -> bool:
        """The follower matches up to index; True if that taught us something new."""
        if index <= self.match:
            if self.state is ProgressState.PROBE and index + 1 >= self.next:
                self.probe_sent = False
            return False
        self.match = index
        self.next = LogIndex(max(self.next, index + 1))
        self.acked_since_heartbeat = True
        if self.state is ProgressState.PROBE:
            self.become_replicate()
        elif self.state is ProgressState.SNAPSHOT:
            self.become_probe()  # it holds more than we thought: find out where it stands
        else:
            while self.inflight and self.inflight[0][0] <= index:
                self.inflight_bytes -= self.inflight.popleft()[1]
        return True

    def rejected(self, reject_index: LogIndex, retry_from: LogIndex) -> bool:
        """The follower refused an append at prev=reject_index; retry from `retry_from`.

        Rejections of appends older than what we already know are stale
        (duplicated or reordered) and ignored; returns whether state changed.
        """
        if self.state is ProgressState.SNAPSHOT:
            return False  # an answer to an append sent before the snapshot started
        if self.state is ProgressState.REPLICATE:
            if reject_index <= self.match:
                return False
            self.become_probe()
        elif reject_index != self.next - 1:
            return False
        self.next = LogIndex(max(min(reject_index, retry_from), self.match + 1))
        self.probe_sent = False
        return True

    def heartbeat_tick(self, last_index: LogIndex) -> None:
        """Once per heartbeat interval: retry a probe that got no answer, and fall
        back to probing a replicating follower that acknowledged nothing for two
        whole intervals while behind (its appends were probably lost)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
        elif self.state is ProgressState.SNAPSHOT:
            if not self.acked_since_heartbeat:
                self.probe_sent = False  # the chunk or its answer was lost: resend
        elif self.match < last_index and not self.acked_since_heartbeat:
            self.stalled_intervals += 1
            if self.stalled_intervals >= 2:
                self.become_probe()
        else:
            self.stalled_intervals = 0
        self.acked_since_heartbeat = False

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.snapshot = None
        self.stalled_intervals = 0
        self.next = LogIndex(self.match + 1)
        self.probe_sent = False
        self._clear_inflight()

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot, self.snap_offset = meta, 0
        self.probe_sent = False  # here: a chunk is outstanding
        self._clear_inflight()

    def snapshot_progress(self, offset: int) -> None:
        """The follower asked for the bytes from `offset` on."""
        self.snap_offset = offset
        self.probe_sent = False
        self.acked_since_heartbeat = True

    def snapshot_done(self, index: LogIndex) -> None:
        """The follower installed a snapshot (or already held the log) up to `index`."""
        self.match = LogIndex(max(self.match, index))
        self.acked_since_heartbeat = True
        self.become_probe()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = LogIndex(self.match + 1)
        self._clear_inflight()

    def _clear_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0
