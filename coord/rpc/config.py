"""Configuration objects for RPC servers and clients (frozen, validated).

Invariants: every object is immutable after construction and `validate()`
checks the relations between fields (e.g. an attempt must fit in a call);
constructors call it, so an invalid config never reaches a driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coord.wire.frame import DEFAULT_MAX_FRAME, HEADER_SIZE


def _common(node_id: int, secret: bytes, role: str, max_frame_size: int) -> None:
    if not 0 <= node_id < 1 << 64:
        raise ValueError(f"node_id {node_id} does not fit in 64 bits")
    if not secret:
        raise ValueError("the cluster secret must not be empty")
    if not role or len(role) > 64:
        raise ValueError("role must be 1..64 characters")
    if max_frame_size < HEADER_SIZE + 1024:
        raise ValueError("max_frame_size is too small")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * mult**n))."""

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    def backoff_cap(self, attempt: int) -> float:
        """The upper bound of the sleep after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    node_id: int
    secret: bytes
    role: str = "server"
    max_frame_size: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 5.0  # a peer that does not finish auth in time is dropped
    max_inflight: int = 1024  # concurrent calls per connection before OVERLOADED
    session_ttl: float = 300.0  # at-most-once sessions idle this long are forgotten
    max_sessions: int = 100_000
    max_entries_per_session: int = 10_000
    drain_timeout: float = 5.0  # how long running handlers may finish when a connection ends

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _common(self.node_id, self.secret, self.role, self.max_frame_size)
        if min(self.handshake_timeout, self.session_ttl, self.drain_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.max_inflight, self.max_sessions, self.max_entries_per_session) < 1:
            raise ValueError("limits must be positive")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    node_id: int
    secret: bytes
    role: str = "client"
    max_frame_size: int = DEFAULT_MAX_FRAME
    pool_size: int = 1  # connections per peer address; calls are multiplexed over them
    connect_timeout: float = 5.0  # connect + handshake
    default_timeout: float = 30.0  # whole-call budget when the caller gives none
    attempt_timeout: float = 5.0  # one try of a retryable call before retransmitting
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The server answers TIMEOUT when a call's budget runs out; the client's
    # watchdog fails a call only this long after its deadline (and closes the
    # connection if that call was reading it: the server is unresponsive).
    reply_grace: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _common(self.node_id, self.secret, self.role, self.max_frame_size)
        if self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if min(self.connect_timeout, self.default_timeout, self.attempt_timeout,
               self.reply_grace) <= 0:
            raise ValueError("timeouts must be positive")
        if self.attempt_timeout > self.default_timeout:
            raise ValueError("attempt_timeout must not exceed default_timeout")
