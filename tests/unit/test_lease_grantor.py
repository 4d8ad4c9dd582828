"""LeaseGrantor: exact results of grant, deny, renew, release, revoke, expiry, restart."""

from __future__ import annotations

import pytest

from coord.lease import (
    NO_TOKEN,
    ConfigError,
    Denied,
    DenyReason,
    Expired,
    FencingToken,
    Granted,
    HolderId,
    LeaseConfig,
    LeaseGrantor,
    LeaseRecord,
    LeaseRelease,
    LeaseRequest,
    Released,
    RequestId,
    RequestKind,
    ResourceId,
    Revoked,
)

CFG = LeaseConfig(duration=10.0, max_duration=20.0, drift_bound=0.01, epsilon=0.5)
R = ResourceId("chunk/1")
R2 = ResourceId("chunk/2")
A = HolderId("cs-a")
B = HolderId("cs-b")


def granted(result: Granted | Denied) -> Granted:
    assert isinstance(result, Granted), result
    return result


def denied(result: Granted | Denied) -> Denied:
    assert isinstance(result, Denied), result
    return result


def test_grant_on_free_resource_is_epsilon_late_and_persists_first_token() -> None:
    g = LeaseGrantor(CFG)
    assert g.request(R, A, now=100.0, duration=10.0) == Granted(
        R, A, FencingToken(1), 10.0, 110.5, renewal=False, persist_high_water=FencingToken(1)
    )
    assert g.holder_of(R, 100.0) == LeaseRecord(R, A, FencingToken(1))
    assert g.high_water == 1


def test_conflicting_request_is_denied_with_holder_and_time_to_late_expiry() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 100.0, 10.0)
    assert g.request(R, B, 104.0, 10.0) == Denied(R, B, DenyReason.HELD, A, 6.5)
    # Still denied an instant before the late expiry (never at the early one).
    assert denied(g.request(R, B, 110.49, 10.0)).reason is DenyReason.HELD


def test_grantor_grants_again_only_at_its_late_expiry() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 100.0, 10.0)
    got = granted(g.request(R, B, 110.5, 10.0))
    assert (got.holder, got.token, got.renewal) == (B, 2, False)


def test_other_resources_are_independent() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0)
    assert granted(g.request(R2, B, 0.0)).token == 2


def test_renew_extends_from_now_and_keeps_token() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 100.0, 10.0)
    got = granted(g.renew(R, A, FencingToken(1), 105.0, 10.0))
    assert got == Granted(R, A, FencingToken(1), 10.0, 115.5, renewal=True)
    assert denied(g.request(R, B, 112.0)).retry_in == pytest.approx(3.5)


def test_shorter_renewal_never_pulls_grantor_expiry_earlier() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 100.0, 10.0)
    assert granted(g.renew(R, A, FencingToken(1), 101.0, 2.0)).expires_at == 110.5


def test_repeated_acquire_by_holder_replaces_lease_with_new_token() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    got = granted(g.request(R, A, 3.0, 10.0))
    assert (got.token, got.renewal, got.expires_at, got.persist_high_water) == (2, False, 13.5, 2)
    assert g.holder_of(R, 3.0) == LeaseRecord(R, A, FencingToken(2))


def test_reacquire_never_ends_before_the_lease_it_replaces() -> None:
    """A's first grant (10 s) may still reach A; a short re-acquire must not cut it."""
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    got = granted(g.request(R, A, 1.0, 2.0))
    assert (got.duration, got.expires_at) == (2.0, 10.5)
    assert denied(g.request(R, B, 10.4)).reason is DenyReason.HELD


def test_delayed_release_of_old_token_cannot_free_a_reacquired_lease() -> None:
    """Found by the simulator: A releases token 1, re-acquires; the release arrives late."""
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0)
    # A released token 1 (message delayed), then asked again; the grantor still had A.
    again = granted(g.request(R, A, 1.0))
    assert again.token == 2
    assert g.release(R, A, FencingToken(1), 2.0).freed is False
    assert denied(g.request(R, B, 2.0)).current_holder == A


