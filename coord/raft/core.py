"""The Raft consensus core: a sans-IO state machine (Ongaro & Ousterhout; Ongaro's thesis).

Inputs are `step(msg, now)`, `tick(now)`, `propose(data)` and
`read_index(ctx)`; the output is a `Ready` batch taken with `ready()` and
acknowledged with `advance(ready)` (see `coord.raft.ready` for the driver's
order).  Durable state is read through `coord.raft.logview.LogView`; nothing
here does I/O, reads a clock or draws randomness other than the injected rng.

Safety invariants this module maintains (fig. 2 and §5):
* term never decreases; `vote` is set at most once per term (§5.2);
* a leader only appends to its own log (§5.3) and commits an index by
  counting replicas only if that entry has the leader's term (§5.4.2);
* a node grants a vote only to a candidate whose log is at least as
  up-to-date as its own (§5.4.1);
* the leader counts itself towards a commit quorum only for entries the
  driver reported persisted (advance), never for merely proposed ones;
* every message is emitted after the state it depends on is in the same or
  an earlier Ready, so persist-before-send in the driver is sufficient.

Membership (thesis §4, `coord.raft.membership`): single-server changes as
CONFIG entries, in force once appended; learners receive the log but are
never counted in a quorum; a node that is not a voter in its configuration
never campaigns; a leader that removed itself does not count its own replica
and steps down once the removal commits.  Messages from nodes outside the
configuration are processed (a joining node learns its configuration from
the leader's log), except vote requests: a candidate must be a voter in our
configuration (so a removed node cannot disrupt), and quorums only count
voters.  Leadership transfer (§3.10): while a transfer runs the leader takes
no proposals; it sends TimeoutNow once the target is caught up and gives up
after an election timeout.  Optional leader-lease reads: `coord.raft.lease`.
Snapshots (§7): the driver tells the core about each snapshot it takes
(`snapshot_taken`) and raises the compaction floor (`compact`) before it
truncates the store, so the core never reads what is being removed.  A
follower whose next entry is below the leader's floor gets the leader's
newest snapshot in `snapshot_chunk_bytes` chunks (InstallSnapshot); it
accepts only the chunk at the offset it expects (its partial file's length,
`partial` at construction) and answers with the offset it wants, so a
transfer resumes after losses, reconnects and restarts on either side.  The
last chunk is acknowledged only once the driver installed the snapshot
(`snapshot_installed`), so a "done" promises the state is in place.

Liveness extensions: pre-vote (thesis §9.6), check-quorum (§6.2), leader
stickiness (§4.2.3: ignore vote requests while a leader was heard from within
the minimum election timeout), fast log backtracking, batching, pipelining
and a cap on uncommitted bytes.  Roles are an explicit enum with one step
function per role; an illegal role change raises `IllegalTransition` with the
node's recent history.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable

from coord.raft.config import RaftConfig
from coord.raft.lease import LeaderLease
from coord.raft.logview import LogView, entry_size
from coord.raft.membership import Membership, snapshot_membership, tracker_from_log
from coord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadCtx,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from coord.raft.progress import Progress, ProgressState
from coord.raft.quorum import MajorityConfig, VoteResult
from coord.raft.raftlog import RaftLog
from coord.raft.readindex import PendingRead, ReadIndexTracker, ReadState
from coord.raft.ready import (
    NotLeader,
    Overloaded,
    Proposed,
    ProposeResult,
    ReadQueued,
    ReadResult,
    Ready,
    Refused,
    Role,
    SoftState,
)
from coord.raft.reconfig import ReconfigMixin
from coord.raft.snapcore import SnapshotMixin
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta, SnapshotReader
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term

# Legal role changes (§5.2 and thesis §9.6); anything else is a bug in the core.
_TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.PRE_CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}

_NO_INDEX = LogIndex(0)

#: The "no time yet" value for `last_leader_contact`.
_NEVER = float("-inf")


class IllegalTransition(RuntimeError):
    """A role change the protocol forbids; carries the node's recent history."""


class ReadyOutstanding(RuntimeError):
    """`ready()` was called before the previous Ready was advanced (or advance misused)."""


