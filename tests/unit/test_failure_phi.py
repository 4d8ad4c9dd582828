"""Phi-accrual detector: the phi formula, adaptation to the heartbeat rhythm, events."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.failure import (
    DetectorConfigError,
    PeerId,
    PhiAccrualDetector,
    PhiConfig,
    Recover,
    Suspect,
    phi,
)

P = PeerId("cs-1")
Q = PeerId("cs-2")


def regular(det: PhiAccrualDetector, peer: PeerId, n: int, interval: float, *,
            start: float = 0.0, jitter: float = 0.0, rng: random.Random | None = None) -> float:
    """Feed n heartbeats; return the time of the last one."""
    t = start
    for _ in range(n):
        det.heartbeat(peer, t)
        noise = rng.uniform(-jitter, jitter) if rng else 0.0
        t += interval + noise
    return t - interval


def test_phi_formula_known_values() -> None:
    # At the mean, P_later = 1/2.
    assert phi(1.0, 1.0, 0.2) == pytest.approx(math.log10(2))
    # One std-dev above the mean: P_later = 0.158655...
    assert phi(1.2, 1.0, 0.2) == pytest.approx(-math.log10(0.15865525393145707))
    # Far below the mean: practically certain to arrive later, phi ~ 0.
    assert phi(0.0, 10.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_phi_is_finite_deep_in_the_tail() -> None:
    # erfc underflows to 0 around 27 std-devs; phi must stay finite and growing.
    values = [phi(s, 0.0, 1.0) for s in (30.0, 40.0, 100.0, 1e3)]
    assert all(math.isfinite(v) for v in values)
    assert values == sorted(values)
    assert phi(100.0, 0.0, 1.0) == pytest.approx(2174.0, rel=1e-3)  # = x^2/ln10 + ..., x=70.7


@given(
    mean=st.floats(0.01, 100.0),
    std=st.floats(0.001, 10.0),
    a=st.floats(0.0, 1e4),
    b=st.floats(0.0, 1e4),
)
def test_phi_never_decreases_with_silence(mean: float, std: float, a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    assert 0.0 <= phi(lo, mean, std) <= phi(hi, mean, std) + 1e-9


def test_phi_grows_with_silence_after_regular_heartbeats() -> None:
    det = PhiAccrualDetector(PhiConfig(acceptable_pause=0.0, min_std=0.05))
    last = regular(det, P, 50, 1.0, rng=random.Random(1), jitter=0.1)
    levels = [det.phi(P, last + s) for s in (0.5, 1.0, 1.2, 1.5, 2.0, 3.0)]
    assert levels == sorted(levels)
    assert levels[0] < 0.5
    assert levels[-1] > 8.0


def test_regular_heartbeats_keep_phi_low_and_raise_no_event() -> None:
    rng = random.Random(7)
    det = PhiAccrualDetector(PhiConfig(threshold=8.0))
    t = 0.0
    for _ in range(500):
        det.heartbeat(P, t)
        step = 1.0 + rng.uniform(-0.2, 0.2)
        # Check just before the next heartbeat: the worst moment for a false alarm.
        assert det.check(t + step - 1e-6) == []
        assert det.phi(P, t + step - 1e-6) < 2.0
        t += step
    mean, std = det.stats(P)
    assert mean == pytest.approx(1.0, abs=0.05)
    assert 0.1 <= std < 0.15  # uniform(-0.2, 0.2) has std 0.115


def test_pause_beyond_acceptable_pause_crosses_threshold_and_reason_says_why() -> None:
    cfg = PhiConfig(threshold=8.0, acceptable_pause=2.0, min_std=0.1)
    det = PhiAccrualDetector(cfg)
    last = regular(det, P, 20, 1.0)
    # A pause of 2.5 s (inside mean + allowance = 3 s) is tolerated ...
    assert det.check(last + 2.5) == []
    # ... but beyond the allowance phi climbs fast: std is min_std = 0.1.
    events = det.check(last + 3.7)
    assert len(events) == 1 and isinstance(events[0], Suspect)
    assert det.phi(P, last + 3.7) > 8.0
    assert events[0].reason.startswith("phi ")
    assert "> threshold 8.00" in events[0].reason
    assert "silent 3.700 s" in events[0].reason
    assert det.suspected(P)


def test_recovery_event_when_heartbeats_resume() -> None:
    det = PhiAccrualDetector(PhiConfig(acceptable_pause=0.0))
    last = regular(det, P, 10, 1.0)
    assert [type(e) for e in det.check(last + 10.0)] == [Suspect]
    assert det.check(last + 11.0) == []
    det.heartbeat(P, last + 12.0)
    events = det.check(last + 12.1)
    assert events == [Recover(P, last + 12.1, events[0].reason)]
    assert "heartbeats resumed" in events[0].reason
    assert not det.suspected(P)


def test_slower_peer_gets_a_longer_effective_timeout() -> None:
    det = PhiAccrualDetector(PhiConfig(acceptable_pause=0.0))
    regular(det, P, 30, 0.5)
    regular(det, Q, 30, 5.0)
    # After 3 s of silence each: the fast peer is suspicious, the slow one is fine.
    assert det.phi(P, 14.5 + 3.0) > 8.0
    assert det.phi(Q, 145.0 + 3.0) < 0.5


def test_fresh_peer_uses_first_interval_prior() -> None:
    det = PhiAccrualDetector(PhiConfig(first_interval=2.0, acceptable_pause=0.0, min_std=0.1))
    det.heartbeat(P, 0.0)
    assert det.stats(P) == (2.0, 0.5)
    assert det.phi(P, 2.0) == pytest.approx(math.log10(2))
    det.heartbeat(P, 1.0)
    assert det.stats(P) == (2.0, 0.5)  # one interval is not yet a distribution
    det.heartbeat(P, 2.0)
    assert det.stats(P) == (1.0, 0.1)  # two identical intervals: std floors at min_std


def test_window_slides_and_duplicates_carry_no_interval() -> None:
    det = PhiAccrualDetector(PhiConfig(window=4, acceptable_pause=0.0, min_std=0.01))
    regular(det, P, 10, 3.0)
    regular(det, P, 5, 1.0, start=28.0)
    assert det.stats(P)[0] == pytest.approx(1.0)
    det.heartbeat(P, 32.0)  # duplicate of the last time
    det.heartbeat(P, 31.0)  # reordered
    assert det.stats(P)[0] == pytest.approx(1.0)


def test_forget_and_monitor() -> None:
    det = PhiAccrualDetector(PhiConfig())
    det.monitor(P, 0.0)
    assert list(det.peers()) == [P]
    assert [type(e) for e in det.check(100.0)] == [Suspect]
    det.forget(P)
    assert det.check(200.0) == []
    assert not det.suspected(P)


@pytest.mark.parametrize(
    "bad",
    [
        PhiConfig(threshold=0.0),
        PhiConfig(window=1),
        PhiConfig(min_std=0.0),
        PhiConfig(acceptable_pause=-1.0),
        PhiConfig(first_interval=float("inf")),
    ],
)
def test_config_validate(bad: PhiConfig) -> None:
    with pytest.raises(DetectorConfigError):
        bad.validate()
