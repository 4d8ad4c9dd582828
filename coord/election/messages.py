"""The election protocol messages, registered as one-way RPC notifications.

They are plain frozen dataclasses, so the sans-IO cores and the simulator use
them directly; the `@notification` registration only names them for the RPC
layer (bookkeeping, no I/O).

Invariants:
* Every message names its sender, so a receiver never depends on the
  transport to tell who spoke (the simulator has no RPC peer).
* `round` names one election attempt of its starter (Bully: the node that
  sent ELECTION; Ring: the node that started the circulating message); a
  reply or a returning message for an older round is recognised as stale.
* `stamp` is the sender's Lamport time of the send, set by drivers when they
  trace (cores leave it 0 and never read it).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.election.types import NodeId
from coord.wire.schema import Notification, notification


@notification("election.bully.election")
@dataclass(frozen=True, slots=True)
class BullyElection(Notification):
    """"I am holding an election": sent to every higher id."""

    sender: NodeId
    round: int
    stamp: int = 0


@notification("election.bully.ok")
@dataclass(frozen=True, slots=True)
class BullyOk(Notification):
    """"I am alive and higher; I take over": the answer to an ELECTION."""

    sender: NodeId
    round: int  # the round of the ELECTION it answers
    stamp: int = 0


@notification("election.bully.coordinator")
@dataclass(frozen=True, slots=True)
class BullyCoordinator(Notification):
    """"I am the coordinator": sent by the winner to every lower id."""

    sender: NodeId
    stamp: int = 0


@notification("election.ring.election")
@dataclass(frozen=True, slots=True)
class RingElection(Notification):
    """Travels the ring collecting the ids of the live nodes it passed."""

    sender: NodeId  # the node that forwarded it (the previous hop)
    starter: NodeId
    round: int  # the starter's round
    ids: tuple[NodeId, ...]  # starter first, then every node that forwarded it
    stamp: int = 0


@notification("election.ring.coordinator")
@dataclass(frozen=True, slots=True)
class RingCoordinator(Notification):
    """Travels the ring once announcing `leader` = max(members)."""

    sender: NodeId
    starter: NodeId
    round: int
    leader: NodeId
    members: tuple[NodeId, ...]  # the ids the ELECTION collected
    hops: tuple[NodeId, ...]  # nodes that already handled this announcement
    stamp: int = 0


BullyMessage = BullyElection | BullyOk | BullyCoordinator
RingMessage = RingElection | RingCoordinator
ElectionMessage = BullyMessage | RingMessage


def label(msg: ElectionMessage) -> str:
    """A short trace label: the chapter's message name plus what it carries."""
    match msg:
        case BullyElection():
            return f"ELECTION r{msg.round}"
        case BullyOk():
            return f"OK r{msg.round}"
        case BullyCoordinator():
            return f"COORDINATOR {msg.sender}"
        case RingElection():
            return f"ELECTION [{','.join(str(i) for i in msg.ids)}]"
        case RingCoordinator():
            return f"COORDINATOR {msg.leader}"


@notification("election.heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat(Notification):
    """Failure-detector traffic between election nodes: not a protocol message.

    Drivers neither trace nor count it with the protocol's messages.  It
    also carries the sitting coordinator's re-announcement: `coordinator`
    is true when the sender names itself leader, and the receiver hands that
    claim to its core (`claim`), which repairs a lost COORDINATOR without a
    message of its own.
    """

    sender: NodeId
    coordinator: bool = False  # the sender's core names the sender as leader
