"""Token ring: the nodes form a logical ring (ascending ids); only the token holder enters.

A node that gets the token enters if it wants to, and passes the token to its
successor on exit; a node that does not want it keeps it `idle_pass` (so a
request made meanwhile costs no message) and passes it on.  The successor
skips nodes the failure detector suspects.  Under continuous demand every
TOKEN message leads to one entry; under light load the token circulates with
no entries at all (the chapter's "0 to n-1" is the wait, not the cost).

Token loss: the leader (per `LeaderView`; by default the highest trusted id)
declares the token lost when it has not seen it for `loss_timeout`, starts a
new `Epoch`, tells every node (NEWTOKEN), waits `recovery_wait` and only then
creates the new token.  Nodes adopt the newest epoch they hear of and
discard tokens of older epochs, so afterwards exactly one token circulates.

Invariants:
* A holder's lease runs from its *anchor* (the last time it passed a token,
  or adopted its current epoch through NEWTOKEN), not from the token's
  arrival: a token that arrives late (its receiver was paused) carries an old
  anchor and is passed on without entering.  A node that has not adopted an
  epoch E announced at t anchors no later than t + max_delay (or before its
  pause), so its lease ends before the token of E exists (t + recovery_wait).
* Only the owner of an epoch creates its token, once: two tokens never share
  an epoch.  Fencing token = `epoch.token(seq)`, seq counting entries made
  with this token: increasing along the ring and across epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from coord.lease.types import FencingToken
from coord.mutex.messages import RingEpoch, RingToken
from coord.mutex.types import (
    INITIAL_EPOCH,
    Effect,
    Enter,
    Epoch,
    Grant,
    HighestTrusted,
    LeaderView,
    LeaseOver,
    LockName,
    MutexConfig,
    NodeId,
    Note,
    Send,
)


class TokenRing:
    def __init__(self, me: NodeId, nodes: Sequence[NodeId], lock: LockName,
                 config: MutexConfig, view: LeaderView | None = None, *,
                 now: float = 0.0) -> None:
        self.me = me
        self.lock = lock
        self.nodes = tuple(sorted(set(nodes)))
        self.config = config.validate()
        self._view = view if view is not None else HighestTrusted(me, self.nodes)
        self._suspected: set[NodeId] = set()
        self.epoch = INITIAL_EPOCH  # the newest token generation adopted
        # (epoch, seq) of the token this node has, or None.  The first node starts with it.
        self._token: tuple[Epoch, int] | None = (
            (INITIAL_EPOCH, 0) if me == self.nodes[0] else None)
        self._anchor = now  # leases are timed from here (see the module docstring)
        self._last_seen = now  # the token (or a new epoch) was last seen here
        self._want = False
        self._grant: Grant | None = None
        self._pass_at: float | None = now + config.idle_pass if self._token else None
        self._regen_at: float | None = None  # our new token is made at this instant

    @property
    def held(self) -> Grant | None:
        return self._grant

    @property
    def wanting(self) -> bool:
        return self._want and self._grant is None

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def next_wakeup(self, now: float) -> float:
        times = [math.inf, self._last_seen + self.config.loss_timeout]
        for t in (self._pass_at, self._regen_at):
            if t is not None:
                times.append(t)
        if self._grant is not None:
            times.append(self._grant.expires_at)
        return min(times)

    # ------------------------------------------------------------------ application

    def want(self, now: float) -> list[Effect]:
        if self._want:
            raise RuntimeError(f"{self.lock}: node {self.me} already wants or holds the lock")
        self._want = True
        if self._token is not None and self._grant is None:
            return self._use_token(now)
        return []

    def release(self, now: float) -> list[Effect]:
        if self._grant is None:
            self._want = False
            return []
        self._grant = None
        self._want = False
        return self._pass(now)

    # ------------------------------------------------------------------ events

    def receive(self, msg: object, now: float) -> list[Effect]:
        if isinstance(msg, RingToken):
            return self._on_token(msg, now)
        if isinstance(msg, RingEpoch):
            if msg.epoch <= self.epoch:
                return []
            return self._adopt(msg.epoch, now)
        raise TypeError(f"token ring: unexpected {type(msg).__name__}")

    def suspect(self, peer: NodeId, now: float) -> list[Effect]:
        self._suspected.add(peer)
        return []

    def recover(self, peer: NodeId, now: float) -> list[Effect]:
        self._suspected.discard(peer)
        return []

    def tick(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        grant = self._grant
        if grant is not None and now >= grant.expires_at:
            out += [LeaseOver(grant), *self.release(now)]
        if self._pass_at is not None and now >= self._pass_at:
            self._pass_at = None
            out += self._use_token(now, idle_over=True)
        if self._regen_at is not None and now >= self._regen_at:
            self._regen_at = None
            self._token = (self.epoch, 0)
            self._last_seen = now
            out.append(Note(f"new token for {self.lock} (epoch {self.epoch.number})"))
            out += self._use_token(now)
        elif self._lost(now):
            out += self._regenerate(now)
        return out

    # ------------------------------------------------------------------ rules

    def _on_token(self, msg: RingToken, now: float) -> list[Effect]:
        if msg.epoch < self.epoch:
            return [Note(f"discards an old token of {self.lock} (epoch {msg.epoch.number})")]
        if msg.epoch > self.epoch:
            # Missed the announcement: adopt, but keep the old anchor (no entry this round).
            self.epoch = msg.epoch
            self._regen_at = None
        if self._token is not None and self._token[0] == msg.epoch:
            return [Note(f"a second token of {self.lock} in one epoch (dropped)")]
        self._token = (msg.epoch, msg.seq)
        self._last_seen = now
        if self._grant is not None:
            return []  # still inside with an older token: pass this one on exit
        return self._use_token(now)

    def _use_token(self, now: float, *, idle_over: bool = False) -> list[Effect]:
        """Enter if we want to and our lease would still run; else keep it idle or pass."""
        token = self._token
        if token is None or self._grant is not None:
            return []
        if token[0] != self.epoch:
            self._token = None  # an older generation: drop it
            return [Note(f"drops an old token of {self.lock}")]
        expires = self._anchor + self.config.lease - self.config.epsilon
        if self._want and now < expires:
            epoch, seq = token
            self._token = (epoch, seq + 1)
            self._pass_at = None
            self._grant = Grant(self.lock, self.me, FencingToken(epoch.token(seq + 1)), expires)
            return [Enter(self._grant)]
        if self._want or idle_over:
            return self._pass(now)  # (wanting here means a stale anchor: enter next round)
        if self._pass_at is None:
            self._pass_at = now + self.config.idle_pass
        return []

    def _successor(self) -> NodeId:
        i = self.nodes.index(self.me)
        for step in range(1, len(self.nodes)):
            node = self.nodes[(i + step) % len(self.nodes)]
            if node not in self._suspected:
                return node
        return self.me

    def _pass(self, now: float) -> list[Effect]:
        token = self._token
        self._pass_at = None
        if token is None:
            return []
        if token[0] != self.epoch:
            self._token = None  # dropping an old generation is no pass: the anchor stays
            return [Note(f"drops an old token of {self.lock}")]
        self._anchor = self._last_seen = now
        succ = self._successor()
        if succ == self.me:
            self._pass_at = now + self.config.idle_pass  # alone: keep it
            return []
        self._token = None
        return [Send(succ, RingToken(self.lock, self.me, token[0], token[1]))]

    def _lost(self, now: float) -> bool:
        if self._token is not None or self._regen_at is not None or self._grant is not None:
            return False
        if now - self._last_seen <= self.config.loss_timeout:
            return False
        return self._view.leader(frozenset(self._suspected)) == self.me

    def _regenerate(self, now: float) -> list[Effect]:
        epoch = self.epoch.next_for(self.me)
        out: list[Effect] = [Note(f"token of {self.lock} lost: epoch {epoch.number}, "
                                  "new token after the recovery wait")]
        out += self._adopt(epoch, now)
        self._regen_at = now + self.config.recovery_wait
        out += [Send(n, RingEpoch(self.lock, self.me, epoch)) for n in self.nodes if n != self.me]
        return out

    def _adopt(self, epoch: Epoch, now: float) -> list[Effect]:
        self.epoch = epoch
        self._anchor = self._last_seen = now
        self._regen_at = None
        if self._token is not None and self._grant is None:
            self._token = None
            self._pass_at = None
            return [Note(f"drops an old token of {self.lock} (epoch {epoch.number} begins)")]
        return []
