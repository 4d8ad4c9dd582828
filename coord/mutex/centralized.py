"""The centralized algorithm: one coordinator keeps a FIFO queue and grants in order.

A non-coordinator's entry costs three messages (REQUEST, GRANT, RELEASE); the
coordinator's own entries cost none.  The coordinator is whoever the
`LeaderView` names (by default the highest node the failure detector trusts:
the Bully outcome).  A node that becomes coordinator starts a new `Epoch`,
sends QUERY to every node ("do you hold or wait?"), rebuilds its queue from
the STATE answers (waiting nodes, in the order their answers arrive) and
grants nothing until `recovery_wait` has passed since it asked.

Invariants:
* The coordinator has at most one outstanding grant; the next one is issued
  only after the holder's RELEASE or after `lease + epsilon` on the
  coordinator's clock.  The holder times its lease from the send of the
  request the grant answers plus the time the grant says the request waited
  at the coordinator (never from the grant's arrival), minus epsilon, so it
  stops before the coordinator moves on.  `waited` never counts time the
  coordinator spent frozen (a gap longer than `pause_gap` between its
  events), so a deposed coordinator waking up cannot hand out a lease that
  starts after the newer epoch's QUERY.
* A node accepts a grant only for its current request number and only from
  an epoch at least as new as the one it has adopted; it never sends a
  request stamped with an epoch newer than the coordinator's (that
  coordinator starts a newer epoch instead of granting).  Hence every lease
  granted in an older epoch was anchored no later than `max_delay` after the
  newer epoch's QUERY went out (or before a pause), and `recovery_wait` =
  max_delay + lease + epsilon outlasts it.
* Fencing tokens are `epoch.token(seq)`, seq counting this coordinator's
  grants: increasing in grant order within an epoch and across epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from coord.lease.types import FencingToken
from coord.mutex.messages import CGrant, CQuery, CRelease, CRequest, CState
from coord.mutex.types import (
    INITIAL_EPOCH,
    Effect,
    Enter,
    Epoch,
    Grant,
    HighestTrusted,
    LeaderView,
    LeaseOver,
    LockName,
    MutexConfig,
    NodeId,
    Note,
    Send,
)


@dataclass(slots=True)
class _Outstanding:
    node: NodeId
    req: int
    token: FencingToken
    until: float  # coordinator clock: lease + epsilon after the grant


@dataclass(slots=True)
class _Coordinator:
    """The coordinator's half of the state (exists only while this node coordinates)."""

    # FIFO of (node, req, when its request or answer arrived here)
    queue: list[tuple[NodeId, int, float]] = field(default_factory=list)
    current: _Outstanding | None = None
    seq: int = 0  # grants issued in this epoch
    ready_at: float = -math.inf  # no grant before this instant (recovery wait)


