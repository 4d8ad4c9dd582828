"""`meta.liveness`: the metadata leader's failure-detector view of the chunk servers.

`meta.servers` (fs/meta/protocol.py) answers "which servers can take new
chunks"; this call answers "what does the leader think of each server, and
why": its state (alive / waiting / suspected / dead), the silence since its
last heartbeat, the current suspicion level φ, how long it has been
suspected and the reason the detector gave.  `ddfs status` shows it.

Invariants: every message is a frozen dataclass whose fields only ever grow
at the end (older peers ignore trailing fields they do not know); numbers
that do not apply are -1, never NaN (the JSON of `ddfs status` must parse).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.rpc import Request, Semantics, request
from fs.types import ServerId

__all__ = ["LivenessQuery", "LivenessReply", "ServerView"]


@dataclass(frozen=True, slots=True)
class ServerView:
    """One chunk server as the leader's failure detector sees it."""

    server: ServerId
    address: str
    state: str  # fs.meta.liveness.ServerStatus value: alive, waiting, suspected, dead
    silent_for: float  # seconds since its last heartbeat to this leader (-1: never heard)
    phi: float  # current suspicion level with the phi detector (-1 with the timeout one)
    suspected_for: float  # seconds since the current suspicion began (-1: not suspected)
    reason: str  # why the latest suspicion, recovery or death happened ("" if none yet)
    recorded_alive: bool  # the replicated record (ServerState) says alive


@dataclass(frozen=True, slots=True)
class LivenessReply:
    status: str  # OK, NOT_LEADER (go to `leader`), UNAVAILABLE
    leader: str = ""
    detector: str = ""  # "phi" or "timeout"
    threshold: float = 0.0  # phi threshold, or the timeout in seconds
    dead_after: float = 0.0  # seconds of silence (while suspected) before a server is dead
    grace_left: float = 0.0  # seconds left of this leader's grace period (0: over)
    servers: tuple[ServerView, ...] = ()
    under_replicated: int = 0  # chunks with fewer replicas than the factor on servers not dead
    at_risk: int = 0  # chunks with fewer replicas than the factor on unsuspected servers


@request("meta.liveness", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class LivenessQuery(Request[LivenessReply]):
    """The leader's failure-detector view (for `ddfs status`); followers redirect."""
