"""The epsilon argument, checked on the real cores with drifting clocks.

A clock reads C(t) = rate * t + offset with rate in [1-rho, 1+rho].  The
holder's early expiry must come no later, in true time, than the grantor's
late expiry whenever epsilon >= rho * max_duration -- and can come later when
epsilon is smaller (docs/leases.md derives both).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.lease import (
    Denied,
    Granted,
    HolderId,
    LeaseConfig,
    LeaseGrantor,
    LeaseHolder,
    ReplyOutcome,
    ResourceId,
)

R = ResourceId("r")
A = HolderId("a")


@dataclass(frozen=True)
class Clock:
    rate: float
    offset: float

    def read(self, t: float) -> float:
        return self.rate * t + self.offset

    def true_time(self, reading: float) -> float:
        return (reading - self.offset) / self.rate


def true_expiries(
    cfg: LeaseConfig, holder_clock: Clock, grantor_clock: Clock, send: float, delay: float
) -> tuple[float, float]:
    """(holder's early expiry, grantor's late expiry) in true time for one grant."""
    g = LeaseGrantor(cfg)
    h = LeaseHolder(cfg, R, A)
    req = h.request(holder_clock.read(send))
    reply = g.handle(req, grantor_clock.read(send + delay))
    assert isinstance(reply, Granted)
    outcome = h.on_reply(req.request_id, reply, holder_clock.read(send + 2 * delay))
    assert outcome in (ReplyOutcome.ACQUIRED, ReplyOutcome.LATE)
    return holder_clock.true_time(h.valid_until), grantor_clock.true_time(reply.expires_at)


@settings(max_examples=300, deadline=None)
@given(
    rho=st.floats(0.0, 0.2),
    d=st.floats(0.5, 100.0),
    h_pos=st.floats(-1.0, 1.0),
    g_pos=st.floats(-1.0, 1.0),
    h_off=st.floats(-1e4, 1e4),
    g_off=st.floats(-1e4, 1e4),
    send=st.floats(0.0, 1e3),
    delay=st.floats(0.0, 10.0),
)
def test_holder_expires_before_grantor_when_epsilon_is_rho_times_d(
    *, rho: float, d: float, h_pos: float, g_pos: float,
    h_off: float, g_off: float, send: float, delay: float,
) -> None:
    eps = rho * d
    cfg = LeaseConfig(duration=d, max_duration=d, drift_bound=rho, epsilon=eps,
                      renew_fraction=0.1)
    if eps >= 0.9 * d:
        return  # not a usable configuration (validate() would refuse it)
    holder, grantor = Clock(1 + rho * h_pos, h_off), Clock(1 + rho * g_pos, g_off)
    h_end, g_end = true_expiries(cfg, holder, grantor, send, delay)
    assert h_end <= g_end + 1e-9 * max(1.0, abs(g_end))


def test_worst_case_is_tight_at_epsilon_equal_rho_d() -> None:
    """Slowest holder, fastest grantor, zero delay: the two expiries coincide."""
    rho, d = 0.01, 10.0
    cfg = LeaseConfig(duration=d, max_duration=d, drift_bound=rho, epsilon=rho * d)
    h_end, g_end = true_expiries(cfg, Clock(1 - rho, 5.0), Clock(1 + rho, -3.0), 0.0, 0.0)
    assert h_end == pytest.approx(g_end, abs=1e-9)
    assert h_end == pytest.approx((d - rho * d) / (1 - rho))  # = d


def test_epsilon_below_rho_d_lets_holder_outlive_grantor() -> None:
    """The check can fail: with a too-small margin the holder's view outlasts the grantor's."""
    rho, d = 0.01, 10.0
    # Claim no drift so validate() accepts epsilon = 0; the clocks still drift.
    cfg = LeaseConfig(duration=d, max_duration=d, drift_bound=0.0, epsilon=0.0)
    h_end, g_end = true_expiries(cfg, Clock(1 - rho, 0.0), Clock(1 + rho, 0.0), 0.0, 0.0)
    assert h_end - g_end == pytest.approx(d / (1 - rho) - d / (1 + rho))
    assert h_end > g_end + 0.19
    half = LeaseConfig(duration=d, max_duration=d, drift_bound=rho / 2, epsilon=rho * d / 2)
    h_end, g_end = true_expiries(half, Clock(1 - rho, 0.0), Clock(1 + rho, 0.0), 0.0, 0.0)
    assert h_end > g_end


def test_restart_wait_covers_a_lease_granted_just_before_the_crash() -> None:
    """A lease granted at the crash instant ends (holder view) before recovery ends."""
    rho, d = 0.01, 10.0
    cfg = LeaseConfig(duration=d, max_duration=d, drift_bound=rho, epsilon=rho * d)
    holder, grantor = Clock(1 - rho, 0.0), Clock(1 + rho, 0.0)
    h_end, _ = true_expiries(cfg, holder, grantor, 0.0, 0.0)
    # Restart at the same true instant, on a fresh clock that runs fast.
    restarted = Clock(1 + rho, 123.0)
    g2 = LeaseGrantor.recover(cfg, LeaseGrantor(cfg).high_water, restarted.read(0.0))
    open_at = restarted.true_time(restarted.read(0.0) + cfg.recovery_wait)
    assert h_end <= open_at + 1e-9
    assert isinstance(g2.request(R, A, restarted.read(0.0)), Denied)
