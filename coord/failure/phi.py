"""The phi-accrual failure detector (Hayashibara, Defago, Yared, Katayama, SRDS 2004).

Instead of a yes/no timeout it outputs a suspicion level

    phi(t) = -log10(P_later(t - t_last)),

the (base-10 log) improbability that a heartbeat would still arrive after
this much silence, judged from the peer's recent inter-arrival times.  We
model the inter-arrival time as normal with the window's mean plus an
`acceptable_pause` and its std-dev (never below `min_std`), so

    P_later(s) = 1 - Phi((s - mean - acceptable_pause) / std) = erfc(z / sqrt 2) / 2.

phi = 8 means "one chance in 10^8 that this peer is merely slow, if the
heartbeat process is as regular as it has been".  A peer is suspected when
phi exceeds `threshold`.

Invariants:

* Per peer, the window holds the last `window` inter-arrival times (every
  interval is recorded, as in the paper, so a long outage makes the
  detector more patient for a while after it).
* Until a peer has produced two intervals, `first_interval` stands in for the
  mean and a quarter of it for the std-dev (a prior for a fresh peer).
* phi is finite, >= 0 and non-decreasing in the silence for fixed statistics
  (the tail is computed in log space where erfc would underflow).
* `check(now)` reports only changes of opinion, in first-watched order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from coord.failure.timeout import DetectorConfigError
from coord.failure.types import DetectorEvent, PeerId, Recover, Suspect

_LN10 = math.log(10.0)
_ERFC_SAFE = 25.0  # erfc(x) is representable (> 1e-280) below this x


@dataclass(frozen=True, slots=True)
class PhiConfig:
    threshold: float = 8.0  # suspect when phi exceeds this
    window: int = 100  # inter-arrival samples kept per peer
    min_std: float = 0.1  # seconds; keeps a very regular peer from looking dead on a tiny jitter
    acceptable_pause: float = 0.5  # seconds of extra silence tolerated (GC, scheduling)
    first_interval: float = 1.0  # prior heartbeat interval for a peer with < 2 samples

    def validate(self) -> PhiConfig:
        if not math.isfinite(self.threshold) or self.threshold <= 0:
            raise DetectorConfigError(f"threshold must be > 0, got {self.threshold}")
        if self.window < 2:
            raise DetectorConfigError(f"window must hold >= 2 samples, got {self.window}")
        if not math.isfinite(self.min_std) or self.min_std <= 0:
            raise DetectorConfigError(f"min_std must be > 0, got {self.min_std}")
        if not math.isfinite(self.acceptable_pause) or self.acceptable_pause < 0:
            raise DetectorConfigError(f"acceptable_pause must be >= 0, got {self.acceptable_pause}")
        if not math.isfinite(self.first_interval) or self.first_interval <= 0:
            raise DetectorConfigError(f"first_interval must be > 0, got {self.first_interval}")
        return self


def phi(silence: float, mean: float, std: float) -> float:
    """-log10 of P(normal(mean, std) > silence); std must be > 0."""
    x = (silence - mean) / (std * math.sqrt(2.0))  # P_later = erfc(x) / 2
    if x < _ERFC_SAFE:
        p_later = 0.5 * math.erfc(x)
        return max(0.0, -math.log10(p_later))
    # Asymptotic tail: ln erfc(x) = -x^2 - ln(x sqrt(pi)) + ln(1 - 1/(2x^2) + ...).
    ln_erfc = -x * x - math.log(x * math.sqrt(math.pi)) + math.log1p(-0.5 / (x * x))
    return -(math.log(0.5) + ln_erfc) / _LN10


@dataclass(slots=True)
class _History:
    """One peer's heartbeat record."""

    last: float  # latest heartbeat (our clock)
    intervals: deque[float]  # recent inter-arrival times
    mean: float = 0.0  # of `intervals` (or the prior), recomputed on each heartbeat
    std: float = 0.0


class PhiAccrualDetector:
    """Adaptive detector: the timeout follows each peer's observed heartbeat rhythm."""

    def __init__(self, config: PhiConfig) -> None:
        self._config = config.validate()
        self._peers: dict[PeerId, _History] = {}
        self._suspected: set[PeerId] = set()

    def monitor(self, peer: PeerId, now: float) -> None:
        if peer not in self._peers:
            hist = _History(now, deque(maxlen=self._config.window))
            self._restat(hist)
            self._peers[peer] = hist

    def forget(self, peer: PeerId) -> None:
        self._peers.pop(peer, None)
        self._suspected.discard(peer)

    def heartbeat(self, peer: PeerId, now: float) -> None:
        hist = self._peers.get(peer)
        if hist is None:
            self.monitor(peer, now)
            return
        if now <= hist.last:
            return  # a duplicate or reordered report carries no interval
        hist.intervals.append(now - hist.last)
        hist.last = now
        self._restat(hist)

    def suspected(self, peer: PeerId) -> bool:
        return peer in self._suspected

    def peers(self) -> Iterable[PeerId]:
        return tuple(self._peers)

    def phi(self, peer: PeerId, now: float) -> float:
        """The current suspicion level of `peer`."""
        hist = self._peers[peer]
        return phi(now - hist.last, hist.mean + self._config.acceptable_pause, hist.std)

    def stats(self, peer: PeerId) -> tuple[float, float]:
        """(mean, std) of `peer`'s inter-arrival times as used by `phi`."""
        hist = self._peers[peer]
        return hist.mean, hist.std

    def check(self, now: float) -> list[DetectorEvent]:
        threshold = self._config.threshold
        events: list[DetectorEvent] = []
        for peer, hist in self._peers.items():
            level = self.phi(peer, now)
            if level > threshold and peer not in self._suspected:
                self._suspected.add(peer)
                reason = (
                    f"phi {level:.2f} > threshold {threshold:.2f} (silent "
                    f"{now - hist.last:.3f} s; mean interval {hist.mean:.3f} s, "
                    f"std {hist.std:.3f} s, pause allowance {self._config.acceptable_pause:.3f} s)"
                )
                events.append(Suspect(peer, now, reason))
            elif level <= threshold and peer in self._suspected:
                self._suspected.discard(peer)
                reason = f"phi {level:.2f} <= threshold {threshold:.2f} (heartbeats resumed)"
                events.append(Recover(peer, now, reason))
        return events

    def _restat(self, hist: _History) -> None:
        samples = hist.intervals
        if len(samples) < 2:
            hist.mean = self._config.first_interval
            hist.std = max(self._config.first_interval / 4, self._config.min_std)
            return
        mean = math.fsum(samples) / len(samples)
        var = math.fsum((s - mean) ** 2 for s in samples) / len(samples)
        hist.mean = mean
        hist.std = max(math.sqrt(var), self._config.min_std)
