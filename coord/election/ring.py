"""The Ring election (Chang & Roberts 1979 with the chapter's id lists) as a sans-IO core.

The chapter's rules:
* Nodes form a logical ring (`ring_order`).  A node that finds the
  coordinator gone sends ELECTION, holding its own id, to its successor.
* Each node appends its id and forwards the message to its successor,
  skipping successors it believes dead (failure detector, or a send that
  failed: `send_failed`).  A message's own starter is skipped only after a
  failed send, never on suspicion alone: the message suggests it is alive
  (restarted before our detector noticed) and must get back to it.
* When the message is back at its starter, the starter picks the highest
  collected id and sends one COORDINATOR round the ring.

Concurrent starters: a node that has started its own election swallows an
ELECTION of a lower starter (its own message will tell that starter the
result), and any node adopting an announcement abandons its own election,
so of several concurrent starters normally only the highest one's messages
complete the circle.  A message whose starter was skipped (it died) would
circle forever; the first node to see its own id in the list drops it and
starts an election of its own.

Every node that started or forwarded an ELECTION waits at most
`ring_timeout` for a COORDINATOR and otherwise starts again, so a message
lost with a crashed node is replaced.  Adoption rules (as in bully.py):
an announcement of a suspected node, or lower than a leader we still trust,
is stale and not adopted; an announcement lower than ourselves means we were
skipped, so we hold an election.  A not-adopted announcement is kept: it
is adopted after all if its suspected leader is trusted again, or if we come
to suspect our own leader and the announcement had left it out.  A node the
election we adopted skipped
(`members` lacks it) has not heard the result: when it recovers, or after
`ring_timeout` if we never suspected it (someone else's false suspicion, a
refused send), we hold another election so that it hears.

Repairing a lost COORDINATOR (`claim`): a node that is not waiting for an
announcement (it follows an older leader that is still alive) would keep
that leader for ever if the one that reached everyone else missed it.  So
the sitting coordinator keeps re-announcing itself on the heartbeats its
driver already sends to every node (not round the ring: the repair costs no
message), and the receiving driver calls `claim`.  A claim is judged by the
rules above, except that a claim of our own leader changes nothing, a claim
of a suspected or lower node is ignored (the detector's recovery, or the
higher leader's own claims, repair those) and an ignored claim is not kept
as a deferred announcement (the next claim does the job).  A claim carries
no member list, so adopting one keeps the members of the election we held
before: a node missing from those still gets its recheck election.

Invariants:
* `leader` is None or >= this node's id, and never a node we suspect.
* `phase` is not IDLE only with a timer pending; in IDLE a pending timer is
  the recheck for a skipped node.
* A `LeaderChanged` effect is emitted exactly when `leader` changes value.
* Every message goes to `successor(now)` (never to ourselves); an ELECTION
  never holds an id twice, a COORDINATOR never visits a node twice.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Literal

from coord.election.messages import RingCoordinator, RingElection, RingMessage
from coord.election.types import ElectionConfig, LeaderChanged, NodeId, Send

RingEffect = Send[RingMessage] | LeaderChanged
Verdict = Literal["adopt", "stale", "contest"]  # what to make of an announcement


class RingPhase(enum.Enum):
    IDLE = "idle"
    ELECTING = "electing"  # our ELECTION is circulating
    ANNOUNCING = "announcing"  # our COORDINATOR is circulating
    PARTICIPATING = "participating"  # we forwarded someone's ELECTION; awaiting COORDINATOR


class RingNode:
    """One node of the Ring algorithm: feed it events, execute the effects it returns."""

    def __init__(self, node_id: NodeId, ring_order: Sequence[NodeId],
                 config: ElectionConfig | None = None, *, first_round: int = 0) -> None:
        if node_id not in ring_order or len(set(ring_order)) != len(ring_order):
            raise ValueError(f"ring {list(ring_order)} must hold {node_id} and no id twice")
        self.id = node_id
        self.config = (config or ElectionConfig()).validate()
        at = list(ring_order).index(node_id)
        # The other nodes in ring order starting after us: successor candidates.
        self._after = tuple(ring_order[at + 1:]) + tuple(ring_order[:at])
        self._leader: NodeId | None = None
        self._phase = RingPhase.IDLE
        self._deadline: float | None = None
        self._round = first_round  # our election attempts; see BullyNode
        self._suspected: set[NodeId] = set()  # the failure detector's opinion
        # Nodes a send to which failed, skipped until the given time: a
        # refused connection is evidence, but only the detector can say a
        # node is back, and it never suspected (so never "recovers") a node
        # that was merely not listening yet.  Retrying after ring_timeout
        # bounds how long a live node can be left out.
        self._unreachable: dict[NodeId, float] = {}
        # The ids of the election whose result we hold: a trusted node not
        # among them has not heard the result (it was skipped), so we hold
        # another election (at once when it recovers, else after ring_timeout).
        self._members: frozenset[NodeId] = frozenset()
        # The latest announcement we did not adopt only because we suspected
        # its leader: if the detector trusts that node again, the
        # announcement was right after all (a slow detector, not a stale one).
        self._deferred: tuple[NodeId, tuple[NodeId, ...]] | None = None
        # A node came back while an election was running (it may have missed
        # it): hold another one when this one ends.
        self._recheck = False

    # ------------------------------------------------------------------ views

    @property
    def leader(self) -> NodeId | None:
        return self._leader

    @property
    def phase(self) -> RingPhase:
        return self._phase

    @property
    def round(self) -> int:
        return self._round

    @property
    def suspected(self) -> frozenset[NodeId]:
        return frozenset(self._suspected)

    def next_deadline(self) -> float | None:
        return self._deadline

    def successor(self, now: float, starter: NodeId | None = None) -> NodeId | None:
        """The next node in the ring we neither suspect nor failed to reach lately.

        A message's `starter` is not skipped on suspicion alone: the message
        itself suggests it is alive (it may have restarted before our
        detector noticed), and it is the node the message must get back to.
        Only a failed send to it skips it.
        """
        for p in self._after:
            if self._unreachable.get(p, now) > now:
                continue
            if p == starter or p not in self._suspected:
                return p
        return None

    # ------------------------------------------------------------------ inputs

    def start_election(self, now: float) -> list[RingEffect]:
        self._round += 1
        succ = self.successor(now)
        if succ is None:
            return self._alone(now)
        self._wait(RingPhase.ELECTING, now)
        return [Send(succ, RingElection(self.id, self.id, self._round, (self.id,)))]

    def step(self, msg: RingMessage, now: float) -> list[RingEffect]:
        match msg:
            case RingElection():
                return self._on_election(msg, now)
            case RingCoordinator():
                return self._on_coordinator(msg, now)

    def tick(self, now: float) -> list[RingEffect]:
        if self._deadline is None or now < self._deadline:
            return []
        if self._phase is RingPhase.IDLE:  # the recheck timer of _settle()
            self._deadline = None
            return self.start_election(now) if self._missing() else []
        return self.start_election(now)  # our message or the announcement was lost

    def claim(self, peer: NodeId, now: float) -> list[RingEffect]:
        """`peer` says it is the coordinator (the re-announcement on its heartbeats)."""
        if peer <= self.id or peer == self._leader or peer in self._suspected:
            return []
        if self._leader is not None and self._leader > peer:
            return []  # it missed the higher leader we trust, whose own claims tell it
        # Its announcement missed us (lost, or a circle that skipped us):
        # adopt it as _consider() would, ending any election of ours.
        self._phase, self._deadline = RingPhase.IDLE, None
        self._deferred = None
        return self._set_leader(peer, now) + self._settle(now)

    def suspect(self, peer: NodeId, now: float) -> list[RingEffect]:
        if peer == self.id:
            return []
        self._suspected.add(peer)
        if peer != self._leader:
            return []
        deferred, self._deferred = self._deferred, None
        if deferred is not None and peer not in deferred[1]:
            # We ignored an announcement that left our leader out, trusting
            # it still; now we agree with whoever held that election.
            self._leader = None  # judged as if we knew no leader ...
            verdict = self._consider(*deferred)
            self._leader = peer  # ... and restored, so the change is reported
            if verdict == "adopt":
                return self._set_leader(deferred[0], now) + self._settle(now)
        out: list[RingEffect] = self._set_leader(None, now)
        if self._phase is not RingPhase.ELECTING:
            out += self.start_election(now)
        return out

    def recover(self, peer: NodeId, now: float) -> list[RingEffect]:
        self._suspected.discard(peer)
        self._unreachable.pop(peer, None)
        deferred, self._deferred = self._deferred, None
        if deferred is not None and deferred[0] == peer and self._consider(*deferred) == "adopt":
            return self._set_leader(peer, now) + self._settle(now)
        beats_leader = self._leader is None or peer > self._leader
        # A higher node may be the new leader; a node the last election
        # skipped has not heard its result (ring messages reach it only by
        # going round, so hold an election rather than tell it).
        if peer != self.id and (beats_leader or peer not in self._members):
            if self._phase in (RingPhase.IDLE, RingPhase.PARTICIPATING):
                return self.start_election(now)  # (someone else's election may lack it)
            self._recheck = True
        return []

    def send_failed(self, msg: RingMessage, to: NodeId, now: float) -> list[RingEffect]:
        """Sending `msg` to `to` failed: skip `to` for a while and pass `msg` on past it.

        A failed send to the leader counts as suspecting it.
        """
        self._unreachable[to] = now + self.config.ring_timeout
        out: list[RingEffect] = []
        if to == self._leader:
            out += self._set_leader(None, now)
            if self._phase is not RingPhase.ELECTING:
                out += self.start_election(now)
        succ = self.successor(now)
        if succ is None:
            return out + self._alone(now)
        return [*out, Send(succ, msg)]

    # ------------------------------------------------------------------ handlers

    def _on_election(self, msg: RingElection, now: float) -> list[RingEffect]:
        if msg.starter == self.id:
            if msg.round != self._round or self._phase is not RingPhase.ELECTING:
                return []  # an older attempt of ours, or one we abandoned
            return self._announce(msg.ids, now)
        if self.id in msg.ids:
            # It passed us already and its starter was skipped: it would
            # circle for ever.  Drop it; hold our own election instead.
            busy = self._phase in (RingPhase.ELECTING, RingPhase.ANNOUNCING)
            return [] if busy else self.start_election(now)
        if self._phase is RingPhase.ELECTING and msg.starter < self.id:
            return []  # our own (higher) election will tell that starter the result
        succ = self.successor(now, msg.starter)
        if succ is None:
            return self._alone(now)
        if self._phase in (RingPhase.IDLE, RingPhase.PARTICIPATING):
            self._wait(RingPhase.PARTICIPATING, now)
        fwd = RingElection(self.id, msg.starter, msg.round, (*msg.ids, self.id))
        return [Send(succ, fwd)]

    def _on_coordinator(self, msg: RingCoordinator, now: float) -> list[RingEffect]:
        if msg.starter == self.id:
            if msg.round == self._round and self._phase is RingPhase.ANNOUNCING:
                self._phase, self._deadline = RingPhase.IDLE, None  # full circle: done
                return self._settle(now)
            return []
        if self.id in msg.hops:
            return []  # its starter was skipped; it has been everywhere already
        verdict = self._consider(msg.leader, msg.members)
        out: list[RingEffect] = []
        if verdict == "adopt":
            out += self._set_leader(msg.leader, now)
        succ = self.successor(now, msg.starter)
        if succ is not None:
            fwd = RingCoordinator(self.id, msg.starter, msg.round, msg.leader, msg.members,
                                  (*msg.hops, self.id))
            out.append(Send(succ, fwd))
        if verdict == "contest" and self._phase is RingPhase.IDLE:
            out += self.start_election(now)
        elif verdict == "adopt":
            out += self._settle(now)
        return out

    def _consider(self, leader: NodeId, members: tuple[NodeId, ...]) -> Verdict:
        """Judge an announcement: "adopt" it, ignore it as "stale", or "contest" it."""
        if leader < self.id:
            return "contest"  # we were skipped: the ring does not know about us
        if leader in self._suspected:
            self._deferred = (leader, members)
            return "stale"  # or a slow or false suspicion, which recover() repairs
        if self._leader is not None and self._leader > leader:
            if self._deferred is None or leader >= self._deferred[0]:
                self._deferred = (leader, members)  # a lower one is staler still
            return "stale"  # a higher leader we still trust was announced since
        # Adopting ends any election of ours: if ours held someone higher,
        # recover() or that node's own election brings it in.
        self._phase, self._deadline = RingPhase.IDLE, None
        self._members = frozenset(members)
        self._deferred = None
        return "adopt"

    # ------------------------------------------------------------------ helpers

    def _announce(self, ids: tuple[NodeId, ...], now: float) -> list[RingEffect]:
        # A node that forwarded the message may have died since: leave out
        # the ones we suspect (we are in `ids`, so there is always a winner).
        winner = max(i for i in ids if i not in self._suspected)
        out: list[RingEffect] = self._set_leader(winner, now)
        self._members = frozenset(ids)
        succ = self.successor(now)
        if succ is None:
            return out + self._alone(now)
        self._wait(RingPhase.ANNOUNCING, now)
        out.append(Send(succ, RingCoordinator(self.id, self.id, self._round, winner, ids,
                                              (self.id,))))
        return out

    def _alone(self, now: float) -> list[RingEffect]:
        """Everyone else is suspected: we are the only (hence highest) live node."""
        self._phase, self._deadline = RingPhase.IDLE, None
        self._recheck = False  # nobody to ask
        self._members = frozenset({self.id})
        return self._set_leader(self.id, now) + self._settle(now)

    def _missing(self) -> bool:
        """Is a node we trust left out of the election whose result we hold?"""
        return any(p not in self._suspected and p not in self._members for p in self._after)

    def _settle(self, now: float) -> list[RingEffect]:
        """An election ended here (phase IDLE): is another one due?"""
        if self._recheck:
            self._recheck = False
            return self.start_election(now)
        # A trusted node was skipped (a false suspicion somewhere, a refused
        # send): ask again later, not at once, or a lasting false suspicion
        # elsewhere would make elections circle back to back.
        self._deadline = now + self.config.ring_timeout if self._missing() else None
        return []

    def _wait(self, phase: RingPhase, now: float) -> None:
        self._phase = phase
        self._deadline = now + self.config.ring_timeout

    def _set_leader(self, leader: NodeId | None, now: float) -> list[RingEffect]:
        if leader == self._leader:
            return []
        previous, self._leader = self._leader, leader
        return [LeaderChanged(leader, previous, now)]