class RaftNode(ReconfigMixin, SnapshotMixin):
    """One Raft member.  Not thread-safe; the driver serialises all calls.

    Membership changes, leadership transfer and lease reads live in
    `coord.raft.reconfig.ReconfigMixin`, snapshots in
    `coord.raft.snapcore.SnapshotMixin`."""

    def __init__(
        self,
        node_id: NodeId,
        peers: Iterable[NodeId],
        config: RaftConfig,
        *,
        log: LogView,
        hard_state: HardState,
        rng: random.Random,
        now: float,
        applied: LogIndex = _NO_INDEX,
        membership: Membership | None = None,
        snapshot: SnapshotMeta | None = None,
        snapshots: SnapshotReader | None = None,
        partial: tuple[SnapshotMeta, int] | None = None,
    ) -> None:
        self.id = node_id
        self.config = config.validate()
        self.rng = rng
        # `membership` is the bootstrap configuration (default: `peers` and self as
        # voters); CONFIG entries in the log override it (membership.tracker_from_log).
        base = membership if membership is not None else Membership.of({node_id, *peers})
        if snapshot is not None:  # the log may be compacted past CONFIG entries
            self.conf = tracker_from_log(
                log, hard_state.commit, snapshot_membership(snapshot), snapshot.index
            )
        else:
            self.conf = tracker_from_log(log, hard_state.commit, base)
        self.voters = MajorityConfig(self.conf.current.voters)  # quorums count these only
        self.peers = tuple(sorted(self.conf.current.members - {node_id}))  # learners too
        self.term = hard_state.term  # latest term seen (persisted)
        self.vote = hard_state.vote  # candidate voted for in `term` (persisted)
        self.log = RaftLog(log, hard_state.commit, applied)
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None  # leader of `term`, if known
        self.last_leader_contact = _NEVER  # when the leader of `term` was last heard from
        self.election_deadline = 0.0  # FOLLOWER/candidates: campaign when now reaches it
        self.heartbeat_deadline = 0.0  # LEADER: next heartbeat broadcast
        self.quorum_deadline = 0.0  # LEADER: next check-quorum evaluation
        # LEADER: when followers not told of the newest commit index get an append
        # that carries it (inf: none pending); see _send_appends.
        self.commit_notify_deadline = math.inf
        self.votes: dict[NodeId, bool] = {}  # (pre-)candidate: answers this round
        self.progress: dict[NodeId, Progress] = {}  # LEADER: per-follower replication
        self.term_start = LogIndex(0)  # LEADER: index of this term's no-op
        self.uncommitted: deque[tuple[LogIndex, int]] = deque()  # LEADER: own uncommitted sizes
        self.uncommitted_bytes = 0
        self.reads = ReadIndexTracker()
        self.transfer_target: NodeId | None = None  # LEADER: handing over to this voter
        self.transfer_deadline = 0.0  # LEADER: abort the transfer at this time
        self.lease = LeaderLease(config.election_timeout_min - config.clock_drift_bound)
        self._now = now  # the latest time seen (tick/step): never later than real time
        self.snapshot = snapshot  # the newest complete snapshot this member holds
        self.snapshots = snapshots  # reads its bytes (leader: InstallSnapshot)
        self.receiving = partial  # FOLLOWER: (snapshot, bytes durably received)
        self.installing: tuple[SnapshotMeta, NodeId] | None = None  # complete, being installed
        self._snapshot_writes: list[SnapshotChunk] = []
        self._outbox: list[Message] = []
        self._failed_reads: list[ReadCtx] = []
        self._needs_flush = False  # LEADER: appends/read rounds may be due at ready()
        self._persisted = hard_state  # the hard state last handed to the driver
        self._outstanding: Ready | None = None
        self._soft = SoftState(self.role, self.leader, self.term)  # cached: Readys share it
        self._history: deque[str] = deque(maxlen=24)
        self._steppers: dict[Role, Callable[[Message, float], None]] = {
            Role.FOLLOWER: self._step_follower,
            Role.PRE_CANDIDATE: self._step_candidate,
            Role.CANDIDATE: self._step_candidate,
            Role.LEADER: self._step_leader,
        }
        self._reset_election_timer(now)
        if config.lease_reads:
            # A restarted member may have acknowledged a lease just before it crashed:
            # it grants no vote for one election timeout (see _in_lease).
            self.last_leader_contact = now
        self._note(now, f"start term={self.term} vote={self.vote} commit={self.log.committed}")

    # ------------------------------------------------------------------ inputs
    def tick(self, now: float) -> None:
        """Advance timers to `now`: heartbeats and check-quorum (leader), elections (others)."""
        self._now = max(self._now, now)
        if self.role is Role.LEADER:
            if now >= self.heartbeat_deadline:
                self.heartbeat_deadline = now + self.config.heartbeat_interval
                self._heartbeat_round()
            if now >= self.commit_notify_deadline:
                self.commit_notify_deadline = math.inf
                for peer in self.progress:
                    self._tell_commit(peer, self.log.committed)
            if self.config.check_quorum and now >= self.quorum_deadline:
                self.quorum_deadline = now + self.config.election_timeout_min
                self._check_quorum(now)
            if self.transfer_target is not None and now >= self.transfer_deadline:
                self._note(now, f"transfer to {self.transfer_target} timed out")
                self.transfer_target = None
        elif now >= self.election_deadline:
            # Thesis §4.2.2: a node whose removal is not committed may still be needed
            # to elect a leader (it may hold the longest log); its own vote does not
            # count.  Learners and nodes whose removal committed never campaign.
            if self.id in self.voters.voters or self.id in self.conf.committed.voters:
                self._campaign(now, pre_vote=self.config.pre_vote)
            else:
                self._reset_election_timer(now)

    def step(self, msg: Message, now: float) -> None:
        """Handle one message from a peer (duplicates, delays and reordering are fine)."""
        if msg.dst != self.id or msg.src == self.id:
            return
        if isinstance(msg, RequestVote) and msg.src not in self.voters.voters:
            return  # not a voter in our configuration (removed, or a learner): no disruption
        self._now = max(self._now, now)
        if msg.term > self.term:
            if not self._adopt_higher_term(msg, now):
                return
        elif msg.term < self.term:
            self._answer_stale(msg)
            return
        if isinstance(msg, RequestVote):
            self._handle_vote_request(msg, now)
        else:
            self._steppers[self.role](msg, now)

    def propose(self, data: bytes) -> ProposeResult:
        """Append a command if leader; the caller learns its fate from the applied entry."""
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if self.transfer_target is not None:
            return Refused(f"leadership transfer to {self.transfer_target} in progress")
        entry = Entry(self.term, LogIndex(self.log.last_index() + 1), EntryKind.COMMAND, data)
        limit = self.config.max_uncommitted_bytes
        if self.uncommitted_bytes and self.uncommitted_bytes + entry_size(entry) > limit:
            return Overloaded(self.uncommitted_bytes, limit)
        self._leader_append(entry)
        return Proposed(entry.index, entry.term)

    def read_index(self, ctx: ReadCtx, now: float | None = None) -> ReadResult:
        """Start a linearizable read; its ReadState appears in a later Ready (thesis §6.4).

        With `lease_reads` and the current time `now`, a leader holding a valid
        lease answers from its commit index without a heartbeat round (§6.4.1)."""
        if self.role is Role.LEADER:
            if now is not None and self._lease_read(ctx, self.id, now):
                return ReadQueued(ctx)
            self.reads.request(PendingRead(ctx, self.id), self._committed_in_term())
            self._needs_flush = True
            return ReadQueued(ctx)
        if self.leader is not None:
            self._send(ReadIndexRequest(self.id, self.leader, self.term, ctx))
            return ReadQueued(ctx)
        return NotLeader(None)

    # ------------------------------------------------------------------ outputs
    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        return bool(
            self._outbox
            or self._snapshot_writes
            or self._needs_flush
            or self.log.unstable
            or self.log.committed > self.log.applied
            or self._failed_reads
            or self.reads.servable(self.log.committed)
            or self.term != self._persisted.term
            or self.vote != self._persisted.vote
            or self.log.committed != self._persisted.commit
        )

    def ready(self) -> Ready:
        """Collect every pending effect; the driver handles it, then calls advance()."""
        if self._outstanding is not None:
            raise ReadyOutstanding("advance() the previous Ready first")
        self.conf.commit_to(self.log.committed)
        if self._needs_flush and self.role is Role.LEADER:
            self._flush()
        self._needs_flush = False
        log, persisted = self.log, self._persisted
        hard_state: HardState | None = None
        must_sync = False
        if self.term != persisted.term or self.vote != persisted.vote:
            hard_state, must_sync = self._hard_state(), True
        elif log.committed != persisted.commit:
            hard_state = self._hard_state()  # a commit index alone needs no fsync
        entries: tuple[Entry, ...] = ()
        truncate_from = None
        if log.unstable:
            entries, must_sync = tuple(log.unstable), True
            if entries[0].index <= log.store.last_index():
                truncate_from = entries[0].index
        committed: tuple[Entry, ...] = ()
        if log.committed > log.applied:
            committed = tuple(log.next_committed(self.config.max_apply_bytes))
        applied = committed[-1].index if committed else log.applied
        rd = Ready(
            hard_state=hard_state,
            must_sync=must_sync,
            entries=entries,
            truncate_from=truncate_from,
            messages=tuple(self._outbox),
            committed_entries=committed,
            read_states=tuple(self.reads.take_ready(applied)),
            failed_reads=tuple(self._failed_reads),
            soft_state=self.soft_state(),
            snapshot_chunks=tuple(self._snapshot_writes),
        )
        self._outbox, self._failed_reads, self._snapshot_writes = [], [], []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied `rd`."""
        if rd is not self._outstanding:
            raise ReadyOutstanding("advance() must be given the Ready last returned by ready()")
        self._outstanding = None
        if rd.hard_state is not None:
            self._persisted = rd.hard_state
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied = rd.committed_entries[-1].index
        if self.role is Role.LEADER and rd.entries:
            self._maybe_commit()  # our own persisted entries now count towards the quorum

    # ------------------------------------------------------------------ introspection
    @property
    def commit_index(self) -> LogIndex:
        return self.log.committed

    def soft_state(self) -> SoftState:
        soft = self._soft
        if soft.role is not self.role or soft.leader != self.leader or soft.term != self.term:
            soft = self._soft = SoftState(self.role, self.leader, self.term)
        return soft

    def history(self) -> list[str]:
        return list(self._history)

    def next_deadline(self) -> float:
        """The earliest `now` at which tick() has something to do (for a driver's sleep)."""
        if self.role is Role.LEADER:
            soonest = min(self.heartbeat_deadline, self.commit_notify_deadline)
            if self.config.check_quorum:
                return min(soonest, self.quorum_deadline)
            return soonest
        return self.election_deadline

    # ------------------------------------------------------------------ terms and roles
    def _adopt_higher_term(self, msg: Message, now: float) -> bool:
        """Fig. 2 "all servers": a higher term makes us a follower; False = drop msg."""
        if isinstance(msg, RequestVote):
            if self._in_lease(now) and not msg.transfer:
                return False  # leader stickiness: a live leader exists, ignore the disruption
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
        elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes carry the term we are about to campaign in
        leader = msg.src if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot) else None
        self._become_follower(now, msg.term, leader, "higher term")
        return True

    def _answer_stale(self, msg: Message) -> None:
        """Tell a node stuck in an older term about ours, so a deposed leader steps
        down and a pre-candidate gives up; other stale messages are dropped."""
        if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
            self._send(AppendEntriesResponse(self.id, msg.src, self.term, success=False))
        elif isinstance(msg, RequestVote):
            self._send(RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote))

    def _in_lease(self, now: float) -> bool:
        if self.role is Role.LEADER:
            return True
        return (
            self.leader is not None or self.config.lease_reads
        ) and now - self.last_leader_contact < self.config.election_timeout_min

    def _set_role(self, now: float, role: Role, why: str) -> None:
        if role not in _TRANSITIONS[self.role]:
            raise IllegalTransition(
                f"node {self.id}: {self.role.value} -> {role.value} ({why}) in term {self.term}; "
                f"recent history: {list(self._history)}"
            )
        self._note(now, f"{self.role.value}->{role.value} term={self.term} ({why})")
        if self.role is Role.LEADER:
            self._leave_leadership()
        self.role = role

    def _become_follower(self, now: float, term: Term, leader: NodeId | None, why: str) -> None:
        if term > self.term:
            self.term, self.vote = term, None
        self._set_role(now, Role.FOLLOWER, why)
        self.leader = leader
        self.votes = {}
        self._reset_election_timer(now)

    def _leave_leadership(self) -> None:
        self.progress = {}
        self.uncommitted.clear()
        self.uncommitted_bytes = 0
        self._needs_flush = False
        self.commit_notify_deadline = math.inf
        self.transfer_target = None
        self.lease.reset()
        self._failed_reads.extend(r.ctx for r in self.reads.abandon() if r.origin == self.id)

    def _reset_election_timer(self, now: float) -> None:
        lo, hi = self.config.election_timeout_min, self.config.election_timeout_max
        self.election_deadline = now + lo + self.rng.random() * (hi - lo)

    def _note(self, now: float, what: str) -> None:
        self._history.append(f"t={now:g} {what}")

    # ------------------------------------------------------------------ elections
    def _campaign(self, now: float, pre_vote: bool, transfer: bool = False) -> None:
        """Election timeout elapsed (§5.2), or a pre-vote round was won (§9.6)."""
        if pre_vote:
            self._set_role(now, Role.PRE_CANDIDATE, "election timeout")
            term = Term(self.term + 1)  # the term we would use; ours stays unchanged
        else:
            self._set_role(now, Role.CANDIDATE, "start election")
            self.term, self.vote = Term(self.term + 1), self.id
            term = self.term
        self.leader = None
        self.votes = {self.id: True}
        self._reset_election_timer(now)
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in sorted(self.voters.voters - {self.id}):
            self._send(RequestVote(self.id, peer, term, last_index, last_term, pre_vote, transfer))
        self._tally(now)

    def _handle_vote_request(self, m: RequestVote, now: float) -> None:
        up_to_date = self._candidate_up_to_date(m)
        if m.pre_vote:
            granted = m.term > self.term and up_to_date
        else:
            granted = self._can_vote_for(m.src) and up_to_date
            if granted:
                self.vote = m.src
                self._reset_election_timer(now)
        self._note(now, f"vote{'(pre)' if m.pre_vote else ''} for {m.src}@{m.term}: {granted}")
        term = m.term if m.pre_vote and granted else self.term
        self._send(RequestVoteResponse(self.id, m.src, term, granted, m.pre_vote))

    def _candidate_up_to_date(self, m: RequestVote) -> bool:
        """§5.4.1: the candidate's log is at least as up-to-date as ours."""
        return self.log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _can_vote_for(self, candidate: NodeId) -> bool:
        """§5.2: at most one vote per term; none once this term's leader is known."""
        return self.vote == candidate or (self.vote is None and self.leader is None)

    def _tally(self, now: float) -> None:
        result = self.voters.vote_result(self.votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(now, pre_vote=False)
            else:
                self._become_leader(now)
        elif result is VoteResult.LOST:
            self._become_follower(now, self.term, None, "election lost")

    def _become_leader(self, now: float) -> None:
        self._set_role(now, Role.LEADER, "won election")
        self.leader = self.id
        self.votes = {}
        last = self.log.last_index()
        self.progress = {p: Progress(last) for p in self.peers}
        self.lease.reset()
        self.heartbeat_deadline = now + self.config.heartbeat_interval
        self.quorum_deadline = now + self.config.election_timeout_min
        # §5.4.2 / §8: a no-op of our term lets us commit (and serve reads) soon.
        self.term_start = LogIndex(last + 1)
        self._leader_append(Entry(self.term, self.term_start, EntryKind.NOOP))

    # ------------------------------------------------------------------ per-role steps
    def _step_follower(self, m: Message, now: float) -> None:
        if isinstance(m, AppendEntries):
            self._heard_from_leader(m.src, now)
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self._heard_from_leader(m.src, now)
            self.log.commit_to(LogIndex(min(m.commit, self.log.last_index())))
            self._send(HeartbeatResponse(self.id, m.src, self.term, m.read_round))
        elif isinstance(m, ReadIndexResponse):
            self.reads.waiting_apply.append(ReadState(m.ctx, m.index))
        elif isinstance(m, TimeoutNow) and self.id in self.voters.voters:
            # §3.10: our leader hands over; campaign now, skipping pre-vote, and let
            # the voters ignore stickiness (they still check our log is up to date).
            self._note(now, f"TimeoutNow from {m.src}")
            self._campaign(now, pre_vote=False, transfer=True)
        elif isinstance(m, InstallSnapshot):
            self._heard_from_leader(m.src, now)
            self._handle_snapshot(m)

    def _step_candidate(self, m: Message, now: float) -> None:
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            # §5.2: a leader of our term exists; recognise it and process the message.
            self._become_follower(now, self.term, m.src, "leader of this term found")
            self._step_follower(m, now)
        elif isinstance(m, RequestVoteResponse):
            if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return  # an answer to an earlier round of the other kind
            self.votes.setdefault(m.src, m.granted)
            self._tally(now)

    def _step_leader(self, m: Message, now: float) -> None:
        if isinstance(m, ReadIndexRequest):
            if self._lease_read(m.ctx, m.src, now):
                return
            self.reads.request(PendingRead(m.ctx, m.src), self._committed_in_term())
            self._needs_flush = True
            return
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, InstallSnapshotResponse):
            self._handle_snapshot_response(m, pr)
        elif isinstance(m, HeartbeatResponse) and m.read_round > pr.read_round:
            pr.read_round = m.read_round
            self._confirm_reads()
            if self.config.lease_reads:
                self.lease.acked(self.voters.quorum_value(self._read_acks()))

    def _heard_from_leader(self, leader: NodeId, now: float) -> None:
        self.leader = leader
        self.last_leader_contact = now
        self._reset_election_timer(now)

    # ------------------------------------------------------------------ replication
    def _handle_append(self, m: AppendEntries) -> None:
        """Fig. 2 AppendEntries receiver implementation."""
        reply = AppendEntriesResponse
        prev, prev_term, entries = m.prev_log_index, m.prev_log_term, m.entries
        committed = self.log.committed
        if prev < committed:
            # Our committed prefix is in every later leader's log (§5.4.3), so an old or
            # duplicated append only contributes what lies beyond it.
            skip = committed - prev
            if len(entries) <= skip:
                self._send(reply(self.id, m.src, self.term, True, match_index=committed))
                return
            prev, prev_term, entries = committed, self.log.term(committed), entries[skip:]
        match = self.log.maybe_append(prev, prev_term, entries)
        if match is not None:
            self._config_appended(entries)
            self.log.commit_to(LogIndex(min(m.leader_commit, match)))
            self._send(reply(self.id, m.src, self.term, True, match_index=match))
            return
        probe_at = LogIndex(min(m.prev_log_index, self.log.last_index()))
        hint = self.log.find_conflict_by_term(probe_at, m.prev_log_term)
        self._send(
            reply(
                self.id,
                m.src,
                self.term,
                False,
                reject_index=m.prev_log_index,
                hint_index=hint,
                hint_term=self.log.term(hint),
            )
        )

    def _handle_append_response(self, m: AppendEntriesResponse, pr: Progress) -> None:
        if m.success:
            if pr.acked(m.match_index):
                self._maybe_commit()
                if m.src == self.transfer_target:
                    self._maybe_timeout_now(m.src)
        else:
            retry = self.log.find_conflict_by_term(m.hint_index, m.hint_term) + 1
            pr.rejected(m.reject_index, LogIndex(retry))
        self._needs_flush = True

    def _leader_append(self, entry: Entry) -> None:
        self.log.append([entry])
        size = entry_size(entry)
        self.uncommitted.append((entry.index, size))
        self.uncommitted_bytes += size
        self._needs_flush = True

    def _self_match(self) -> LogIndex:
        """The leader's own replica counts only up to what the driver persisted."""
        return LogIndex(self.log.offset - 1)

    def _may_commit(self, index: LogIndex) -> bool:
        """§5.4.2: only entries of the leader's own term are committed by counting."""
        return self.log.term(index) == self.term

    def _maybe_commit(self) -> None:
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self.id] = self._self_match()
        index = self.voters.committed_index(match)
        if index <= self.log.committed or not self._may_commit(index):
            return
        had_term_commit = self._committed_in_term()
        self.log.commit_to(index)
        if math.isinf(self.commit_notify_deadline):
            self.commit_notify_deadline = self._now + self.config.commit_notify_delay
        while self.uncommitted and self.uncommitted[0][0] <= index:
            self.uncommitted_bytes -= self.uncommitted.popleft()[1]
        if not had_term_commit and self._committed_in_term():
            self.reads.term_committed()
        self._needs_flush = True
        if self.conf.has_pending and self.conf.pending[0][0] <= index:
            self.conf.commit_to(index)
            self._use_membership()  # stop replicating to nodes whose removal committed
        if self.id not in self.conf.committed.voters:
            self._step_down_removed()

    def _committed_in_term(self) -> bool:
        return self.role is Role.LEADER and self.log.committed >= self.term_start

    def _flush(self) -> None:
        """Batch everything queued since the last Ready into as few messages as allowed."""
        last = self.log.last_index()
        for peer, pr in self.progress.items():
            self._send_appends(peer, pr, last)
        round_id = self.reads.start_round(self.log.committed)
        if round_id is not None:
            self._broadcast_heartbeats()
            self._confirm_reads()

    def _send_appends(self, peer: NodeId, pr: Progress, last: LogIndex) -> None:
        cfg = self.config
        if pr.state is ProgressState.SNAPSHOT:
            if not pr.probe_sent:
                self._send_snapshot(peer, pr)
            return
        if pr.state is ProgressState.PROBE:
            if not pr.probe_sent and pr.match < last:
                self._send_append(peer, pr, last)
            return
        while pr.next <= last and pr.can_send(cfg.max_inflight, cfg.max_inflight_bytes):
            self._send_append(peer, pr, last)
        # No empty append at once just to carry a new commit index: the follower
        # learns it from the next append, at once when it waits for a read
        # (`_tell_commit`), or else `commit_notify_delay` after the commit (tick).
        # Nothing else waits for a follower's apply, and at one client that append
        # and its ack were 2 of the 3 messages per write a follower handled
        # (raftprobe: follower CPU per write 1.1 -> 0.8 ms, leader 2.2 -> 1.7 ms).

    def _tell_commit(self, peer: NodeId, index: LogIndex) -> None:
        """Make sure `peer` learns that `index` is committed now (it waits to serve a
        read at `index`): an empty append, unless one carrying it already left."""
        pr = self.progress.get(peer)
        if pr is None or pr.commit_sent >= index or pr.state is not ProgressState.REPLICATE:
            return  # already told, or not replicating: its next append carries the commit
        self._send_append(peer, pr, self.log.last_index())

    def _send_append(self, peer: NodeId, pr: Progress, last: LogIndex) -> None:
        prev = LogIndex(pr.next - 1)
        if prev < self.log.first_index() - 1:  # compacted away: only a snapshot helps (§7)
            self._send_snapshot(peer, pr)
            return
        prev_term = self.log.term(prev)
        hi = LogIndex(min(last + 1, pr.next + self.config.max_append_entries))
        entries = tuple(self.log.entries(pr.next, hi, self.config.max_append_bytes))
        nbytes = sum(entry_size(e) for e in entries)
        self._send(
            AppendEntries(self.id, peer, self.term, prev, prev_term, entries, self.log.committed)
        )
        pr.sent(entries[-1].index if entries else prev, nbytes)
        pr.commit_sent = self.log.committed

    # ------------------------------------------------------------------ heartbeats, reads
    def _heartbeat_round(self) -> None:
        last = self.log.last_index()
        for pr in self.progress.values():
            pr.heartbeat_tick(last)
        self._broadcast_heartbeats()
        self._needs_flush = True  # a probe may be due again

    def _read_acks(self) -> dict[NodeId, int]:
        acked = {p: pr.read_round for p, pr in self.progress.items()}
        acked[self.id] = self.reads.last_round
        return acked

    def _broadcast_heartbeats(self) -> None:
        if self.config.lease_reads and self.transfer_target is None:
            # Every broadcast is a new round, so an ack dates the follower's contact.
            self.reads.last_round += 1
            self.lease.sent(self.reads.last_round, self._now)
        commit, round_id = self.log.committed, self.reads.last_round
        for peer, pr in self.progress.items():
            told = LogIndex(min(commit, pr.match))
            self._send(Heartbeat(self.id, peer, self.term, told, round_id))
            pr.commit_sent = max(pr.commit_sent, told)

    def _confirm_reads(self) -> None:
        """Release every read round acknowledged by a quorum (ourselves included)."""
        if not self.reads.rounds:
            return
        confirmed = self.voters.quorum_value(self._read_acks())
        for read in self.reads.confirm(confirmed):
            if read.origin == self.id:
                self.reads.waiting_apply.append(ReadState(read.ctx, read.index))
            else:
                self._tell_commit(read.origin, read.index)
                self._send(ReadIndexResponse(self.id, read.origin, self.term, read.ctx, read.index))

    def _check_quorum(self, now: float) -> None:
        """§6.2: a leader that has not heard from a majority for an election timeout steps down."""
        active = [self.id] + [p for p, pr in self.progress.items() if pr.recent_active]
        for pr in self.progress.values():
            pr.recent_active = False
        if not self.voters.has_quorum(active):
            self._become_follower(now, self.term, None, "check-quorum failed")

    # ------------------------------------------------------------------ helpers
    def _send(self, msg: Message) -> None:
        self._outbox.append(msg)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)
