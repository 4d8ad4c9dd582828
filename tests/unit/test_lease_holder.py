"""LeaseHolder: validity from the request's send time, epsilon early; reply filtering."""

from __future__ import annotations

import math

from coord.lease import (
    NO_TOKEN,
    Denied,
    DenyReason,
    FencingToken,
    Granted,
    HolderId,
    LeaseConfig,
    LeaseGrantor,
    LeaseHolder,
    LeaseRelease,
    Released,
    ReplyOutcome,
    RequestId,
    RequestKind,
    ResourceId,
)
from coord.lease.holder import MAX_OUTSTANDING

CFG = LeaseConfig(duration=10.0, max_duration=20.0, drift_bound=0.01, epsilon=0.5)
R = ResourceId("chunk/1")
A = HolderId("cs-a")
B = HolderId("cs-b")


def grant(token: int, duration: float = 10.0, holder: HolderId = A) -> Granted:
    # expires_at is on the grantor's clock; the holder must ignore it (use a silly value).
    return Granted(R, holder, FencingToken(token), duration, -1e9, renewal=False)


def test_acquire_request_then_valid_until_send_time_plus_term_minus_epsilon() -> None:
    h = LeaseHolder(CFG, R, A)
    assert not h.valid(0.0)
    req = h.request(now=100.0)
    assert (req.kind, req.token, req.duration, req.resource, req.holder) == (
        RequestKind.ACQUIRE, NO_TOKEN, 10.0, R, A,
    )
    # The reply arrives 3 s later; validity still counts from the send time.
    assert h.on_reply(req.request_id, grant(1), now=103.0) is ReplyOutcome.ACQUIRED
    assert h.token == 1
    assert h.valid(109.49)
    assert not h.valid(109.5)
    assert h.valid_until == 109.5
    assert h.renew_at == 105.0
    assert not h.renew_due(104.9)
    assert h.renew_due(105.0)


def test_renewal_carries_token_and_extends_from_its_own_send_time() -> None:
    h = LeaseHolder(CFG, R, A)
    first = h.request(0.0)
    h.on_reply(first.request_id, grant(1), 0.1)
    ren = h.request(5.0)
    assert (ren.kind, ren.token) == (RequestKind.RENEW, 1)
    assert h.on_reply(ren.request_id, grant(1), 5.2) is ReplyOutcome.EXTENDED
    assert h.valid_until == 14.5
    assert h.renew_at == 10.0


def test_grant_arriving_after_early_expiry_is_late_and_asks_for_renewal() -> None:
    h = LeaseHolder(CFG, R, A)
    req = h.request(0.0)
    assert h.on_reply(req.request_id, grant(1), 9.6) is ReplyOutcome.LATE
    assert not h.valid(9.6)
    assert h.renew_due(9.6)
    assert h.request(9.6).kind is RequestKind.RENEW


def test_reply_to_unknown_or_superseded_request_is_ignored() -> None:
    h = LeaseHolder(CFG, R, A)
    assert h.on_reply(RequestId(42), grant(1), 0.0) is ReplyOutcome.IGNORED
    old = h.request(0.0)
    new = h.request(1.0)
    assert h.on_reply(new.request_id, grant(1), 1.1) is ReplyOutcome.ACQUIRED
    # The older request's reply cannot carry a later anchor; it was forgotten.
    assert h.on_reply(old.request_id, grant(1), 1.2) is ReplyOutcome.IGNORED
    assert h.valid_until == 10.5


def test_delayed_grant_cannot_revive_a_released_lease() -> None:
    """The grant for a retried request arrives after we released and B took over."""
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    r2 = h.request(0.5)  # retry: r1's reply seemed lost
    h.on_reply(r2.request_id, grant(1), 0.6)
    rel = h.release(1.0)
    assert rel == LeaseRelease(R, A, FencingToken(1))
    assert not h.valid(1.0)
    assert h.on_reply(r1.request_id, grant(1), 1.5) is ReplyOutcome.IGNORED
    assert not h.valid(1.5)
    assert h.release(2.0) is None  # nothing held, nothing to send