@pytest.mark.parametrize(
    ("holder", "token", "now", "reason"),
    [
        (B, 1, 5.0, DenyReason.NOT_HOLDER),
        (A, 7, 5.0, DenyReason.STALE_TOKEN),
        (A, 1, 10.5, DenyReason.EXPIRED),
    ],
)
def test_renew_refusals(holder: HolderId, token: int, now: float, reason: DenyReason) -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    assert denied(g.renew(R, holder, FencingToken(token), now, 10.0)).reason is reason


def test_renew_after_expiry_and_regrant_is_not_holder() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    g.request(R, B, 11.0, 10.0)
    assert g.renew(R, A, FencingToken(1), 12.0) == Denied(R, A, DenyReason.NOT_HOLDER, B, 0.0)


def test_release_frees_immediately_and_only_for_current_token() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0)
    assert g.release(R, A, FencingToken(9), 1.0) == Released(R, A, FencingToken(9), freed=False)
    assert g.release(R, B, FencingToken(1), 1.0).freed is False
    assert g.release(R, A, FencingToken(1), 1.0) == Released(R, A, FencingToken(1), freed=True)
    assert g.holder_of(R, 1.0) is None
    assert granted(g.request(R, B, 1.0)).token == 2


def test_stale_release_after_regrant_does_not_free_new_lease() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0)
    g.release(R, A, FencingToken(1), 1.0)
    g.request(R, B, 2.0)
    assert g.release(R, A, FencingToken(1), 3.0).freed is False  # a duplicated old release
    assert g.holder_of(R, 3.0) == LeaseRecord(R, B, FencingToken(2))


def test_tokens_strictly_increase_across_holders_and_resources() -> None:
    g = LeaseGrantor(CFG)
    tokens = []
    now = 0.0
    for i in range(6):
        holder = (A, B)[i % 2]
        tokens.append(granted(g.request((R, R2)[i % 3 == 0], holder, now, 1.0)).token)
        now += 2.0  # past every late expiry
    assert tokens == sorted(set(tokens))
    assert tokens[0] == 1


def test_expire_due_reports_each_lapsed_lease_once() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    g.request(R2, B, 0.0, 5.0)
    g.renew(R, A, FencingToken(1), 4.0, 10.0)  # leaves a stale heap entry at 10.5
    assert g.expire_due(5.49) == []
    assert g.expire_due(11.0) == [Expired(R2, B, FencingToken(2), 5.5)]
    assert g.expire_due(14.5) == [Expired(R, A, FencingToken(1), 14.5)]
    assert g.expire_due(100.0) == []
    assert g.leases() == ()


def test_revoke_stops_renewal_but_never_shortens_the_lease() -> None:
    g = LeaseGrantor(CFG)
    g.request(R, A, 0.0, 10.0)
    assert g.revoke(R, 2.0) == Revoked(R, A, FencingToken(1), 10.5)
    assert g.renew(R, A, FencingToken(1), 3.0) == Denied(R, A, DenyReason.REVOKED, A, 7.5)
    assert denied(g.request(R, A, 3.0)).reason is DenyReason.REVOKED
    assert denied(g.request(R, B, 10.4)).reason is DenyReason.HELD
    assert granted(g.request(R, B, 10.5)).token == 2
    assert g.revoke(ResourceId("none"), 0.0) is None


def test_durations_are_clamped_and_malformed_ones_refused() -> None:
    g = LeaseGrantor(CFG)
    assert granted(g.request(R, A, 0.0, 1e9)).duration == 20.0
    assert granted(g.request(R2, A, 0.0)).duration == CFG.duration
    for bad in (0.0, -1.0, float("nan"), float("inf"), CFG.epsilon):
        reply = denied(g.request(ResourceId("x"), A, 0.0, bad))
        assert reply.reason is DenyReason.INVALID


