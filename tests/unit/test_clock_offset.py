"""NTP/Cristian offset estimation: the on-wire arithmetic, the error bound
under any delay asymmetry, the clock filter, impossible samples, drift, and
the async helper against a fake skewed peer (fake clocks, no sleeping)."""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from coord.clock.offset import (
    NoValidSample,
    OffsetEstimate,
    OffsetEstimator,
    OffsetSample,
    estimate_offset,
    relative_drift_bound,
)

MS = 1_000_000  # nanoseconds


def _exchange(t1: int, true_offset: int, d1: int, processing: int, d2: int) -> OffsetSample:
    """The readings a perfect network with the given one-way delays would give."""
    t2 = t1 + d1 + true_offset
    t3 = t2 + processing
    t4 = t3 - true_offset + d2
    return OffsetSample(t1, t2, t3, t4)


def test_on_wire_arithmetic() -> None:
    sample = OffsetSample(t1=100, t2=1_110, t3=1_115, t4=135)
    assert sample.offset == ((1_110 - 100) + (1_115 - 135)) / 2 == 995.0
    assert sample.delay == (135 - 100) - (1_115 - 1_110) == 30
    assert sample.error_bound(now=135, max_drift=0.0) == 15.0
    # With drift the bound grows with the time since the sample was taken.
    assert sample.error_bound(now=1_100, max_drift=0.01) == 15.0 + 10.0


@given(
    t1=st.integers(-(10**12), 10**12),
    true_offset=st.integers(-(10**12), 10**12),
    d1=st.integers(0, 10**9),
    processing=st.integers(0, 10**8),
    d2=st.integers(0, 10**9),
)
def test_bound_holds_for_any_asymmetry(
    t1: int, true_offset: int, d1: int, processing: int, d2: int
) -> None:
    sample = _exchange(t1, true_offset, d1, processing, d2)
    assert sample.is_possible()
    assert sample.delay == d1 + d2
    assert sample.offset == true_offset + (d1 - d2) / 2
    assert abs(sample.offset - true_offset) <= sample.delay / 2
    if d1 == d2:
        assert sample.offset == true_offset


@pytest.mark.parametrize(
    "sample",
    [
        OffsetSample(t1=100, t2=500, t3=600, t4=150),  # server took longer than the round trip
        OffsetSample(t1=100, t2=500, t3=490, t4=200),  # server replied before it received
        OffsetSample(t1=100, t2=500, t3=500, t4=90),  # reply arrived before the request left
    ],
)
def test_impossible_samples_are_rejected(sample: OffsetSample) -> None:
    estimator = OffsetEstimator()
    assert not sample.is_possible()
    assert estimator.add(sample) is False
    assert estimator.rejected == 1
    with pytest.raises(NoValidSample):
        estimator.estimate(now=1_000)