class Centralized:
    def __init__(self, me: NodeId, nodes: Sequence[NodeId], lock: LockName,
                 config: MutexConfig, view: LeaderView | None = None) -> None:
        self.me = me
        self.lock = lock
        self.nodes = tuple(sorted(set(nodes)))
        self.config = config.validate()
        self._view = view if view is not None else HighestTrusted(me, self.nodes)
        self._suspected: set[NodeId] = set()
        self.epoch = INITIAL_EPOCH  # the newest coordinator epoch this node has adopted
        self._leader = self._view.leader(frozenset())
        # The configured initial coordinator needs no recovery: nothing was granted before.
        self._coord: _Coordinator | None = _Coordinator() if self._leader == me else None
        self._req_counter = 0
        self._want = 0  # the request number we wait on (0: not wanting)
        self._anchor = 0.0  # when that request left (the lease is timed from here)
        self._sent_at = 0.0  # when we last sent it (re-sent after request_retry)
        self._grant: Grant | None = None
        self._grantor: NodeId | None = None
        self._last_event: float | None = None  # the latest `now` seen (pause detection)
        self._awake_since = -math.inf  # running without a pause since then
        self._deposed_at = -math.inf  # when a newer epoch last ended our coordination

    # ------------------------------------------------------------------ views

    @property
    def held(self) -> Grant | None:
        return self._grant

    @property
    def wanting(self) -> bool:
        return self._want != 0 and self._grant is None

    @property
    def coordinating(self) -> bool:
        return self._coord is not None

    def next_wakeup(self, now: float) -> float:
        times = [math.inf]
        if self._grant is not None:
            times.append(self._grant.expires_at)
        if self.wanting:
            times.append(self._sent_at + self.config.request_retry)
        c = self._coord
        if c is not None:
            if c.ready_at > now:
                times.append(c.ready_at)
            if c.current is not None:
                times.append(c.current.until)
        return min(times)

    # ------------------------------------------------------------------ application

    def want(self, now: float) -> list[Effect]:
        self._observe(now)
        if self._want:
            raise RuntimeError(f"{self.lock}: node {self.me} already wants or holds the lock")
        return self._new_request(now)

    def release(self, now: float) -> list[Effect]:
        self._observe(now)
        grant, grantor = self._grant, self._grantor
        self._want, self._grant, self._grantor = 0, None, None
        if grant is None or grantor is None:
            return []
        return self._send_release(grantor, grant.token, now)

    # ------------------------------------------------------------------ events

    def receive(self, msg: object, now: float) -> list[Effect]:
        self._observe(now)
        if isinstance(msg, CRequest):
            return self._on_request(msg, now)
        if isinstance(msg, CGrant):
            return self._on_grant(msg, now)
        if isinstance(msg, CRelease):
            return self._on_release(msg, now)
        if isinstance(msg, CQuery):
            return self._on_query(msg, now)
        if isinstance(msg, CState):
            return self._on_state(msg, now)
        raise TypeError(f"centralized mutex: unexpected {type(msg).__name__}")

    def suspect(self, peer: NodeId, now: float) -> list[Effect]:
        self._observe(now)
        self._suspected.add(peer)
        return self._check_leader(now)

    def recover(self, peer: NodeId, now: float) -> list[Effect]:
        self._observe(now)
        self._suspected.discard(peer)
        return self._check_leader(now)

    def tick(self, now: float) -> list[Effect]:
        self._observe(now)
        out = self._check_leader(now)
        grant = self._grant
        if grant is not None and now >= grant.expires_at:
            out.append(LeaseOver(grant))
            out += self.release(now)
        if self.wanting and now - self._sent_at >= self.config.request_retry:
            out.append(Note(f"no grant for {self.lock}: asking again"))
            out += self._new_request(now)
        out += self._pump(now)
        return out

    def _observe(self, now: float) -> None:
        """Notice a pause: a gap between events longer than `pause_gap` (the driver
        ticks far more often).  Time spent frozen is not counted as queueing time in
        a grant's `waited`, and a coordinator waking up grants nothing for
        `max_delay`: a deposed coordinator must not hand out leases that start after
        it was deposed."""
        last = self._last_event
        if last is not None and now - last > self.config.pause_gap:
            self._awake_since = now
            if self._coord is not None:
                # Messages sent to us while we were frozen (a newer epoch's QUERY) are
                # still arriving: grant nothing, not even to ourselves, until they have.
                self._coord.ready_at = max(self._coord.ready_at, now + self.config.max_delay)
        self._last_event = now if last is None else max(last, now)

    # ------------------------------------------------------------------ requester

    def _new_request(self, now: float) -> list[Effect]:
        self._req_counter += 1
        self._want = self._req_counter
        self._anchor = self._sent_at = now
        leader = self._leader
        if leader == self.me:
            return self._enqueue(self.me, self._want, now) if self._coord else []
        if leader is None:
            return []
        return [Send(leader, CRequest(self.lock, self.me, self.epoch, self._want))]

    def _on_grant(self, msg: CGrant, now: float) -> list[Effect]:
        if msg.epoch < self.epoch or msg.req != self._want or self._grant is not None:
            # Not for a request we still wait on: hand it back so the lease ends now.
            note = Note(f"unwanted grant from {msg.sender} (epoch {msg.epoch.number})")
            return [note, Send(msg.sender, CRelease(self.lock, self.me, msg.epoch, msg.token))]
        self.epoch = msg.epoch
        return self._accept(msg.sender, FencingToken(msg.token), msg.waited, now)

    def _accept(self, grantor: NodeId, token: FencingToken, waited: float,
                now: float) -> list[Effect]:
        # The grant was issued at least `waited` after our request left (the request
        # reached the coordinator after it left, then sat queued that long), so the
        # lease may run from anchor + waited - slowed by the drift bound, since that
        # duration was measured on the coordinator's clock.
        start = self._anchor + waited * (1 - self.config.drift_bound)
        expires = start + self.config.lease - self.config.epsilon
        if now >= expires:
            # Queued past its term: the lease is already over, ask again.
            out: list[Effect] = [Note(f"grant for {self.lock} arrived expired: asking again")]
            out += self._send_release(grantor, token, now)
            return out + self._new_request(now)
        self._grant = Grant(self.lock, self.me, token, expires)
        self._grantor = grantor
        return [Enter(self._grant)]

    def _send_release(self, grantor: NodeId, token: FencingToken, now: float) -> list[Effect]:
        if grantor == self.me:
            return self._freed(self.me, token, now)
        return [Send(grantor, CRelease(self.lock, self.me, self.epoch, token))]

    def _on_query(self, msg: CQuery, now: float) -> list[Effect]:
        if msg.epoch < self.epoch:
            # An older coordinator: tell it the newer epoch (it starts a later one if it leads).
            return [Send(msg.sender, CState(self.lock, self.me, self.epoch, False, False, 0))]
        self.epoch = msg.epoch
        out: list[Effect] = []
        if self._coord is not None and msg.sender != self.me:
            self._coord = None
            self._deposed_at = now
            out.append(Note(f"stops coordinating {self.lock}: {msg.sender} leads a newer epoch"))
        waiting = self.wanting
        if waiting:
            # The answer is the new request: the lease will be timed from now.
            self._req_counter += 1
            self._want = self._req_counter
            self._anchor = self._sent_at = now
        state = CState(self.lock, self.me, self.epoch, self._grant is not None, waiting,
                       self._want if waiting else 0)
        return [*out, Send(msg.sender, state)]

    # ------------------------------------------------------------------ coordinator

    def _on_request(self, msg: CRequest, now: float) -> list[Effect]:
        if msg.epoch > self.epoch:
            return self._newer_epoch_seen(msg.epoch, now)
        if self._coord is None:
            return []  # not the coordinator here: the requester re-asks after its timeout
        return self._enqueue(msg.sender, msg.req, now)

    def _on_state(self, msg: CState, now: float) -> list[Effect]:
        if msg.epoch > self.epoch:
            return self._newer_epoch_seen(msg.epoch, now)
        if self._coord is None or msg.epoch != self.epoch or not msg.waiting:
            return []
        return self._enqueue(msg.sender, msg.req, now)

    def _on_release(self, msg: CRelease, now: float) -> list[Effect]:
        return self._freed(msg.sender, FencingToken(msg.token), now)

    def _freed(self, node: NodeId, token: FencingToken, now: float) -> list[Effect]:
        c = self._coord
        if c is None or c.current is None:
            return []
        if c.current.node != node or c.current.token != token:
            return []  # a release of an earlier lease (already expired here)
        c.current = None
        return self._pump(now)

    def _enqueue(self, node: NodeId, req: int, now: float) -> list[Effect]:
        c = self._coord
        assert c is not None
        for i, (queued, old, _) in enumerate(c.queue):
            if queued == node:
                if req > old:  # (an older one arriving late, reordered, changes nothing)
                    c.queue[i] = (node, req, now)  # a re-sent request keeps its place
                break
        else:
            c.queue.append((node, req, now))
        return self._pump(now)

    def _pump(self, now: float) -> list[Effect]:
        c = self._coord
        if c is None or now < c.ready_at:
            return []
        out: list[Effect] = []
        if c.current is not None and now >= c.current.until:
            out.append(Note(f"lease of {c.current.node} on {self.lock} expired unreleased"))
            c.current = None
        if c.current is not None or not c.queue:
            return out
        node, req, arrived = c.queue.pop(0)
        c.seq += 1
        token = self.epoch.token(c.seq)
        c.current = _Outstanding(node, req, token,
                                 now + self.config.lease + self.config.epsilon)
        waited = now - max(arrived, self._awake_since)
        if node != self.me:
            return [*out, Send(node, CGrant(self.lock, self.me, self.epoch, req, token, waited))]
        if req != self._want or self._grant is not None:
            c.current = None  # our own request is gone: next
            return out + self._pump(now)
        return out + self._accept(self.me, token, waited, now)

    # ------------------------------------------------------------------ leadership

    def _check_leader(self, now: float) -> list[Effect]:
        leader = self._view.leader(frozenset(self._suspected))
        if leader == self._leader:
            return self._reclaim(now) if leader == self.me and self._coord is None else []
        self._leader = leader
        out: list[Effect] = [Note(f"{self.lock}: coordinator is now {leader}")]
        if leader == self.me:
            return out + self._start_epoch(self.epoch, now)
        if self._coord is not None:
            self._coord = None
            out.append(Note(f"stops coordinating {self.lock}"))
        if self.wanting:
            out += self._new_request(now)  # to the new coordinator
        return out

    def _reclaim(self, now: float) -> list[Effect]:
        """We lead in our own view but another node's QUERY deposed us.

        If that node is higher and trusted, it leads (our view will follow).  If it
        is lower or suspected, waiting would leave the requests sent to us unanswered
        forever: after a recovery wait's grace (so two nodes that disagree about the
        leader only for a while do not depose each other in a loop) take over with a
        newer epoch, as Bully's higher node does.
        """
        owner = NodeId(self.epoch.owner)
        if owner > self.me and owner not in self._suspected:
            return []
        if now < self._deposed_at + self.config.recovery_wait:
            return []
        return self._start_epoch(self.epoch, now)

    def _newer_epoch_seen(self, newer: Epoch, now: float) -> list[Effect]:
        if self._leader == self.me:
            return self._start_epoch(newer, now)
        self.epoch = newer
        if self._coord is not None:
            self._coord = None
            self._deposed_at = now
        return []

    def _start_epoch(self, after: Epoch, now: float) -> list[Effect]:
        self.epoch = max(self.epoch, after).next_for(self.me)
        self._coord = _Coordinator(ready_at=now + self.config.recovery_wait)
        out: list[Effect] = [Note(f"coordinates {self.lock} in epoch {self.epoch.number}: "
                                  "asks every node, grants after the recovery wait")]
        if self.wanting:
            self._want = self._req_counter = self._req_counter + 1
            self._anchor = self._sent_at = now
            self._coord.queue.append((self.me, self._want, now))
        for node in self.nodes:
            if node != self.me:
                out.append(Send(node, CQuery(self.lock, self.me, self.epoch)))
        return out
