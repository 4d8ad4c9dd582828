"""The 2PC protocol messages, registered as one-way RPC notifications.

They are plain frozen dataclasses, so the sans-IO cores and the simulator use
them directly; the `@notification` registration only names them for the RPC
layer (registration is bookkeeping, no I/O).

Invariants:
* Every message names its transaction and its sender, so a receiver never
  depends on the transport to tell who spoke (the simulator has no RPC peer).
* Messages are one-way: the cores retransmit on their own timers, so a lost,
  duplicated or reordered message is always harmless (handlers are idempotent).
* `stamp` is the sender's Lamport time of the send, set by drivers when they
  trace (cores leave it 0 and never read it): it lets a trace pair each
  receive with its exact send, retransmissions and duplicates included.
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.twopc.types import Answer, Decision, NodeName, TxId, Vote, Write
from coord.wire.schema import Notification, notification


@notification("2pc.prepare")
@dataclass(frozen=True, slots=True)
class Prepare(Notification):
    """Phase 1: do the work, log undo/redo, vote."""

    txid: TxId
    sender: NodeName  # the coordinator
    participants: tuple[NodeName, ...]  # everyone in the transaction (for termination)
    writes: tuple[Write, ...]  # this participant's part of the work
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


@notification("2pc.vote")
@dataclass(frozen=True, slots=True)
class VoteMsg(Notification):
    txid: TxId
    sender: NodeName
    vote: Vote
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


@notification("2pc.decision")
@dataclass(frozen=True, slots=True)
class DecisionMsg(Notification):
    """Phase 2: the outcome.  Sent by the coordinator (until ACKed)."""

    txid: TxId
    sender: NodeName
    decision: Decision
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


@notification("2pc.ack")
@dataclass(frozen=True, slots=True)
class Ack(Notification):
    txid: TxId
    sender: NodeName
    decision: Decision  # what was applied (lets the coordinator detect a confused peer)
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


@notification("2pc.query")
@dataclass(frozen=True, slots=True)
class DecisionQuery(Notification):
    """Cooperative termination: "do you know how `txid` ended?" """

    txid: TxId
    sender: NodeName
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


@notification("2pc.query_reply")
@dataclass(frozen=True, slots=True)
class QueryReply(Notification):
    txid: TxId
    sender: NodeName
    answer: Answer
    stamp: int = 0  # the sender's Lamport time of the send (traces only)


Message = Prepare | VoteMsg | DecisionMsg | Ack | DecisionQuery | QueryReply


def describe(msg: Message) -> str:
    """A short label for traces: "PREPARE", "READY", "COMMIT", "ACK", "QUERY", ..."""
    if isinstance(msg, Prepare):
        return "PREPARE"
    if isinstance(msg, VoteMsg):
        return msg.vote.name if msg.vote is Vote.READY else "VOTE-ABORT"
    if isinstance(msg, DecisionMsg):
        return msg.decision.name
    if isinstance(msg, Ack):
        return "ACK"
    if isinstance(msg, DecisionQuery):
        return "QUERY"
    return f"ANSWER {msg.answer.name}"


def label_of(msg: Message) -> str:
    """The trace label of a message: its kind and transaction, e.g. "READY t1"."""
    return f"{describe(msg)} {msg.txid}"
