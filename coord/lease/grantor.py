"""The lease grantor core: who holds each resource, until when, under which token.

Sans-IO and deterministic: every method takes `now` (seconds on the grantor's
monotonic clock) and returns a typed result; the same sequence of calls gives
the same results, so the core can sit behind a Raft state machine.

Invariants:

* At most one lease per resource.  A lease ends (on this clock) at
  `expires_at` = the grant/renewal time + term + epsilon, i.e. epsilon *late*;
  no other holder is granted the resource before that instant, unless the
  holder released it (a holder releases only after it stopped acting).
* Tokens are strictly increasing across all resources and incarnations: a
  token is taken from a block reserved up to `high_water`; whenever a new
  block is reserved, the `Granted` carries `persist_high_water`, which the
  driver stores durably *before* sending the grant.  A restarted grantor built
  by `recover()` from that value never reissues a sent token.
* A grantor that restarted (or a new Raft leader) does not know the expiry of
  leases granted before; `recover()` makes it refuse every resource it has no
  record for until `now + max_duration + epsilon` on its new clock, and treats
  recorded leases as lasting that long.  docs/leases.md shows why that wait is
  enough under drift.
* Expiry is lazy (checked on every request) and also reported by
  `expire_due(now)` through a heap whose stale entries are skipped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import overload

from coord.lease.types import (
    NO_TOKEN,
    Denied,
    DenyReason,
    Expired,
    FencingToken,
    Granted,
    GrantResult,
    HolderId,
    LeaseConfig,
    LeaseRecord,
    LeaseRelease,
    LeaseRequest,
    Released,
    RequestKind,
    ResourceId,
    Revoked,
)


@dataclass(slots=True)
class _Lease:
    """The grantor's live record of one lease (mutable: renewals move `expires_at`)."""

    holder: HolderId
    token: FencingToken
    expires_at: float  # grantor clock, epsilon late
    revoked: bool = False  # no more renewals; the lease runs out at expires_at


