"""The server's at-most-once reply cache, keyed by (client id, sequence number).  Sans-IO.

A client opens a session (`open_session`) before its first at-most-once
call, then tags each call with (client id, seq, ack) where `ack` is its
acknowledged low-water mark: it will never again ask about any seq < ack.

Invariants:
- A (client, seq) is handed out for execution (`Execute`) at most once in
  the cache's lifetime.  Every later sighting gets the cached reply
  (`Replay`), a `Wait` while the first execution runs, or a `Refuse`.
- An entry is dropped only when the client's ack passes it, or when the
  whole session expires (no activity for `ttl`), or when the session is
  evicted to bound memory (oldest activity first).  After that the seq is
  refused (REPLY_EXPIRED, or SESSION_UNKNOWN for a forgotten session), never
  executed again.  A forgotten session id is never re-created by a request:
  only `open_session` creates sessions, and clients never reopen an id.
- Time only arrives as `now`; there is no I/O here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, NewType, TypeVar

from coord.wire.errors import ErrorCode

ClientId = NewType("ClientId", int)
Seq = NewType("Seq", int)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Execute:
    """New call: run it, then report the reply with `complete`."""


@dataclass(frozen=True, slots=True)
class Wait:
    """The first execution is still running: wait for it, then `lookup` again."""


@dataclass(frozen=True, slots=True)
class Replay(Generic[V]):
    """Already executed: send this reply again."""

    reply: V


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not execute: answer with this error."""

    code: ErrorCode
    message: str


Decision = Execute | Wait | Replay[V] | Refuse


@dataclass(slots=True)
class _Session(Generic[V]):
    last_seen: float  # time of the latest open/request/completion
    acked: int = 0  # the client's low-water mark: entries below it are gone
    entries: dict[int, V | None] = field(default_factory=dict)  # None = still running


class ReplyCache(Generic[V]):
    def __init__(
        self, ttl: float, *, max_sessions: int = 100_000, max_entries_per_session: int = 10_000
    ) -> None:
        if ttl <= 0 or max_sessions < 1 or max_entries_per_session < 1:
            raise ValueError("ttl and limits must be positive")
        self.ttl = ttl
        self._max_sessions = max_sessions
        self._max_entries = max_entries_per_session
        # Least recently active first, so expiry and eviction pop from the front.
        self._sessions: OrderedDict[int, _Session[V]] = OrderedDict()

    def __len__(self) -> int:
        """Number of cached or running entries over all sessions."""
        return sum(len(s.entries) for s in self._sessions.values())

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def open_session(self, client: ClientId, now: float) -> None:
        self.expire(now)
        session = self._sessions.get(client)
        if session is None:
            while len(self._sessions) >= self._max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[client] = _Session(now)
        else:
            self._touch(client, session, now)

    def _touch(self, client: int, session: _Session[V], now: float) -> None:
        session.last_seen = now
        self._sessions.move_to_end(client)

    def begin(self, client: ClientId, seq: Seq, ack: int, now: float) -> Decision[V]:
        self.expire(now)
        session = self._sessions.get(client)
        if session is None:
            return Refuse(ErrorCode.SESSION_UNKNOWN, f"no open session for client {client:#x}")
        self._touch(client, session, now)
        if ack > session.acked:
            session.acked = ack
            for old in [s for s in session.entries if s < ack]:
                del session.entries[old]
        if seq < session.acked:
            return Refuse(
                ErrorCode.REPLY_EXPIRED,
                f"reply for client {client:#x} seq {seq} was dropped (below acknowledged {ack})",
            )
        if seq in session.entries:
            reply = session.entries[seq]
            return Wait() if reply is None else Replay(reply)
        if len(session.entries) >= self._max_entries:
            return Refuse(ErrorCode.OVERLOADED, "too many unacknowledged at-most-once calls")
        session.entries[seq] = None
        return Execute()

    def lookup(self, client: ClientId, seq: Seq) -> Decision[V]:
        """After a `Wait`: what to answer now (never `Execute`)."""
        session = self._sessions.get(client)
        if session is None:
            return Refuse(ErrorCode.REPLY_EXPIRED, f"session of client {client:#x} expired")
        if seq not in session.entries:
            return Refuse(ErrorCode.REPLY_EXPIRED, f"reply for seq {seq} was dropped")
        reply = session.entries[seq]
        return Wait() if reply is None else Replay(reply)

    def complete(self, client: ClientId, seq: Seq, reply: V, now: float) -> None:
        """Record the reply of an `Execute`d call (ignored if it was dropped meanwhile)."""
        session = self._sessions.get(client)
        if session is not None and seq in session.entries:
            session.entries[seq] = reply
            self._touch(client, session, now)

    def expire(self, now: float) -> list[ClientId]:
        """Drop sessions idle for longer than `ttl`; return their ids."""
        gone: list[ClientId] = []
        while self._sessions:
            client, session = next(iter(self._sessions.items()))
            if now - session.last_seen <= self.ttl:
                break
            del self._sessions[client]
            gone.append(ClientId(client))
        return gone