def test_filter_picks_minimum_delay() -> None:
    estimator = OffsetEstimator(window=8)
    true_offset = 5 * MS
    delays = [(9, 1), (1, 8), (2, 2), (20, 3), (1, 1), (4, 30)]  # ms, both directions
    for i, (d1, d2) in enumerate(delays):
        assert estimator.add(_exchange(i * 100 * MS, true_offset, d1 * MS, MS // 10, d2 * MS))
    assert estimator.add(OffsetSample(0, 10, 5, 20)) is False  # impossible, ignored
    est = estimator.estimate(now=600 * MS)
    assert est.delay == 2 * MS  # the (1, 1) exchange
    assert est.offset == true_offset  # symmetric delays: exact
    assert est.error_bound == MS
    assert (est.accepted, est.rejected) == (6, 1)
    assert est.contains(true_offset)


def test_window_forgets_old_samples() -> None:
    estimator = OffsetEstimator(window=2)
    estimator.add(_exchange(0, 0, 1, 0, 1))  # the best, but soon out of the window
    estimator.add(_exchange(100, 0, 50, 0, 10))
    estimator.add(_exchange(200, 0, 40, 0, 40))
    est = estimator.estimate(now=300)
    assert est.delay == 60
    assert est.accepted == 2


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        OffsetEstimator(window=0)
    with pytest.raises(ValueError):
        OffsetEstimator(max_drift=-0.1)


@given(
    rho=st.floats(0, 0.01),
    client_rate=st.floats(-1, 1),
    server_rate=st.floats(-1, 1),
    elapsed=st.floats(0, 1e6),
)
def test_relative_drift_bound_covers_any_admissible_pair_of_rates(
    rho: float, client_rate: float, server_rate: float, elapsed: float
) -> None:
    # Clocks C(t) = r t with r in [1 - rho, 1 + rho]; the offset S - C moves by
    # (r_s - r_c) t while the client's clock advances r_c t.
    r_c, r_s = 1 + rho * client_rate, 1 + rho * server_rate
    moved = abs(r_s - r_c) * elapsed
    assert moved <= relative_drift_bound(rho) * (r_c * elapsed) * (1 + 1e-12) + 1e-9
    with pytest.raises(ValueError):
        relative_drift_bound(1.0)


def test_remote_to_local_interval() -> None:
    est = OffsetEstimate(offset=100.0, delay=20, error_bound=10.0, at=0, accepted=1, rejected=0)
    assert (est.low, est.high) == (90.0, 110.0)
    # The server reads 1000 when our clock reads 1000 - θ*, θ* in [90, 110].
    assert est.remote_to_local(1_000) == (890.0, 910.0)


class _FakeWorld:
    """True time plus a client and a server clock skewed from it.

    The client clock may run fast by `client_fast_per` parts: it gains one
    tick per `client_fast_per` true ticks.  True time only ever advances in
    multiples of `client_fast_per` so all readings stay exact integers.
    """

    def __init__(self, rng: random.Random, client_skew: int, server_skew: int) -> None:
        self.rng = rng
        self.now = 0  # true time, ns
        self.client_skew = client_skew
        self.server_skew = server_skew
        self.client_fast_per = 10_000  # 100 ppm fast when drifting
        self.drifting = False
        self.probes = 0

    def advance(self, ns: int) -> None:
        step = self.client_fast_per
        self.now += (ns // step) * step

    def client_clock(self) -> int:
        drift = self.now // self.client_fast_per if self.drifting else 0
        return self.now + self.client_skew + drift

    def server_clock(self) -> int:
        return self.now + self.server_skew

    def true_offset(self) -> int:
        return self.server_clock() - self.client_clock()

    async def probe(self) -> tuple[int, int]:
        """A request/reply with noisy, asymmetric one-way delays; no sleeping."""
        self.probes += 1
        self.advance(self._delay(mean_ms=8.0))  # the slow direction
        t2 = self.server_clock()
        self.advance(self.rng.randrange(0, MS // 5))  # server processing
        t3 = self.server_clock()
        await trio.lowlevel.checkpoint()
        self.advance(self._delay(mean_ms=0.5))  # the fast direction
        return t2, t3

    def _delay(self, mean_ms: float) -> int:
        base = MS // 10
        return base + int(self.rng.expovariate(1.0 / (mean_ms * MS)))


@pytest.mark.parametrize("seed", range(10))
async def test_estimate_against_skewed_peer(seed: int) -> None:
    rng = random.Random(seed)
    world = _FakeWorld(rng, client_skew=rng.randrange(-(10**12), 10**12), server_skew=7 * MS)
    est = await estimate_offset(world.probe, world.client_clock, samples=8)
    assert world.probes == 8
    assert est.accepted == 8 and est.rejected == 0
    assert est.contains(world.true_offset())
    # Asymmetry biases the estimate (towards the slow direction) but the
    # filter keeps the error well under a single typical round trip.
    assert est.error_bound < 20 * MS


async def test_more_samples_tighten_the_bound() -> None:
    one = _FakeWorld(random.Random(1), client_skew=0, server_skew=-3 * MS)
    many = _FakeWorld(random.Random(1), client_skew=0, server_skew=-3 * MS)
    est_one = await estimate_offset(one.probe, one.client_clock, samples=1)
    est_many = await estimate_offset(many.probe, many.client_clock, samples=16)
    # Same random stream: the first exchange is identical, then more choice.
    assert est_many.error_bound <= est_one.error_bound
    assert est_one.contains(one.true_offset()) and est_many.contains(many.true_offset())


async def test_every_probe_impossible_raises() -> None:
    clock = iter(range(0, 1_000, 10))

    async def broken_probe() -> tuple[int, int]:
        return 500, 400  # replies before it receives

    with pytest.raises(NoValidSample):
        await estimate_offset(broken_probe, lambda: next(clock), samples=3)
    with pytest.raises(ValueError):
        await estimate_offset(broken_probe, lambda: next(clock), samples=0)


async def test_drift_widens_the_bound_as_the_estimate_ages() -> None:
    world = _FakeWorld(random.Random(3), client_skew=11 * MS, server_skew=0)
    world.drifting = True
    drift = 1 / 10_000  # the client gains 100 µs per second: the fake world's 100 ppm
    estimator = OffsetEstimator(window=8, max_drift=drift)
    for _ in range(8):
        t1 = world.client_clock()
        t2, t3 = await world.probe()
        estimator.add(OffsetSample(t1, t2, t3, world.client_clock()))
    fresh = estimator.estimate(world.client_clock())
    assert fresh.contains(world.true_offset())

    world.advance(60_000 * MS)  # a minute later the offset has moved by 6 ms
    aged = estimator.estimate(world.client_clock())
    assert aged.contains(world.true_offset())
    assert aged.error_bound > fresh.error_bound + 5 * MS
    # Ignoring drift would have claimed a bound the true offset is outside of.
    no_drift = OffsetEstimate(
        aged.offset, aged.delay, aged.delay / 2, aged.at, aged.accepted, aged.rejected
    )
    assert not no_drift.contains(world.true_offset())
