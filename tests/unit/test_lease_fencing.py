"""FencingGuard: accepts non-decreasing tokens per resource, rejects stale ones."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coord.lease import (
    NO_TOKEN,
    FenceAccepted,
    FenceRejected,
    FencingGuard,
    FencingToken,
    HolderId,
    LeaseConfig,
    LeaseGrantor,
    ResourceId,
)
from coord.lease.types import Granted

R = ResourceId("chunk/1")
R2 = ResourceId("chunk/2")
T = FencingToken


def test_stale_token_rejected_after_newer_accepted() -> None:
    g = FencingGuard()
    assert g.check(R, T(3)) == FenceAccepted(R, T(3), raised=True)
    assert g.check(R, T(3)) == FenceAccepted(R, T(3), raised=False)  # same lease, next write
    assert g.check(R, T(5)) == FenceAccepted(R, T(5), raised=True)
    rejected = g.check(R, T(3))
    assert rejected == FenceRejected(R, T(3), T(5))
    assert isinstance(rejected, FenceRejected)
    assert rejected.reason == "stale fencing token 3 < 5 on chunk/1"
    assert g.highest(R) == 5


def test_resources_are_fenced_independently() -> None:
    g = FencingGuard()
    g.check(R, T(9))
    assert isinstance(g.check(R2, T(1)), FenceAccepted)
    assert g.highest(R2) == 1


def test_no_token_is_never_admitted() -> None:
    g = FencingGuard()
    assert g.check(R, NO_TOKEN) == FenceRejected(R, NO_TOKEN, NO_TOKEN)
    assert g.highest(R) == NO_TOKEN


def test_snapshot_restores_after_restart_and_forget_drops() -> None:
    g = FencingGuard()
    g.check(R, T(7))
    restarted = FencingGuard(g.snapshot())
    assert isinstance(restarted.check(R, T(6)), FenceRejected)
    restarted.forget(R)
    assert restarted.highest(R) == NO_TOKEN


def test_old_primary_is_fenced_out_after_lease_moves() -> None:
    """The Kleppmann scenario: A pauses past its lease, B gets a newer token and writes."""
    cfg = LeaseConfig(duration=10, max_duration=10, drift_bound=0.01, epsilon=0.1)
    grantor, guard = LeaseGrantor(cfg), FencingGuard()
    a = grantor.request(R, HolderId("a"), 0.0)
    assert isinstance(a, Granted)
    # A checks its lease at t=1, then is paused for 30 s before its write lands.
    b = grantor.request(R, HolderId("b"), 11.0)
    assert isinstance(b, Granted)
    assert isinstance(guard.check(R, b.token), FenceAccepted)
    assert isinstance(guard.check(R, a.token), FenceRejected)


@given(st.lists(st.tuples(st.sampled_from([R, R2]), st.integers(0, 20)), max_size=60))
def test_guard_matches_a_model_and_accepted_tokens_never_decrease(
    ops: list[tuple[ResourceId, int]],
) -> None:
    g = FencingGuard()
    model: dict[ResourceId, int] = {}
    accepted: dict[ResourceId, list[int]] = {R: [], R2: []}
    for resource, token in ops:
        verdict = g.check(resource, T(token))
        expect = token > 0 and token >= model.get(resource, 0)
        assert isinstance(verdict, FenceAccepted) == expect
        if expect:
            model[resource] = token
            accepted[resource].append(token)
    for seq in accepted.values():
        assert seq == sorted(seq)
