"""TimeoutDetector: suspicion after `timeout` of silence, recovery on the next heartbeat."""

from __future__ import annotations

import pytest

from coord.failure import (
    DetectorConfigError,
    FailureDetector,
    PeerId,
    PhiAccrualDetector,
    PhiConfig,
    Recover,
    Suspect,
    TimeoutConfig,
    TimeoutDetector,
)

P = PeerId("cs-1")
Q = PeerId("cs-2")


def test_suspect_after_timeout_with_reason_then_recover() -> None:
    d = TimeoutDetector(TimeoutConfig(timeout=3.0))
    d.heartbeat(P, 10.0)
    assert d.check(13.0) == []  # exactly at the timeout: not yet
    assert d.check(13.2) == [Suspect(P, 13.2, "no heartbeat for 3.200 s > timeout 3.000 s")]
    assert d.suspected(P)
    assert d.check(14.0) == []  # reported once, not on every check
    d.heartbeat(P, 14.5)
    assert d.check(14.6) == [Recover(P, 14.6, "heard 0.100 s ago <= timeout 3.000 s")]
    assert not d.suspected(P)


def test_regular_heartbeats_never_suspected() -> None:
    d = TimeoutDetector(TimeoutConfig(timeout=1.0))
    for i in range(100):
        d.heartbeat(P, i * 0.5)
        assert d.check(i * 0.5 + 0.49) == []


def test_monitor_starts_the_clock_for_a_silent_peer() -> None:
    d = TimeoutDetector(TimeoutConfig(timeout=1.0))
    d.monitor(P, 0.0)
    d.monitor(P, 5.0)  # re-monitoring does not reset the clock
    assert [type(e) for e in d.check(1.5)] == [Suspect]
    assert list(d.peers()) == [P]
    d.forget(P)
    assert d.check(10.0) == []
    assert not d.suspected(P)


def test_reordered_heartbeat_does_not_move_last_heard_backwards() -> None:
    d = TimeoutDetector(TimeoutConfig(timeout=1.0))
    d.heartbeat(P, 5.0)
    d.heartbeat(P, 4.0)
    assert d.silence(P, 5.5) == pytest.approx(0.5)


def test_events_are_per_peer_and_in_watch_order() -> None:
    d = TimeoutDetector(TimeoutConfig(timeout=1.0))
    d.heartbeat(Q, 0.0)
    d.heartbeat(P, 0.0)
    d.heartbeat(P, 1.0)
    assert [e.peer for e in d.check(1.5)] == [Q]
    assert [e.peer for e in d.check(2.5)] == [P]


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_config_validate(timeout: float) -> None:
    with pytest.raises(DetectorConfigError):
        TimeoutConfig(timeout=timeout).validate()


def test_both_detectors_satisfy_the_protocol() -> None:
    detectors: list[FailureDetector] = [
        TimeoutDetector(TimeoutConfig(timeout=2.0)),
        PhiAccrualDetector(PhiConfig(first_interval=0.5, acceptable_pause=0.0)),
    ]
    for det in detectors:
        for i in range(20):
            det.heartbeat(P, i * 0.5)
        assert det.check(9.6) == []
        events = det.check(30.0)
        assert [type(e) for e in events] == [Suspect], det
        det.heartbeat(P, 30.1)
        assert [type(e) for e in det.check(30.2)] == [Recover], det
