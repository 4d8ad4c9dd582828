"""Ricart-Agrawala: broadcast a Lamport-stamped request, enter after every reply.

A node replies to a request at once unless it is inside the critical
section, or wants it with an earlier (ts, id); deferred requests are answered
on exit.  One entry costs n-1 REQUESTs and n-1 REPLYs.

Failures: a peer that stops answering is removed from the set whose replies
we need when the failure detector suspects it (membership change), and
returned to it when the detector trusts it again; we never wait forever.
Because a suspicion can be false (a paused node), leaving a peer out is only
safe once no lease of that peer can still run: we enter without peer p's
reply only when a lease has passed since we heard p's latest request (and
since we last woke from a freeze of our own), and our own request is
2 * max_delay old (see `_missing`).

Invariants:
* A node holds the lock at most from its entry until `anchor + lease -
  epsilon`, where `anchor` is when it broadcast the request; entering later
  than that is refused (it asks again with a fresh timestamp).
* For every pair of holders, either one had the other's reply given after
  the other's exit, or one entered after the other's lease ran out (the
  waits above): no two unexpired holders at the same instant.  The
  simulator found the two cases the waits after a freeze and on our own
  request's age close (both holders had left the other out).
* Fencing token = (ts, id) with ts = max(the entry event's Lamport time,
  1 + the highest token any reply told us of); replies carry the replier's
  highest known token; a node leaving peers out also stays LEFT_OUT_MARGIN
  above their latest requests (a left-out peer's entry token exceeds its
  request's stamp by the events it handled in between, far fewer).  Tokens
  grow along happened-before, through every reply, and past left-out peers.
* The Lamport clock `ts` is the core's own (a protocol field), separate
  from the driver's trace clock.  A peer's requests carry increasing `ts`, so
  one arriving after a later one of the same peer (reordered) is stale and
  dropped: only a peer's latest request is ever answered or deferred.
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

# Lamport ticks a left-out peer could have made between its request and its entry
# (one per message or event handled within one lease): a bound no real run nears.
LEFT_OUT_MARGIN = 1 << 20


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
        self._latest: dict[NodeId, int] = {}  # peer -> the ts of its latest request seen
        self._heard: dict[NodeId, float] = {}  # peer -> when we received its latest request
        self._last_event: float | None = None  # the latest `now` seen (pause detection)
        self._awake_since = -math.inf  # running without a pause since then
        self._grant: Grant | None = None
        self._highest = 0  # the highest fencing token we used or heard of (in replies)

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
        # When a suspected peer may be left out (see `_missing`); the latest of its
        # conditions, for each such peer.
        wait = self.config.lease + self.config.epsilon
        own = self._anchor + 2 * self.config.max_delay
        late = [max(self._heard.get(p, -math.inf) + wait, self._awake_since + wait, own)
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
        self._observe(now)
        if isinstance(msg, RaRequest):
            self.clock.observe(msg.ts)
            self._heard[msg.sender] = now
            if msg.ts < self._latest.get(msg.sender, 0):
                return []  # overtaken by a later request of the same peer: stale
            self._latest[msg.sender] = msg.ts
            if self._defers(msg):
                self._deferred[msg.sender] = msg.ts
                return []
            return [self._reply(msg.sender, msg.ts, now)]
        if isinstance(msg, RaReply):
            self.clock.observe(msg.ts)
            self._highest = max(self._highest, msg.highest)
            if self.wanting and msg.to_ts == self._ts:
                self._replies.add(msg.sender)
                return self._try_enter(now)
            return []
        raise TypeError(f"Ricart-Agrawala: unexpected {type(msg).__name__}")

    def suspect(self, peer: NodeId, now: float) -> list[Effect]:
        self._observe(now)
        self._suspected.add(peer)
        return [Note(f"{self.lock}: stops waiting for {peer} (suspected)"),
                *self._try_enter(now)]

    def recover(self, peer: NodeId, now: float) -> list[Effect]:
        self._suspected.discard(peer)
        return []

    def tick(self, now: float) -> list[Effect]:
        self._observe(now)
        grant = self._grant
        if grant is not None and now >= grant.expires_at:
            return [LeaseOver(grant), *self.release(now)]
        return self._try_enter(now)

    def _observe(self, now: float) -> None:
        """Notice our own freezes (a gap between events longer than `pause_gap`)."""
        last = self._last_event
        if last is not None and now - last > self.config.pause_gap:
            self._awake_since = now
        self._last_event = now if last is None else max(last, now)

    # ------------------------------------------------------------------ rules

    def _defers(self, msg: RaRequest) -> bool:
        """The chapter's rule: defer if inside, or wanting with an earlier (ts, id)."""
        if self._grant is not None:
            return True
        return self.wanting and (self._ts, self.me) < (msg.ts, msg.sender)

    def _reply(self, to: NodeId, their_ts: int, now: float) -> Send:
        return Send(to, RaReply(self.lock, self.me, self.clock.tick(), their_ts, self._highest))

    def _answer_deferred(self, now: float) -> list[Effect]:
        owed, self._deferred = self._deferred, {}
        return [self._reply(peer, ts, now) for peer, ts in owed.items()]

    def _broadcast(self, now: float) -> list[Effect]:
        self._ts = self.clock.tick()
        self._anchor = now
        self._replies.clear()
        return [Send(p, RaRequest(self.lock, self.me, self._ts)) for p in self.peers]

    def _missing(self, now: float) -> bool:
        """Is a reply still needed?  A suspected peer p may be left out only when no
        lease of p can still run: p times a lease from its request's broadcast, so
        not before a lease after we heard its latest request, nor (if we were frozen
        and may not have heard it yet) after we woke up; and only once our own
        request is 2 * max_delay old, so a running p has heard it and cannot also
        be entering with a request we have not heard yet (it would wait for ours)."""
        wait = self.config.lease + self.config.epsilon
        for p in self.peers:
            if p in self._replies:
                continue
            if p not in self._suspected:
                return True
            if now < max(self._heard.get(p, -math.inf), self._awake_since) + wait:
                return True
            if now < self._anchor + 2 * self.config.max_delay:
                return True
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
        # The entry's own Lamport time (above every request we heard), above every
        # token the replies told us of, and far above the latest request of each peer
        # we leave out: that peer's entry (if it made one) came after its request by
        # at most as many events as it handled in one lease, far fewer than the margin.
        ts = max(self.clock.tick(), self._highest // OWNER_SPAN + 1)
        for p in self.peers:
            if p not in self._replies and p in self._latest:
                ts = max(ts, self._latest[p] + LEFT_OUT_MARGIN)
        self.clock.observe(ts)  # our later stamps (and tokens) stay above this one
        token = FencingToken(ts * OWNER_SPAN + self.me)
        self._highest = max(self._highest, token)
        self._grant = Grant(self.lock, self.me, token, expires)
        return [Enter(self._grant)]
