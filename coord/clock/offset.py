"""Physical clock offset estimation between two nodes (Cristian 1989; NTP's
on-wire calculation and clock filter, RFC 5905 §8 and §10).

One exchange gives four readings, all integers in one unit (nanoseconds by
convention):

    t1  client sends the request      (client clock)
    t2  server receives it            (server clock)
    t3  server sends the reply        (server clock)
    t4  client receives the reply     (client clock)

    offset  θ = ((t2 - t1) + (t3 - t4)) / 2     server clock - client clock
    delay   δ = (t4 - t1) - (t3 - t2)           time spent on the wire

Invariant (the reason the bound is sound): with one-way delays d1, d2 >= 0
and a true offset θ* that does not change during the exchange,
θ = θ* + (d1 - d2) / 2 and δ = d1 + d2, so |θ - θ*| <= δ / 2 however
asymmetric the path is.  If the two clocks drift apart at a relative rate of
at most rho (`max_drift`, e.g. 100e-6 for 100 ppm), a sample taken at client
time t1 still bounds the offset at a later client time `now` by
δ / 2 + rho · (now - t1).  A sample with δ < 0, t4 < t1 or t3 < t2 cannot
come from real clocks and a real network; it is rejected, never clamped.

Of several samples the estimator keeps the one with the smallest bound at
`now` (with rho = 0: the smallest delay, Cristian's rule), because a short
round trip leaves the least room for asymmetry.

`OffsetEstimator` is sans-IO (samples and `now` in, estimates out);
`estimate_offset` is the thin async loop that takes the samples through an
injected probe, so it runs under trio or any other event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


def relative_drift_bound(rho: float) -> float:
    """The `max_drift` to use when each clock's rate is within [1-rho, 1+rho]
    of true time (`LeaseConfig.drift_bound`): the offset then changes by at
    most (2 rho / (1 - rho)) per unit of the client's clock."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho is a rate error in [0, 1), got {rho}")
    return 2 * rho / (1 - rho)


class NoValidSample(Exception):
    """Every sample offered so far was impossible (or none was offered)."""


@dataclass(frozen=True, slots=True)
class OffsetSample:
    """The four readings of one request/reply exchange."""

    t1: int  # client send (client clock)
    t2: int  # server receive (server clock)
    t3: int  # server send (server clock)
    t4: int  # client receive (client clock)

    @property
    def offset(self) -> float:
        """θ: add to a client reading to get the server's reading."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def delay(self) -> int:
        """δ: the round trip minus the server's processing time."""
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    def is_possible(self) -> bool:
        """False for readings no real clocks and network could produce."""
        return self.t4 >= self.t1 and self.t3 >= self.t2 and self.delay >= 0

    def error_bound(self, now: int, max_drift: float) -> float:
        """The bound on |θ - true offset at client time `now`| (module docstring)."""
        return self.delay / 2 + max_drift * max(0, now - self.t1)


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    """The best current knowledge of the server's clock relative to ours.

    The true offset lies in [offset - error_bound, offset + error_bound].
    """

    offset: float  # θ of the chosen sample
    delay: int  # δ of the chosen sample
    error_bound: float  # δ/2 plus drift since the sample, at `at`
    at: int  # the client time the bound was computed for
    accepted: int  # samples in the window that were possible
    rejected: int  # impossible samples seen in total

    @property
    def low(self) -> float:
        return self.offset - self.error_bound

    @property
    def high(self) -> float:
        return self.offset + self.error_bound

    def contains(self, true_offset: float) -> bool:
        return self.low <= true_offset <= self.high

    def remote_to_local(self, remote_time: float) -> tuple[float, float]:
        """The interval of our clock's readings at which the server's clock reads
        `remote_time`: (earliest, latest).  A lease holder stops at `earliest`;
        a grantor waiting for a lease to lapse waits past `latest`."""
        return remote_time - self.high, remote_time - self.low


class OffsetEstimator:
    """Keeps the last `window` possible samples; picks the one with the least bound."""

    __slots__ = ("_max_drift", "_rejected", "_samples")

    def __init__(self, window: int = 8, max_drift: float = 0.0) -> None:
        if window < 1:
            raise ValueError("the sample window holds at least one sample")
        if not 0.0 <= max_drift < 1.0:
            raise ValueError(f"max_drift is a rate in [0, 1), got {max_drift}")
        self._max_drift = max_drift  # rho: bound on the clocks' relative drift rate
        self._samples: deque[OffsetSample] = deque(maxlen=window)  # newest last
        self._rejected = 0  # impossible samples seen since construction

    @property
    def rejected(self) -> int:
        return self._rejected

    def add(self, sample: OffsetSample) -> bool:
        """Offer one exchange; return whether it was kept (possible)."""
        if not sample.is_possible():
            self._rejected += 1
            return False
        self._samples.append(sample)
        return True

    def estimate(self, now: int) -> OffsetEstimate:
        """The estimate valid at client time `now`; raise NoValidSample if none."""
        if not self._samples:
            raise NoValidSample(f"no possible sample (rejected {self._rejected})")
        best = min(self._samples, key=lambda s: (s.error_bound(now, self._max_drift), -s.t1))
        return OffsetEstimate(
            offset=best.offset,
            delay=best.delay,
            error_bound=best.error_bound(now, self._max_drift),
            at=now,
            accepted=len(self._samples),
            rejected=self._rejected,
        )


async def estimate_offset(
    probe: Callable[[], Awaitable[tuple[int, int]]],
    local_clock: Callable[[], int],
    samples: int,
    *,
    max_drift: float = 0.0,
) -> OffsetEstimate:
    """Run `samples` exchanges one after another and return the best estimate.

    `probe` asks the peer for (t2, t3), its receive and send readings; its
    errors (timeouts included) propagate, since retry policy belongs to the
    RPC layer.  `local_clock` must be the same clock later used with the
    estimate (a monotonic one for leases).  Raises NoValidSample when every
    exchange was impossible.
    """
    if samples < 1:
        raise ValueError("take at least one sample")
    estimator = OffsetEstimator(window=samples, max_drift=max_drift)
    for _ in range(samples):
        t1 = local_clock()
        t2, t3 = await probe()
        t4 = local_clock()
        estimator.add(OffsetSample(t1, t2, t3, t4))
    return estimator.estimate(local_clock())
