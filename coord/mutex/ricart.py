"""Ricart-Agrawala: broadcast a Lamport-stamped request, enter after every reply.

A node replies to a request at once unless it is inside the critical
section, or wants it with an earlier (ts, id); deferred requests are answered
on exit.  One entry costs n-1 REQUESTs and n-1 REPLYs.

Failures: a peer that stops answering is removed from the set whose replies
we need when the failure detector suspects it (membership change), and
returned to it when the detector trusts it again; we never wait forever.
Because a suspicion can be false (a paused node), leaving a peer out is only
safe once any lease it could hold thanks to *our* reply has run out: we enter
without peer p's reply only when `now >= replied_at[p] + lease + epsilon`.

Invariants:
* A node holds the lock at most from its entry until `anchor + lease -
  epsilon`, where `anchor` is when it broadcast the request; entering later
  than that is refused (it asks again with a fresh timestamp).
* For every pair of holders, either one had the other's reply given after
  the other's exit, or one entered after the other's lease ran out (the
  wait above): no two unexpired holders at the same instant.
* Fencing token = (Lamport time of the entry event, id): tokens grow along
  happened-before, and a node that enters without peer p's reply has
  received p's request (it replied to it), so it outbids p's entry too.
* The Lamport clock `ts` is the core's own (a protocol field), separate
  from the driver's trace clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from coord.clock.lamport import LamportClock
from coord.lease.types import FencingToken
from coord.mutex.messages import RaReply, RaRequest
from coord.mutex.types import (
    OWNER_SPAN,
    Effect,
    Enter,
    Grant,
    LeaseOver,
    LockName,
    MutexConfig,
    NodeId,
    Note,
    Send,
)


class RicartAgrawala:
    def __init__(self, me: NodeId, nodes: Sequence[NodeId], lock: LockName,
                 config: MutexConfig) -> None:
        self.me = me
        self.lock = lock
        self.nodes = tuple(sorted(set(nodes)))
        self.peers = tuple(n for n in self.nodes if n != me)
        self.config = config.validate()
        self.clock = LamportClock()
        self._suspected: set[NodeId] = set()
        self._ts = 0  # our pending request's Lamport time (0: not wanting)
        self._anchor = 0.0  # when it was broadcast
        self._replies: set[NodeId] = set()  # peers that answered this request
        self._deferred: dict[NodeId, int] = {}  # peer -> the ts we owe a reply to
        self._replied_at: dict[NodeId, float] = {}  # peer -> our latest reply to it
        self._grant: Grant | None = None

    @property
    def held(self) -> Grant | None:
        return self._grant

    @property
    def wanting(self) -> bool:
        return self._ts != 0 and self._grant is None

    def next_wakeup(self, now: float) -> float:
        if self._grant is not None:
            return self._grant.expires_at
        if not self.wanting:
            return math.inf
        late = [self._replied_at.get(p, -math.inf) + self.config.lease + self.config.epsilon
                for p in self._suspected if p not in self._replies]
        return min([t for t in late if t > now], default=math.inf)

    # ------------------------------------------------------------------ application

    def want(self, now: float) -> list[Effect]:
        if self._ts:
            raise RuntimeError(f"{self.lock}: node {self.me} already wants or holds the lock")
        return self._broadcast(now)

    def release(self, now: float) -> list[Effect]:
        self._ts = 0
        self._grant = None
        self._replies.clear()
        return self._answer_deferred(now)

    # ------------------------------------------------------------------ events

    def receive(self, msg: object, now: float) -> list[Effect]:
        if isinstance(msg, RaRequest):
            self.clock.observe(msg.ts)
            if self._defers(msg):
                self._deferred[msg.sender] = msg.ts
                return []
            return [self._reply(msg.sender, msg.ts, now)]
        if isinstance(msg, RaReply):
            self.clock.observe(msg.ts)
            if self.wanting and msg.to_ts == self._ts:
                self._replies.add(msg.sender)
                return self._try_enter(now)
            return []
        raise TypeError(f"Ricart-Agrawala: unexpected {type(msg).__name__}")

    def suspect(self, peer: NodeId, now: float) -> list[Effect]:
        self._suspected.add(peer)
        return [Note(f"{self.lock}: stops waiting for {peer} (suspected)"),
                *self._try_enter(now)]

    def recover(self, peer: NodeId, now: float) -> list[Effect]:
        self._suspected.discard(peer)
        return []

    def tick(self, now: float) -> list[Effect]:
        grant = self._grant
        if grant is not None and now >= grant.expires_at:
            return [LeaseOver(grant), *self.release(now)]
        return self._try_enter(now)

    # ------------------------------------------------------------------ rules

    def _defers(self, msg: RaRequest) -> bool:
        """The chapter's rule: defer if inside, or wanting with an earlier (ts, id)."""
        if self._grant is not None:
            return True
        return self.wanting and (self._ts, self.me) < (msg.ts, msg.sender)

    def _reply(self, to: NodeId, their_ts: int, now: float) -> Send:
        self._replied_at[to] = now
        return Send(to, RaReply(self.lock, self.me, self.clock.tick(), their_ts))

    def _answer_deferred(self, now: float) -> list[Effect]:
        owed, self._deferred = self._deferred, {}
        return [self._reply(peer, ts, now) for peer, ts in owed.items()]

    def _broadcast(self, now: float) -> list[Effect]:
        self._ts = self.clock.tick()
        self._anchor = now
        self._replies.clear()
        return [Send(p, RaRequest(self.lock, self.me, self._ts)) for p in self.peers]

    def _missing(self, now: float) -> bool:
        wait = self.config.lease + self.config.epsilon
        for p in self.peers:
            if p in self._replies:
                continue
            if p not in self._suspected:
                return True
            if now < self._replied_at.get(p, -math.inf) + wait:
                return True  # p might still hold a lease our reply allowed
        return False

    def _try_enter(self, now: float) -> list[Effect]:
        if not self.wanting or self._missing(now):
            return []
        expires = self._anchor + self.config.lease - self.config.epsilon
        if now >= expires:
            # Our request is older than a lease: ask again with a fresh stamp (and
            # first answer whoever we made wait, since our priority is gone).
            out: list[Effect] = [Note(f"{self.lock}: request went stale, asking again")]
            out += self._answer_deferred(now)
            return out + self._broadcast(now)
        # The entry's own Lamport time: larger than every request we received (the
        # one of a peer we stopped waiting for included), so a later entrant's token
        # beats ours whenever it heard of our request.
        token = FencingToken(self.clock.tick() * OWNER_SPAN + self.me)
        self._grant = Grant(self.lock, self.me, token, expires)
        return [Enter(self._grant)]
