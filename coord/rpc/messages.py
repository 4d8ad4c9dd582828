"""The RPC layer's own messages (session management for at-most-once calls)."""

from __future__ import annotations

from dataclasses import dataclass

from coord.wire.schema import Request, Semantics, request

OPEN_SESSION = "rpc.open_session"


@dataclass(frozen=True, slots=True)
class SessionOpened:
    ttl: float  # the server forgets the session after this long without activity


@request(OPEN_SESSION, semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class OpenSession(Request[SessionOpened]):
    """Create (or refresh) an at-most-once session.  Idempotent by construction."""

    client_id: int
