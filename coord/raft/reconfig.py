"""Membership changes, leadership transfer and lease reads: the part of the
Raft core (`coord.raft.core.RaftNode`) that thesis chapters 3.10, 4 and 6.4.1
add, kept apart so the core's main file stays readable.

`ReconfigMixin` holds methods only; every field they use is RaftNode's
(declared and documented in `RaftNode.__init__`).  The rules they implement
are in `coord.raft.membership` (what a change may be), docs/raft.md
("Membership", "Leadership transfer", "Leader-lease reads") and these
invariants:

* the voters quorums count are always those of the configuration in force
  (`RaftNode.conf.current`), updated whenever a CONFIG entry is appended or
  truncated away;
* a leader keeps a Progress for every member of the configurations in force
  and last committed (so a removed node still hears of its removal);
* a transfer blocks proposals and configuration changes until it succeeds
  or an election timeout passes, and ends any lease;
* a lease read is answered only by a leader that committed an entry of its
  term, holds a valid lease and is not transferring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from coord.raft.membership import (
    ChangeKind,
    ConfChange,
    Membership,
    MembershipError,
    apply_change,
    config_entry,
)
from coord.raft.messages import AppendEntries, ReadCtx, ReadIndexResponse, TimeoutNow
from coord.raft.progress import Progress
from coord.raft.quorum import MajorityConfig
from coord.raft.readindex import ReadState
from coord.raft.ready import (
    NotLeader,
    Proposed,
    ProposeResult,
    Refused,
    Role,
    TransferResult,
    TransferStarted,
)
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId

if TYPE_CHECKING:
    from coord.raft.config import RaftConfig
    from coord.raft.lease import LeaderLease
    from coord.raft.membership import ConfigTracker
    from coord.raft.messages import Message
    from coord.raft.raftlog import RaftLog
    from coord.raft.readindex import ReadIndexTracker
    from coord.raft.types import Term


class ReconfigMixin:
    """Methods of RaftNode for membership, transfer and leases (see the module doc)."""

    if TYPE_CHECKING:  # RaftNode's fields and methods these use (documented there)
        id: NodeId
        config: RaftConfig
        role: Role
        leader: NodeId | None
        term: Term
        log: RaftLog
        conf: ConfigTracker
        voters: MajorityConfig
        peers: tuple[NodeId, ...]
        progress: dict[NodeId, Progress]
        transfer_target: NodeId | None
        transfer_deadline: float
        lease: LeaderLease
        reads: ReadIndexTracker
        _now: float

        def _leader_append(self, entry: Entry) -> None: ...
        def _committed_in_term(self) -> bool: ...
        def _maybe_commit(self) -> None: ...
        def _note(self, now: float, what: str) -> None: ...
        def _send(self, msg: Message) -> None: ...
        def _tell_commit(self, peer: NodeId, index: LogIndex) -> None: ...
        def _become_follower(
            self, now: float, term: Term, leader: NodeId | None, why: str
        ) -> None: ...

    def propose_conf_change(self, change: ConfChange) -> ProposeResult:
        """Propose a single-server membership change (thesis §4.1); see membership.py."""
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if self.transfer_target is not None:
            return Refused(f"leadership transfer to {self.transfer_target} in progress")
        if not self._committed_in_term():
            return Refused("the leader has not committed an entry of its term yet; retry")
        self.conf.commit_to(self.log.committed)
        if self.conf.has_pending:
            return Refused("another configuration change is not committed yet; retry")
        try:
            new = apply_change(self.conf.current, change)
        except MembershipError as exc:
            return Refused(str(exc))
        lag = self._learner_lag(change)
        if lag is not None:
            return Refused(lag)
        entry = config_entry(self.term, LogIndex(self.log.last_index() + 1), new)
        self._leader_append(entry)
        self._config_appended([entry])
        return Proposed(entry.index, entry.term)

    def transfer_leadership(self, target: NodeId | None, now: float) -> TransferResult:
        """Hand leadership to `target` (None: the most caught-up voter), thesis §3.10."""
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if target is None:
            others = [p for p in self.voters.voters if p != self.id and p in self.progress]
            if not others:
                return Refused("no other voter to transfer leadership to")
            target = max(others, key=lambda p: (self.progress[p].match, -p))
        if target == self.id:
            return Refused(f"node {target} is already the leader")
        if target not in self.voters.voters or target not in self.progress:
            return Refused(f"node {target} is not a voter")
        self.transfer_target = target
        self.transfer_deadline = now + self.config.election_timeout_min
        self.lease.reset()  # the target will bypass stickiness: no lease may survive
        self._note(now, f"transfer to {target} started")
        self._maybe_timeout_now(target)
        return TransferStarted(target)

    @property
    def membership(self) -> Membership:
        """The configuration in force on this node (the newest CONFIG entry in its log)."""
        return self.conf.current


    def _use_membership(self) -> None:
        """Make the configuration in force the one quorums and replication use."""
        m = self.conf.current
        self.voters = MajorityConfig(m.voters)
        self.peers = tuple(sorted(m.members - {self.id}))
        if self.role is Role.LEADER:
            last = self.log.last_index()
            for p in self.peers:
                self.progress.setdefault(p, Progress(last))
            # A removed node keeps receiving the log until its removal commits; then one
            # last empty append anchored at the removal entry tells it that entry is
            # committed (if it holds it), so it stops campaigning.  If that is lost,
            # its pre-votes are ignored anyway.
            keep = m.members | self.conf.committed.members
            at = self.conf.committed_index
            for p in [p for p in self.progress if p not in keep]:
                del self.progress[p]
                self._send(AppendEntries(
                    self.id, p, self.term, at, self.log.term(at), (), self.log.committed
                ))
            if self.transfer_target is not None and self.transfer_target not in m.voters:
                self.transfer_target = None

    def _config_appended(self, entries: Sequence[Entry]) -> None:
        """CONFIG entries take effect when appended, and lapse when truncated away."""
        dropped = self.conf.truncated(self.log.term, self.log.last_index())
        kept = [e for e in entries if e.kind is EntryKind.CONFIG]
        added = self.conf.appended([e for e in kept if self.log.match_term(e.index, e.term)])
        if dropped or added:
            self._use_membership()
            m = self.conf.current
            self._note(self._now, f"config voters={sorted(m.voters)} learners={sorted(m.learners)}")
            if self.role is Role.LEADER:
                self._maybe_commit()  # a smaller quorum may commit at once

    def _learner_lag(self, change: ConfChange) -> str | None:
        """Why promoting `change.node` must wait, or None (thesis §4.2.1: catch up first)."""
        if change.kind is not ChangeKind.PROMOTE:
            return None
        pr = self.progress.get(change.node)
        match = pr.match if pr is not None else LogIndex(0)
        behind = self.log.last_index() - match
        if match == 0 and behind > 0:
            return f"learner {change.node} has not acknowledged any entry yet; is it running?"
        if behind > self.config.max_learner_lag:
            return (
                f"learner {change.node} is {behind} entries behind the leader "
                f"(limit {self.config.max_learner_lag}); promote it once it has caught up"
            )
        return None

    def _maybe_timeout_now(self, target: NodeId) -> None:
        pr = self.progress.get(target)
        if pr is not None and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.id, target, self.term))

    def _step_down_removed(self) -> None:
        """Our removal committed: hand over to the most caught-up voter and leave."""
        best = [p for p in self.voters.voters if p in self.progress]
        if best:
            self._maybe_timeout_now(max(best, key=lambda p: (self.progress[p].match, -p)))
        self._become_follower(self._now, self.term, None, "removed from the configuration")

    def _lease_read(self, ctx: ReadCtx, origin: NodeId, now: float) -> bool:
        """Serve a read under the leader lease (§6.4.1) if one is held; False otherwise."""
        if not (self.config.lease_reads and self._committed_in_term()):
            return False
        if self.transfer_target is not None or not self.lease.valid(now):
            return False
        index = self.log.committed
        if origin == self.id:
            self.reads.waiting_apply.append(ReadState(ctx, index))
        else:
            self._tell_commit(origin, index)
            self._send(ReadIndexResponse(self.id, origin, self.term, ctx, index))
        return True
