"""Leader election: the chapter's Bully and Ring algorithms as sans-IO cores.

API (both cores have the same shape; `ElectionCore` is the Protocol)::

    from coord.election import BullyNode, RingNode, ElectionConfig, NodeId, Send, LeaderChanged

    node = BullyNode(NodeId(3), peers=[NodeId(1), ..., NodeId(5)], config, first_round=0)
    node = RingNode(NodeId(3), ring_order=[NodeId(1), ..., NodeId(5)], config, first_round=0)

    node.start_election(now)   -> list[Effect]   # at start-up, after a restart, or on demand
    node.step(msg, now)        -> list[Effect]   # a BullyMessage / RingMessage arrived
    node.tick(now)             -> list[Effect]   # call at (or after) node.next_deadline()
    node.suspect(peer, now)    -> list[Effect]   # failure detector: peer now suspected
    node.recover(peer, now)    -> list[Effect]   # failure detector: peer trusted again
    node.claim(peer, now)      -> list[Effect]   # peer's heartbeat says "I am the coordinator"
    RingNode.send_failed(msg, to, now)           # the transport could not deliver to `to`

    node.leader          NodeId | None   # this node's view of the coordinator
    node.next_deadline() float | None    # when tick() has work (None: nothing pending)

    Effect = Send(to, msg) | LeaderChanged(leader, previous, at)

A driver executes effects in order: `Send` -> deliver `msg` to node `to`
(one-way, loss is tolerated: the cores retry on their timers);
`LeaderChanged` -> tell the application (it is emitted exactly when
`leader` changes value, including to None when the old leader is
suspected).  A driver must call `start_election` once when a node starts
(that is how a recovered higher id takes over), feed its failure detector's
Suspect/Recover transitions to `suspect`/`recover`, and call `tick` when
`next_deadline()` passes.  To repair a lost COORDINATOR, a driver marks the
heartbeats of a node whose `leader` is itself (`Heartbeat.coordinator`) and
feeds a marked heartbeat to the receiver's `claim`; without that, a node
that missed the announcement keeps its old leader while that one lives.
Cores never read a clock or do I/O; `now` is in the unit of
`ElectionConfig`'s timeouts.

Guarantee (checked by tests/sim/test_election_sim.py): once faults stop and
every live node's failure detector is accurate, all live nodes agree on the
highest live id within a bound stated in docs/election.md.  Before that,
two nodes may name different leaders: a user that needs at most one acting
coordinator must add leases/fencing (coord/lease).

Message shapes and labels are in `coord.election.messages`; the trio
driver and the trace recording are in `coord.election.driver`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coord.election.bully import BullyEffect, BullyNode, BullyPhase
from coord.election.messages import (
    BullyCoordinator,
    BullyElection,
    BullyMessage,
    BullyOk,
    ElectionMessage,
    RingCoordinator,
    RingElection,
    RingMessage,
    label,
)
from coord.election.ring import RingEffect, RingNode, RingPhase
from coord.election.types import (
    ElectionConfig,
    ElectionConfigError,
    LeaderChanged,
    NodeId,
    Send,
)

Effect = Send[BullyMessage] | Send[RingMessage] | LeaderChanged


class ElectionCore(Protocol):
    """What a driver (or a user such as coord/mutex) needs from either algorithm."""

    id: NodeId

    @property
    def leader(self) -> NodeId | None: ...

    def next_deadline(self) -> float | None: ...

    def start_election(self, now: float) -> Sequence[Effect]: ...

    def tick(self, now: float) -> Sequence[Effect]: ...

    def suspect(self, peer: NodeId, now: float) -> Sequence[Effect]: ...

    def recover(self, peer: NodeId, now: float) -> Sequence[Effect]: ...

    def claim(self, peer: NodeId, now: float) -> Sequence[Effect]: ...


__all__ = [
    "BullyCoordinator",
    "BullyEffect",
    "BullyElection",
    "BullyMessage",
    "BullyNode",
    "BullyOk",
    "BullyPhase",
    "Effect",
    "ElectionConfig",
    "ElectionConfigError",
    "ElectionCore",
    "ElectionMessage",
    "LeaderChanged",
    "NodeId",
    "RingCoordinator",
    "RingEffect",
    "RingElection",
    "RingMessage",
    "RingNode",
    "RingPhase",
    "Send",
    "label",
]