def test_grant_with_older_token_than_seen_is_ignored() -> None:
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    h.on_reply(r1.request_id, grant(5), 0.1)
    r2 = h.request(1.0)
    assert h.on_reply(r2.request_id, grant(3), 1.1) is ReplyOutcome.IGNORED
    assert h.token == 5


def test_new_token_replaces_old_lease_validity() -> None:
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    h.on_reply(r1.request_id, grant(1), 0.1)
    r2 = h.request(8.0)
    assert h.on_reply(r2.request_id, grant(2, duration=2.0), 8.1) is ReplyOutcome.ACQUIRED
    assert (h.token, h.valid_until) == (2, 9.5)


def test_denial_while_holding_loses_lease_but_recovering_defers() -> None:
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    h.on_reply(r1.request_id, grant(1), 0.1)
    r2 = h.request(5.0)
    deferred = Denied(R, A, DenyReason.RECOVERING, None, 60.0)
    assert h.on_reply(r2.request_id, deferred, 5.1) is ReplyOutcome.DEFERRED
    assert h.valid(5.1)  # the lease stands until its own early expiry
    r3 = h.request(6.0)
    revoked = Denied(R, A, DenyReason.REVOKED, A, 3.0)
    assert h.on_reply(r3.request_id, revoked, 6.1) is ReplyOutcome.LOST
    assert not h.valid(6.1)
    assert (h.token, h.valid_until, h.renew_at) == (NO_TOKEN, -math.inf, math.inf)


def test_denial_while_not_holding_is_refused() -> None:
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    reply = Denied(R, A, DenyReason.HELD, B, 4.0)
    assert h.on_reply(r1.request_id, reply, 0.1) is ReplyOutcome.REFUSED
    assert h.request(4.1).kind is RequestKind.ACQUIRE


def test_reply_for_another_holder_or_resource_is_ignored() -> None:
    h = LeaseHolder(CFG, R, A)
    r1 = h.request(0.0)
    assert h.on_reply(r1.request_id, grant(1, holder=B), 0.1) is ReplyOutcome.IGNORED
    other = Granted(ResourceId("chunk/2"), A, FencingToken(1), 10.0, 0.0, renewal=False)
    assert h.on_reply(r1.request_id, other, 0.1) is ReplyOutcome.IGNORED
    assert h.on_reply(r1.request_id, grant(1), 0.2) is ReplyOutcome.ACQUIRED


def test_outstanding_requests_are_bounded() -> None:
    h = LeaseHolder(CFG, R, A)
    first = h.request(0.0)
    for i in range(MAX_OUTSTANDING):
        h.request(float(i))
    assert h.on_reply(first.request_id, grant(1), 40.0) is ReplyOutcome.IGNORED


def test_holder_and_grantor_round_trip_with_shared_clock() -> None:
    g = LeaseGrantor(CFG)
    ha, hb = LeaseHolder(CFG, R, A), LeaseHolder(CFG, R, B)
    ra = ha.request(0.0)
    reply = g.handle(ra, 0.0)
    assert isinstance(reply, Granted)
    assert ha.on_reply(ra.request_id, reply, 0.0) is ReplyOutcome.ACQUIRED
    rb = hb.request(1.0)
    reply = g.handle(rb, 1.0)
    assert isinstance(reply, Denied)
    assert hb.on_reply(rb.request_id, reply, 1.0) is ReplyOutcome.REFUSED
    rel = ha.release(2.0)
    assert rel is not None
    assert isinstance(g.handle(rel, 2.0), Released)
    rb = hb.request(2.0)
    reply = g.handle(rb, 2.0)
    assert isinstance(reply, Granted)
    assert hb.on_reply(rb.request_id, reply, 2.0) is ReplyOutcome.ACQUIRED
    assert hb.token == 2