def test_restart_from_high_water_never_reissues_a_token_and_waits_out_old_leases() -> None:
    g = LeaseGrantor(CFG)
    first = granted(g.request(R, A, 0.0))
    assert first.persist_high_water == 1
    stored = g.high_water  # what the driver persisted before sending the grant
    # Restart: a new monotonic clock origin, memory of the lease gone.
    g2 = LeaseGrantor.recover(CFG, stored, now=5000.0)
    wait = CFG.recovery_wait
    assert g2.request(R, B, 5000.0) == Denied(R, B, DenyReason.RECOVERING, None, wait)
    assert denied(g2.renew(R, A, first.token, 5001.0)).reason is DenyReason.RECOVERING
    assert denied(g2.request(R2, B, 5000.0 + wait - 0.01)).reason is DenyReason.RECOVERING
    again = granted(g2.request(R, B, 5000.0 + wait))
    assert again.token > first.token
    assert again.persist_high_water == again.token
    assert g2.expire_due(5000.0 + wait) == []  # recovery ended; nothing was live


def test_token_block_persists_once_per_block_and_restart_skips_the_block() -> None:
    g = LeaseGrantor(CFG, token_block=3)
    marks = [granted(g.request(ResourceId(f"r{i}"), A, 0.0)).persist_high_water for i in range(4)]
    assert marks == [3, None, None, 6]
    g2 = LeaseGrantor.recover(CFG, g.high_water, 0.0, token_block=3)
    assert granted(g2.request(R, A, CFG.recovery_wait)).token == 7


def test_recover_with_persisted_holders_lets_them_renew_and_blocks_others() -> None:
    recs = [LeaseRecord(R, A, FencingToken(4))]
    g = LeaseGrantor.recover(CFG, FencingToken(5), now=0.0, holders=recs)
    assert denied(g.request(R, B, 1.0)).current_holder == A
    assert granted(g.renew(R, A, FencingToken(4), 1.0, 10.0)).token == 4
    # The recorded lease lasts recovery_wait, not just the renewal's term.
    assert denied(g.request(R, B, 12.0)).retry_in == pytest.approx(CFG.recovery_wait - 12.0)
    assert granted(g.request(R2, B, CFG.recovery_wait)).token == 6
    with pytest.raises(ValueError, match="outside"):
        LeaseGrantor.recover(CFG, FencingToken(3), 0.0, recs)


def test_caller_supplied_tokens_must_increase() -> None:
    g = LeaseGrantor(CFG)
    got = granted(g.request(R, A, 0.0, token=FencingToken(100)))
    assert (got.token, got.persist_high_water) == (100, None)
    with pytest.raises(ValueError, match="not above"):
        g.request(R2, A, 0.0, token=FencingToken(100))
    assert granted(g.request(R2, A, 0.0)).token == 101


def test_handle_dispatches_holder_messages() -> None:
    g = LeaseGrantor(CFG)
    acq = LeaseRequest(RequestId(1), R, A, RequestKind.ACQUIRE, NO_TOKEN, 10.0)
    assert granted(g.handle(acq, 0.0)).token == 1
    ren = LeaseRequest(RequestId(2), R, A, RequestKind.RENEW, FencingToken(1), 10.0)
    assert granted(g.handle(ren, 1.0)).expires_at == 11.5
    rel = g.handle(LeaseRelease(R, A, FencingToken(1)), 2.0)
    assert rel == Released(R, A, FencingToken(1), freed=True)


@pytest.mark.parametrize(
    "bad",
    [
        LeaseConfig(duration=10, max_duration=20, drift_bound=0.01, epsilon=0.19),
        LeaseConfig(duration=0),
        LeaseConfig(duration=70, max_duration=60),
        LeaseConfig(drift_bound=1.5),
        LeaseConfig(renew_fraction=1.0),
        LeaseConfig(duration=1.0, epsilon=0.6, renew_fraction=0.5, max_duration=1.0),
        LeaseConfig(epsilon=float("nan")),
    ],
)
def test_config_validate_rejects_inconsistent_fields(bad: LeaseConfig) -> None:
    with pytest.raises(ConfigError):
        bad.validate()


def test_config_minimum_epsilon_is_drift_times_max_duration() -> None:
    cfg = LeaseConfig(duration=10, max_duration=20, drift_bound=0.01, epsilon=0.2)
    assert cfg.validate() is cfg
    assert cfg.min_epsilon == pytest.approx(0.2)
    assert LeaseConfig().validate().recovery_wait == pytest.approx(60.1)
