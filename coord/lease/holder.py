"""The lease holder's view of one lease: is it valid *now*, and when to renew.

Sans-IO: `now` is seconds on the holder's own monotonic clock.

Invariants:

* Validity is anchored at the *send* time of the request that a grant
  answers, never at the receive time: the grantor decided after we sent, so
  counting from the send time can only make our view shorter than the
  grantor's.  The lease is valid while `now < anchor + duration - epsilon`
  (epsilon early).
* Only replies to outstanding requests are accepted.  `release()` forgets all
  outstanding requests *before* the release is sent, so a grant delayed in the
  network can never revive a lease after we gave it up (the grantor may have
  given the resource to someone else in between).
* A grant whose token is lower than one this view has already accepted is
  ignored: it belongs to an older lease.
* Any denial except RECOVERING ends validity at once: the grantor no longer
  counts the lease, so acting on it would rely on luck.  Ending early is
  always safe; only ending late is not.
* At most `MAX_OUTSTANDING` requests are remembered; forgetting the oldest only
  means ignoring its reply, which is safe.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict

from coord.lease.types import (
    NO_TOKEN,
    Denied,
    DenyReason,
    FencingToken,
    Granted,
    GrantResult,
    HolderId,
    LeaseConfig,
    LeaseRelease,
    LeaseRequest,
    RequestId,
    RequestKind,
    ResourceId,
)

MAX_OUTSTANDING = 32


class ReplyOutcome(enum.Enum):
    """What a reply did to the holder's view (the driver logs it and acts on it)."""

    ACQUIRED = "acquired"  # a new token is now valid
    EXTENDED = "extended"  # the same token's validity moved later (or stayed)
    LATE = "late"  # granted, but already past our early expiry: renew now
    REFUSED = "refused"  # denied while we held nothing; retry after `retry_in`
    LOST = "lost"  # denied while we held the lease: it is gone
    DEFERRED = "deferred"  # grantor is recovering; our lease (if any) stands until it lapses
    IGNORED = "ignored"  # a reply to a forgotten request, or for an older token


class LeaseHolder:
    """One holder's view of its lease on one resource."""

    def __init__(self, config: LeaseConfig, resource: ResourceId, holder: HolderId) -> None:
        self._config = config.validate()
        self.resource = resource
        self.holder = holder
        self._next_id = 1
        # request id -> our clock at send time; insertion (= id) order.
        self._outstanding: OrderedDict[RequestId, float] = OrderedDict()
        self._token = NO_TOKEN  # the lease we believe we hold (NO_TOKEN: none)
        self._highest = NO_TOKEN  # highest token ever accepted by this view
        self._valid_until = -math.inf  # our clock, epsilon early
        self._renew_at = math.inf  # our clock

    # ------------------------------------------------------------------ queries

    @property
    def token(self) -> FencingToken:
        """The token of the lease we hold (possibly lapsed), NO_TOKEN if none."""
        return self._token

    @property
    def valid_until(self) -> float:
        """Our-clock instant at which our view of the lease ends (-inf if none)."""
        return self._valid_until

    @property
    def renew_at(self) -> float:
        """Our-clock instant at which the driver should call `request` to renew."""
        return self._renew_at

    def valid(self, now: float) -> bool:
        """True iff we may act as holder at `now` (check before *every* protected action)."""
        return self._token != NO_TOKEN and now < self._valid_until

    def renew_due(self, now: float) -> bool:
        return self._token != NO_TOKEN and now >= self._renew_at

    # ------------------------------------------------------------------ operations

    def request(self, now: float, duration: float | None = None) -> LeaseRequest:
        """Build the next ACQUIRE (no token) or RENEW (token held) request to send now."""
        rid = RequestId(self._next_id)
        self._next_id += 1
        self._outstanding[rid] = now
        while len(self._outstanding) > MAX_OUTSTANDING:
            self._outstanding.popitem(last=False)
        term = self._config.duration if duration is None else duration
        kind = RequestKind.ACQUIRE if self._token == NO_TOKEN else RequestKind.RENEW
        return LeaseRequest(rid, self.resource, self.holder, kind, self._token, term)

    def on_reply(self, request_id: RequestId, reply: GrantResult, now: float) -> ReplyOutcome:
        """Apply the grantor's answer to request `request_id`, received at `now`."""
        if reply.resource != self.resource or reply.holder != self.holder:
            return ReplyOutcome.IGNORED  # misrouted; not ours to interpret
        sent_at = self._outstanding.get(request_id)
        if sent_at is None:
            return ReplyOutcome.IGNORED
        if isinstance(reply, Denied):
            del self._outstanding[request_id]
            return self._on_denied(reply)
        if reply.token < self._highest:
            del self._outstanding[request_id]
            return ReplyOutcome.IGNORED
        # Requests sent before this one can only carry earlier anchors: drop them.
        for rid in [r for r in self._outstanding if r <= request_id]:
            del self._outstanding[rid]
        return self._on_granted(reply, sent_at, now)

    def release(self, now: float) -> LeaseRelease | None:
        """Stop acting as holder now; return the release to send (None if nothing held)."""
        del now  # releasing takes effect immediately whatever the clock says
        self._outstanding.clear()  # before sending: no delayed grant may revive us
        token = self._token
        self._drop()
        if token == NO_TOKEN:
            return None
        return LeaseRelease(self.resource, self.holder, token)

    # ------------------------------------------------------------------ internals

    def _on_granted(self, reply: Granted, sent_at: float, now: float) -> ReplyOutcome:
        until = sent_at + reply.duration - self._config.epsilon
        renew_at = sent_at + reply.duration * self._config.renew_fraction
        if reply.token == self._token:
            self._valid_until = max(self._valid_until, until)
            self._renew_at = max(self._renew_at, renew_at)
            outcome = ReplyOutcome.EXTENDED
        else:
            # A different (higher) token means our old lease ended at the grantor
            # before this one began; its validity does not carry over.
            self._token = reply.token
            self._highest = reply.token
            self._valid_until = until
            self._renew_at = renew_at
            outcome = ReplyOutcome.ACQUIRED
        if now >= self._valid_until:
            self._renew_at = now  # the grant was slow to arrive: renew at once
            return ReplyOutcome.LATE
        return outcome

    def _on_denied(self, reply: Denied) -> ReplyOutcome:
        if reply.reason is DenyReason.RECOVERING:
            # The grantor forgot us but also grants nobody else until our lease
            # must have ended, so our view stands; keep retrying.
            return ReplyOutcome.DEFERRED
        held = self._token != NO_TOKEN
        self._drop()
        return ReplyOutcome.LOST if held else ReplyOutcome.REFUSED

    def _drop(self) -> None:
        self._token = NO_TOKEN
        self._valid_until = -math.inf
        self._renew_at = math.inf
