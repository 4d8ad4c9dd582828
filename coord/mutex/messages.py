"""The mutual-exclusion protocol messages, registered as one-way RPC notifications.

Plain frozen dataclasses: the cores and the simulator use them directly; the
`@notification` registration only names them for the RPC layer.

Invariants:
* Every message names its lock and its sender, so a receiver never depends
  on the transport to tell who spoke (the simulator has no RPC peer).
* `stamp` is the sender's Lamport time of the send, set by the driver when it
  traces (cores leave it 0 and never read it), so a trace pairs each receive
  with its exact send.  Ricart-Agrawala's own Lamport time is `ts`, a
  protocol field kept by the core itself.
* Messages are one-way; a lost one is recovered by the failure detector and
  timers (centralized re-request, ring regeneration), never by waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.mutex.types import Epoch, LockName, NodeId, token_text
from coord.wire.schema import Notification, notification

# ----------------------------------------------------------------------------- centralized


@notification("mutex.c.request")
@dataclass(frozen=True, slots=True)
class CRequest(Notification):
    lock: LockName
    sender: NodeId
    epoch: Epoch  # the sender's adopted coordinator epoch
    req: int  # the sender's request number (a grant echoes it)
    stamp: int = 0


@notification("mutex.c.grant")
@dataclass(frozen=True, slots=True)
class CGrant(Notification):
    lock: LockName
    sender: NodeId
    epoch: Epoch
    req: int  # the request this answers (the holder times its lease from its send)
    token: int
    waited: float  # seconds (coordinator clock) the request waited here before this grant
    stamp: int = 0


@notification("mutex.c.release")
@dataclass(frozen=True, slots=True)
class CRelease(Notification):
    lock: LockName
    sender: NodeId
    epoch: Epoch
    token: int
    stamp: int = 0


@notification("mutex.c.query")
@dataclass(frozen=True, slots=True)
class CQuery(Notification):
    """A new coordinator asks: do you hold the lock or wait for it?"""

    lock: LockName
    sender: NodeId
    epoch: Epoch
    stamp: int = 0


@notification("mutex.c.state")
@dataclass(frozen=True, slots=True)
class CState(Notification):
    """The answer to a query; `waiting` makes it a (re-anchored) request number `req`."""

    lock: LockName
    sender: NodeId
    epoch: Epoch  # the highest epoch the sender knows (a later one restarts the query)
    holding: bool
    waiting: bool
    req: int
    stamp: int = 0


# ----------------------------------------------------------------------------- Ricart-Agrawala


@notification("mutex.ra.request")
@dataclass(frozen=True, slots=True)
class RaRequest(Notification):
    lock: LockName
    sender: NodeId
    ts: int  # the request's Lamport time; (ts, sender) is its priority
    stamp: int = 0


@notification("mutex.ra.reply")
@dataclass(frozen=True, slots=True)
class RaReply(Notification):
    lock: LockName
    sender: NodeId
    ts: int  # the replier's Lamport time
    to_ts: int  # the request answered (a reply to an older request is ignored)
    highest: int = 0  # the highest fencing token the replier used or heard of
    stamp: int = 0


# ----------------------------------------------------------------------------- token ring


@notification("mutex.ring.token")
@dataclass(frozen=True, slots=True)
class RingToken(Notification):
    lock: LockName
    sender: NodeId
    epoch: Epoch  # the generation of this token; older ones are discarded
    seq: int  # entries made with this token (the fencing token's low bits)
    stamp: int = 0


@notification("mutex.ring.epoch")
@dataclass(frozen=True, slots=True)
class RingEpoch(Notification):
    """The token was declared lost; a token of `epoch` will be made after a wait."""

    lock: LockName
    sender: NodeId
    epoch: Epoch
    stamp: int = 0


# ----------------------------------------------------------------------------- liveness


@notification("mutex.heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat(Notification):
    """Feeds the failure detector; not a protocol message (never traced or counted).
    `coordinator`: the sender's election core names itself leader - the
    re-announcement that repairs a lost COORDINATOR (docs/election.md)."""

    sender: NodeId
    stamp: int = 0
    coordinator: bool = False


MutexMessage = (CRequest | CGrant | CRelease | CQuery | CState | RaRequest | RaReply
                | RingToken | RingEpoch)
PROTOCOL_MESSAGES: tuple[type, ...] = (CRequest, CGrant, CRelease, CQuery, CState, RaRequest,
                                       RaReply, RingToken, RingEpoch)


def label_of(msg: object) -> str:
    """The trace label: the message kind (first word, what counts group by) and details."""
    if isinstance(msg, CRequest):
        return f"REQUEST {msg.lock} r{msg.req}"
    if isinstance(msg, CGrant):
        return f"GRANT {msg.lock} r{msg.req} token {token_text(msg.token)}"
    if isinstance(msg, CRelease):
        return f"RELEASE {msg.lock}"
    if isinstance(msg, CQuery):
        return f"QUERY {msg.lock} epoch {msg.epoch.number}"
    if isinstance(msg, CState):
        what = "holding" if msg.holding else "waiting" if msg.waiting else "idle"
        return f"STATE {msg.lock} {what}"
    if isinstance(msg, RaRequest):
        return f"REQUEST {msg.lock} ts {msg.ts}"
    if isinstance(msg, RaReply):
        return f"REPLY {msg.lock} to ts {msg.to_ts}"
    if isinstance(msg, RingToken):
        return f"TOKEN {msg.lock} epoch {msg.epoch.number} seq {msg.seq}"
    if isinstance(msg, RingEpoch):
        return f"NEWTOKEN {msg.lock} epoch {msg.epoch.number}"
    return type(msg).__name__.upper()