class LeaseGrantor:
    """Grants, renews, releases, revokes and expires leases on named resources."""

    def __init__(self, config: LeaseConfig, *, token_block: int = 1) -> None:
        """A grantor with no history (a brand-new cluster); after a restart use `recover`."""
        if token_block < 1:
            raise ValueError(f"token_block must be >= 1, got {token_block}")
        self._config = config.validate()
        self._block = token_block  # tokens reserved per persisted high-water mark
        # Tokens <= _reserved are covered by a persisted high-water mark;
        # _next is the next one to hand out.
        self._reserved = NO_TOKEN
        self._next = FencingToken(NO_TOKEN + 1)
        # Until this grantor-clock instant, resources without a record are refused.
        self._recovering_until: float | None = None
        self._leases: dict[ResourceId, _Lease] = {}
        self._heap: list[tuple[float, ResourceId, FencingToken]] = []  # lazy expiry index

    @classmethod
    def recover(
        cls,
        config: LeaseConfig,
        high_water: FencingToken,
        now: float,
        holders: Iterable[LeaseRecord] = (),
        *,
        token_block: int = 1,
    ) -> LeaseGrantor:
        """A grantor restarted from persisted state (or a new leader taking over).

        `holders` may be given only if every new grant was persisted before it
        was answered (as when the lease table lives in Raft state): a table
        missing a later grant could let a superseded holder renew.  (A missing
        release is harmless: the released holder is still the only candidate.)
        Recorded holders may renew at once; every other resource waits
        `config.recovery_wait`.
        """
        self = cls(config, token_block=token_block)
        self._reserved = high_water
        self._next = FencingToken(high_water + 1)
        self._recovering_until = now + self._config.recovery_wait
        for rec in holders:
            if not NO_TOKEN < rec.token <= high_water:
                raise ValueError(f"recorded token {rec.token} outside (0, {high_water}]")
            # Unknown term: assume the longest one was granted just now.
            self._put(rec.resource, _Lease(rec.holder, rec.token, self._recovering_until))
        return self

    # ------------------------------------------------------------------ queries

    @property
    def config(self) -> LeaseConfig:
        return self._config

    @property
    def high_water(self) -> FencingToken:
        """The token high-water mark the driver must have persisted (see `Granted`)."""
        return self._reserved

    def holder_of(self, resource: ResourceId, now: float) -> LeaseRecord | None:
        lease = self._live(resource, now)
        return None if lease is None else LeaseRecord(resource, lease.holder, lease.token)

    def leases(self) -> tuple[LeaseRecord, ...]:
        """Every recorded lease (possibly past expiry until the next call that sees it)."""
        return tuple(LeaseRecord(r, x.holder, x.token) for r, x in sorted(self._leases.items()))

    # ------------------------------------------------------------------ operations

    @overload
    def handle(self, msg: LeaseRequest, now: float) -> GrantResult: ...
    @overload
    def handle(self, msg: LeaseRelease, now: float) -> Released: ...
    def handle(self, msg: LeaseRequest | LeaseRelease, now: float) -> GrantResult | Released:
        """Dispatch a holder's message to `request`, `renew` or `release`."""
        if isinstance(msg, LeaseRelease):
            return self.release(msg.resource, msg.holder, msg.token, now)
        if msg.kind is RequestKind.RENEW:
            return self.renew(msg.resource, msg.holder, msg.token, now, msg.duration)
        return self.request(msg.resource, msg.holder, now, msg.duration)

    def request(
        self,
        resource: ResourceId,
        holder: HolderId,
        now: float,
        duration: float | None = None,
        token: FencingToken | None = None,
    ) -> GrantResult:
        """Acquire `resource` for `holder` for `duration` (clamped to max_duration).

        An acquire says "I hold nothing": if `holder` already holds the lease
        (a retried request, or a re-acquire after a release still in flight),
        that lease ends and a new one with a new token replaces it, so a
        delayed release of the old token can never free the new lease.
        `token`, if given, is used for the new lease instead of the internal
        counter (e.g. a Raft log index); it must exceed every token issued so far.
        """
        term = self._term(duration)
        if term is None:
            return self._deny(resource, holder, DenyReason.INVALID, None, 0.0)
        lease = self._live(resource, now)
        if lease is not None:
            wait = lease.expires_at - now
            if lease.holder != holder:
                return self._deny(resource, holder, DenyReason.HELD, lease.holder, wait)
            if lease.revoked:
                return self._deny(resource, holder, DenyReason.REVOKED, holder, wait)
            # The holder may yet receive the old grant and act on it until its
            # old expiry, so the replacement must not end any earlier.
            return self._grant_new(resource, holder, now, term, token, lease.expires_at)
        wait = self._recovery_left(now)
        if wait > 0:
            return self._deny(resource, holder, DenyReason.RECOVERING, None, wait)
        return self._grant_new(resource, holder, now, term, token)

    def renew(
        self,
        resource: ResourceId,
        holder: HolderId,
        token: FencingToken,
        now: float,
        duration: float | None = None,
    ) -> GrantResult:
        """Extend the lease `token` of `holder` on `resource` to `now + duration`."""
        term = self._term(duration)
        if term is None:
            return self._deny(resource, holder, DenyReason.INVALID, None, 0.0)
        lease = self._leases.get(resource)
        if lease is None or lease.holder != holder:
            wait = self._recovery_left(now)
            if lease is None and wait > 0:
                # Its lease may be one we forgot: say "later", not "never".
                return self._deny(resource, holder, DenyReason.RECOVERING, None, wait)
            current = None if lease is None or lease.expires_at <= now else lease.holder
            return self._deny(resource, holder, DenyReason.NOT_HOLDER, current, 0.0)
        if lease.token != token:
            return self._deny(resource, holder, DenyReason.STALE_TOKEN, lease.holder, 0.0)
        if lease.expires_at <= now:
            # Not renewable even if nobody took it: the holder's own view has
            # already lapsed, and a fresh token keeps the fencing story simple.
            self._drop(resource)
            return self._deny(resource, holder, DenyReason.EXPIRED, None, 0.0)
        return self._extend(resource, lease, now, term)

    def release(
        self, resource: ResourceId, holder: HolderId, token: FencingToken, now: float
    ) -> Released:
        """Free `resource` at once if (`holder`, `token`) is its current lease; else a no-op."""
        lease = self._live(resource, now)
        if lease is None or lease.holder != holder or lease.token != token:
            return Released(resource, holder, token, freed=False)
        self._drop(resource)
        return Released(resource, holder, token, freed=True)

    def revoke(self, resource: ResourceId, now: float) -> Revoked | None:
        """Stop renewing the current lease (e.g. its holder is suspected dead).

        Never shortens it: the resource becomes free at the existing late
        expiry, because a suspicion may be false and the holder may still be
        acting until its own early expiry.
        """
        lease = self._live(resource, now)
        if lease is None:
            return None
        lease.revoked = True
        return Revoked(resource, lease.holder, lease.token, lease.expires_at)

    def expire_due(self, now: float) -> list[Expired]:
        """Remove and report every lease whose late expiry is at or before `now`."""
        out: list[Expired] = []
        while self._heap and self._heap[0][0] <= now:
            at, resource, token = heapq.heappop(self._heap)
            lease = self._leases.get(resource)
            if lease is None or lease.token != token or lease.expires_at != at:
                continue  # superseded by a renewal, release or new grant
            del self._leases[resource]
            out.append(Expired(resource, lease.holder, lease.token, at))
        if self._recovering_until is not None and now >= self._recovering_until:
            self._recovering_until = None
        return out

    # ------------------------------------------------------------------ internals

    def _term(self, duration: float | None) -> float | None:
        """The granted term, or None for a malformed request (a peer's bad input)."""
        if duration is None:
            return self._config.duration
        if not math.isfinite(duration) or duration <= self._config.epsilon:
            return None  # a term within the margin would be expired on arrival
        return min(duration, self._config.max_duration)

    def _recovery_left(self, now: float) -> float:
        """Seconds until a recovering grantor may grant unrecorded resources (0: now)."""
        if self._recovering_until is None:
            return 0.0
        return max(0.0, self._recovering_until - now)

    def _live(self, resource: ResourceId, now: float) -> _Lease | None:
        lease = self._leases.get(resource)
        if lease is not None and lease.expires_at <= now:
            self._drop(resource)
            return None
        return lease

    def _extend(self, resource: ResourceId, lease: _Lease, now: float, term: float) -> GrantResult:
        if lease.revoked:
            return self._deny(
                resource, lease.holder, DenyReason.REVOKED, lease.holder, lease.expires_at - now
            )
        # max(): a shorter renewal never pulls the grantor's expiry earlier,
        # since the holder may still be acting on the longer one.
        lease.expires_at = max(lease.expires_at, now + term + self._config.epsilon)
        heapq.heappush(self._heap, (lease.expires_at, resource, lease.token))
        return Granted(resource, lease.holder, lease.token, term, lease.expires_at, renewal=True)

    def _grant_new(
        self,
        resource: ResourceId,
        holder: HolderId,
        now: float,
        term: float,
        token: FencingToken | None,
        not_before: float = -math.inf,
    ) -> Granted:
        persist: FencingToken | None = None
        if token is None:
            token = self._next
            if token > self._reserved:
                # One persisted mark covers a block of tokens: fewer fsyncs.
                self._reserved = FencingToken(token + self._block - 1)
                persist = self._reserved
        elif token < self._next:
            raise ValueError(f"token {token} is not above the last issued {self._next - 1}")
        else:
            self._reserved = max(self._reserved, token)
        self._next = FencingToken(token + 1)
        expires_at = max(not_before, now + term + self._config.epsilon)
        self._put(resource, _Lease(holder, token, expires_at))
        return Granted(resource, holder, token, term, expires_at, renewal=False,
                       persist_high_water=persist)

    def _put(self, resource: ResourceId, lease: _Lease) -> None:
        self._leases[resource] = lease
        heapq.heappush(self._heap, (lease.expires_at, resource, lease.token))

    def _drop(self, resource: ResourceId) -> None:
        # The heap entry stays and is skipped later (lazy deletion).
        del self._leases[resource]

    def _deny(
        self,
        resource: ResourceId,
        holder: HolderId,
        reason: DenyReason,
        current: HolderId | None,
        retry_in: float,
    ) -> Denied:
        return Denied(resource, holder, reason, current, max(0.0, retry_in))
