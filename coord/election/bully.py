"""The Bully election (Garcia-Molina 1982; the chapter's 8.3.3) as a sans-IO core.

The chapter's rules:
* A node that finds the coordinator unresponsive sends ELECTION to every
  node with a **higher** id.
* A node receiving ELECTION from a lower id answers OK and holds its own
  election (unless it is already holding one).
* No OK within `ok_timeout`: the node wins and sends COORDINATOR to every
  **lower** id.  An OK: it waits for a COORDINATOR; none within
  `coordinator_timeout`: it starts again.
* A recovered node holds an election at once, so a recovered higher id takes
  over (the driver calls `start_election` on a fresh core after a restart).

Refinements (each keeps the chapter's outcome, and saves messages):
* A sitting coordinator that trusts no higher node answers an ELECTION with
  OK and a COORDINATOR to the sender alone, instead of a whole new election.
* A node following a trusted higher leader answers OK and holds no election
  of its own: the sender asked that leader too, and a live leader answers.

What makes it hold up with unreliable failure detection (see
docs/election.md for the argument):
* A COORDINATOR from a **lower** id is never adopted; it means that node
  missed us, so we bully it by holding an election.
* A COORDINATOR from a suspected node, or one lower than a leader we still
  trust, is stale (delayed past a later election) and is not adopted.
* When a suspected node recovers and is higher than our leader, we hold an
  election: if it is alive it answers OK and takes over (or, if it had
  announced itself while suspected, we adopt that announcement).
* When we suspect our leader after ignoring a lower node's COORDINATOR (we
  still trusted the leader then), we follow the highest such announcer.
* A node that won by timeout while it still trusts a higher node (whose
  ELECTION or OK was slow, or which is dead but not yet suspected) holds
  another election after `coordinator_timeout`, until that node answers or
  is suspected.

Repairing a lost COORDINATOR (`claim`): a node waiting for a COORDINATOR
times out and asks again, but one that is not waiting (it follows an older
leader that is still alive) would keep that leader for ever.  So the sitting
coordinator keeps re-announcing itself: its driver marks every heartbeat it
sends with "I am the coordinator", and the receiving driver calls `claim`.
A claim is judged as a COORDINATOR would be, except that what is only
right for a fresh announcement is left out: a claim of our own leader
changes nothing (it must not cut short an election we hold to ask a
recovered higher node), a claim of a suspected or lower node is ignored
(the detector's recovery, or the higher leader's own claims, repair those),
and ignored claims are not remembered as deferred announcements (claims
repeat, so the next one after the reason goes away does the job).

Invariants:
* `leader` is None or >= this node's id, and never a node we suspect.
* `phase` is not IDLE only with a timer pending; in IDLE a pending timer is
  the recheck of a node that won while it still trusted a higher one.
* A `LeaderChanged` effect is emitted exactly when `leader` changes value.
* ELECTION goes only to higher ids, COORDINATOR only to lower ids, OK only
  to the (lower) sender of an ELECTION.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from coord.election.messages import BullyCoordinator, BullyElection, BullyMessage, BullyOk
from coord.election.types import ElectionConfig, LeaderChanged, NodeId, Send

BullyEffect = Send[BullyMessage] | LeaderChanged


class BullyPhase(enum.Enum):
    IDLE = "idle"  # no election of ours in progress
    ELECTING = "electing"  # ELECTIONs sent to higher ids; waiting for an OK
    WAITING = "waiting"  # an OK came; waiting for the winner's COORDINATOR


class BullyNode:
    """One node of the Bully algorithm: feed it events, execute the effects it returns."""

    def __init__(self, node_id: NodeId, peers: Iterable[NodeId],
                 config: ElectionConfig | None = None, *, first_round: int = 0) -> None:
        self.id = node_id
        self.config = (config or ElectionConfig()).validate()
        others = sorted(set(peers) - {node_id})
        self._higher = tuple(p for p in others if p > node_id)  # ELECTION goes here
        self._lower = tuple(p for p in others if p < node_id)  # COORDINATOR goes here
        self._leader: NodeId | None = None  # our view of the coordinator
        self._phase = BullyPhase.IDLE
        self._deadline: float | None = None  # end of the OK/COORDINATOR wait, or the recheck
        # Our election attempts are numbered so an OK answering an older
        # attempt (delayed) is not taken for an answer to the current one.
        # A driver restarting a node passes a first_round above any it used.
        self._round = first_round
        self._suspected: set[NodeId] = set()  # our failure detector's opinion
        # A higher node came back while an election of ours was running: our
        # ELECTION may have been lost with it, so ask again when this one ends.
        self._recheck = False
        # A COORDINATOR we ignored only because we suspected its sender: if
        # the detector trusts that node again, its announcement stands (a
        # restarted node usually announces before our detector hears it).
        self._deferred: NodeId | None = None
        # A COORDINATOR we ignored because our (higher) leader still looked
        # alive: if we come to suspect that leader, the announcer won an
        # election that leader missed, and we follow it without another one.
        self._deferred_lower: NodeId | None = None

    # ------------------------------------------------------------------ views

    @property
    def leader(self) -> NodeId | None:
        return self._leader

    @property
    def phase(self) -> BullyPhase:
        return self._phase

    @property
    def round(self) -> int:
        return self._round

    @property
    def suspected(self) -> frozenset[NodeId]:
        return frozenset(self._suspected)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None: nothing pending)."""
        return self._deadline

    # ------------------------------------------------------------------ inputs

    def start_election(self, now: float) -> list[BullyEffect]:
        """Hold an election (the coordinator is unresponsive, or we just recovered)."""
        self._round += 1
        if not self._higher:
            return self._win(now)
        self._phase = BullyPhase.ELECTING
        self._deadline = now + self.config.ok_timeout
        # Sent to every higher id, suspected or not: a suspicion may be false,
        # and a dead node costs only a message and the OK timeout.
        return [Send(p, BullyElection(self.id, self._round)) for p in self._higher]

    def step(self, msg: BullyMessage, now: float) -> list[BullyEffect]:
        """A message from another node arrived."""
        match msg:
            case BullyElection():
                return self._on_election(msg, now)
            case BullyOk():
                return self._on_ok(msg, now)
            case BullyCoordinator():
                return self._on_coordinator(msg, now)

    def claim(self, peer: NodeId, now: float) -> list[BullyEffect]:
        """`peer` says it is the coordinator (the re-announcement on its heartbeats)."""
        if peer <= self.id or peer == self._leader or peer in self._suspected:
            return []
        if self._leader is not None and self._leader > peer:
            return []  # it missed the higher leader we trust, whose own claims tell it
        return self._adopt(peer, now)  # its COORDINATOR to us was lost (or is still coming)

    def tick(self, now: float) -> list[BullyEffect]:
        """Time passed; fire the pending timeout if it is due."""
        if self._deadline is None or now < self._deadline:
            return []
        if self._phase is BullyPhase.ELECTING:
            return self._win(now)  # no higher node answered
        if self._phase is BullyPhase.IDLE:  # the recheck set by _win()
            self._deadline = None
            if self._leader == self.id and self._higher_trusted():
                return self.start_election(now)
            return []
        return self.start_election(now)  # WAITING: the promised COORDINATOR never came

    def suspect(self, peer: NodeId, now: float) -> list[BullyEffect]:
        """The failure detector now suspects `peer`."""
        if peer == self.id:
            return []
        self._suspected.add(peer)
        if peer != self._leader:
            return []
        successor, self._deferred_lower = self._deferred_lower, None
        if successor is not None and successor not in self._suspected:
            return self._adopt(successor, now)
        out: list[BullyEffect] = self._set_leader(None, now)
        if self._phase is not BullyPhase.ELECTING:
            out += self.start_election(now)
        return out

    def recover(self, peer: NodeId, now: float) -> list[BullyEffect]:
        """The failure detector trusts `peer` again."""
        self._suspected.discard(peer)
        deferred, self._deferred = self._deferred, None
        beats_leader = self._leader is None or peer > self._leader
        if deferred == peer and peer > self.id and beats_leader:
            return self._adopt(peer, now)
        if peer > self.id and beats_leader:
            # It may have been alive all along (a false suspicion, a pause)
            # and missed our elections: ask it; if alive it answers OK and
            # takes over, as a recovered higher node must.
            if self._phase is BullyPhase.IDLE:
                return self.start_election(now)
            self._recheck = True
        return []

    # ------------------------------------------------------------------ handlers

    def _on_election(self, msg: BullyElection, now: float) -> list[BullyEffect]:
        if msg.sender >= self.id:
            return []  # only lower ids send us ELECTION; a confused peer gets no OK
        out: list[BullyEffect] = [Send(msg.sender, BullyOk(self.id, msg.round))]
        if self._phase is not BullyPhase.IDLE:
            return out  # our own election is already under way
        if self._leader == self.id and not self._higher_trusted():
            # A sitting coordinator with no higher node it trusts would win
            # again at once: tell just the sender, who evidently missed it
            # (others who missed it send ELECTIONs of their own).
            return [*out, Send(msg.sender, BullyCoordinator(self.id))]
        if self._leader is not None and self._leader > self.id:
            # We follow a higher leader we trust.  The sender sent ELECTION
            # to it as well, and a live leader answers with COORDINATOR; if
            # it is dead, our detector will start our election.  Holding one
            # now would only repeat the leader's answer (the chapter's rule
            # assumes the coordinator is gone).
            return out
        return out + self.start_election(now)

    def _on_ok(self, msg: BullyOk, now: float) -> list[BullyEffect]:
        current = msg.round == self._round and msg.sender > self.id
        if self._phase is BullyPhase.ELECTING and current:
            self._phase = BullyPhase.WAITING
            self._deadline = now + self.config.coordinator_timeout
        return []

    def _on_coordinator(self, msg: BullyCoordinator, now: float) -> list[BullyEffect]:
        c = msg.sender
        if c == self.id:
            return []
        if c < self.id:
            # A lower node thinks it won: it missed us.  Bully it.
            return self.start_election(now) if self._phase is BullyPhase.IDLE else []
        if c in self._suspected:
            self._deferred = c
            return []  # stale, or a slow or false suspicion that recover() repairs
        if self._leader is not None and self._leader > c:
            # The highest such announcer: a lower one is staler still.
            self._deferred_lower = max(c, self._deferred_lower or c)
            return []  # stale: a higher coordinator we still trust was announced since
        return self._adopt(c, now)

    def _adopt(self, c: NodeId, now: float) -> list[BullyEffect]:
        self._phase = BullyPhase.IDLE
        self._deadline = None
        self._deferred = self._deferred_lower = None
        return self._set_leader(c, now) + self._after_election(now)

    # ------------------------------------------------------------------ helpers

    def _higher_trusted(self) -> bool:
        return any(p not in self._suspected for p in self._higher)

    def _win(self, now: float) -> list[BullyEffect]:
        self._phase = BullyPhase.IDLE
        # Winning by timeout while a higher node is still trusted means an
        # ELECTION or OK was slow or lost (or that node is dead and not yet
        # suspected): ask again later, until it answers or is suspected.
        self._deadline = now + self.config.coordinator_timeout if self._higher_trusted() else None
        out: list[BullyEffect] = self._set_leader(self.id, now)
        out += [Send(p, BullyCoordinator(self.id)) for p in self._lower]
        return out + self._after_election(now)

    def _after_election(self, now: float) -> list[BullyEffect]:
        if not self._recheck:
            return []
        self._recheck = False
        return self.start_election(now)

    def _set_leader(self, leader: NodeId | None, now: float) -> list[BullyEffect]:
        if leader == self._leader:
            return []
        previous, self._leader = self._leader, leader
        return [LeaderChanged(leader, previous, now)]
