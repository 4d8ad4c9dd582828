"""Failure detection in the leader's liveness core, with both coord.failure detectors.

Scenarios in simulated time (sans-IO: every call takes `now`): regular
heartbeats raise no suspicion; a pause is suspected with the detector's
reason; resumed heartbeats recover the server with the length of the gap;
a suspicion that lasts `dead_after` becomes a death that `updates()`
records, and a heartbeat restores it; a slow server with jittery heartbeats
and GC-like pauses is suspected now and then but never recorded dead; a new
leader starts without history and suspects nobody during its grace period.
"""

from __future__ import annotations

import random
import re

import pytest

from fs.meta.commands import ServerState
from fs.meta.liveness import (
    Died,
    Liveness,
    LivenessConfig,
    LivenessEvent,
    Recovered,
    ServerStatus,
    Suspected,
)
from fs.meta.protocol import Heartbeat
from fs.meta.state import ServerRec
from fs.types import ServerId

GiB = 1 << 30
PHI = LivenessConfig(detector="phi", dead_after=15.0, grace=5.0)
TIMEOUT = LivenessConfig(detector="timeout", suspect_after=3.0, dead_after=15.0, grace=5.0)
CONFIGS = pytest.mark.parametrize("cfg", [PHI, TIMEOUT], ids=["phi", "timeout"])
S1, S2 = ServerId(1), ServerId(2)


def hb(sid: ServerId) -> Heartbeat:
    return Heartbeat(sid, f"h:{sid}", 100 * GiB, 50 * GiB)


def rec(sid: ServerId, alive: bool = True) -> ServerRec:
    return ServerRec(sid, f"h:{sid}", 100 * GiB, 50 * GiB, alive)


class World:
    """One leader's Liveness with a clock; collects every event it reports."""

    def __init__(self, cfg: LivenessConfig, start: float = 0.0) -> None:
        self.lv = Liveness(cfg)
        self.now = start
        self.lv.lead(start)
        self.events: list[LivenessEvent] = []

    def beat(self, *servers: ServerId) -> None:
        for sid in servers:
            self.lv.heartbeat(self.now, hb(sid))
        self.events += self.lv.take_events()

    def advance(self, seconds: float, *beating: ServerId, every: float = 1.0) -> None:
        """Let `seconds` pass with `beating` servers sending a heartbeat every `every` s,
        the leader polling every 0.5 s (its tick)."""
        end = self.now + seconds
        next_beat = self.now + every
        for _ in range(100_000):  # bounded
            step = min(next_beat, self.now + 0.5, end)
            self.now = step
            if step == next_beat:
                self.beat(*beating)
                next_beat += every
            self.lv.poll(self.now)
            self.events += self.lv.take_events()
            if self.now >= end:
                return
        raise AssertionError("advance did not finish")

    def of(self, kind: type) -> list[LivenessEvent]:
        return [e for e in self.events if isinstance(e, kind)]


def _settled(cfg: LivenessConfig) -> World:
    """A leader past its grace period with S1 and S2 beating every second for 60 s."""
    w = World(cfg)
    w.beat(S1, S2)
    w.advance(60.0, S1, S2)
    return w


@CONFIGS
def test_regular_heartbeats_raise_no_suspicion(cfg: LivenessConfig) -> None:
    w = _settled(cfg)
    w.advance(600.0, S1, S2)
    assert w.events == []
    assert w.lv.live(w.now) == (S1, S2)
    assert w.lv.status(S1) is ServerStatus.ALIVE


@CONFIGS
def test_a_pause_is_suspected_with_the_detectors_reason(cfg: LivenessConfig) -> None:
    w = _settled(cfg)
    w.advance(6.0, S1)  # S2 falls silent
    (suspect,) = w.events
    assert isinstance(suspect, Suspected) and suspect.server == S2
    if cfg.detector == "phi":
        m = re.match(r"phi (\d+\.\d+) > threshold 8\.00 \(silent (\d+\.\d+) s", suspect.reason)
        assert m is not None, suspect.reason
        assert float(m.group(1)) > 8.0 and 2.0 < float(m.group(2)) < 4.0
    else:
        m = re.match(r"no heartbeat for (\d+\.\d+) s > timeout 3\.000 s", suspect.reason)
        assert m is not None and 3.0 < float(m.group(1)) <= 3.5, suspect.reason
    assert w.lv.status(S2) is ServerStatus.SUSPECTED
    assert w.lv.live(w.now) == (S1,)
    view = {v.server: v for v in w.lv.view(w.now, {})}
    assert view[S2].state == "suspected" and view[S2].reason == suspect.reason
    assert view[S2].suspected_for == pytest.approx(w.now - suspect.at)
    if cfg.detector == "phi":
        assert view[S2].phi > cfg.phi_threshold > view[S1].phi
    else:
        assert view[S2].phi == -1.0


@CONFIGS
def test_resumed_heartbeats_recover_the_server_at_once(cfg: LivenessConfig) -> None:
    w = _settled(cfg)
    w.advance(6.0, S1)
    assert [type(e) for e in w.events] == [Suspected]
    w.beat(S2)  # recovery is judged at the heartbeat, not at the next tick
    recover = w.events[-1]
    assert isinstance(recover, Recovered) and recover.server == S2 and not recover.was_dead
    assert recover.at == w.now
    m = re.match(r"heartbeat after (\d+\.\d+) s; ", recover.reason)
    assert m is not None and float(m.group(1)) == pytest.approx(6.0, abs=0.05), recover.reason
    assert w.lv.live(w.now) == (S1, S2)
    w.advance(120.0, S1, S2)
    assert len(w.events) == 2  # reported once each, nothing since


@CONFIGS
def test_a_lasting_suspicion_is_recorded_dead_and_a_heartbeat_restores_it(
    cfg: LivenessConfig,
) -> None:
    w = _settled(cfg)
    last_heard = w.now
    recorded = {S1: rec(S1), S2: rec(S2)}
    assert w.lv.updates(w.now, recorded) == []
    w.advance(14.0, S1)  # suspected for most of it, silent 14 s < dead_after
    assert [type(e) for e in w.events] == [Suspected]
    assert w.lv.updates(w.now, recorded) == []  # suspicion alone records nothing
    w.advance(1.5, S1)
    assert [type(e) for e in w.events] == [Suspected, Died]
    died = w.events[-1]
    assert died.server == S2 and died.at - last_heard == pytest.approx(15.0, abs=0.5)
    assert "dead timeout 15.0 s" in died.reason
    assert w.lv.updates(w.now, recorded) == [ServerState(S2, "h:2", 100 * GiB, 50 * GiB, False)]
    assert w.lv.holders(w.now, recorded) == (S1,)
    recorded[S2] = rec(S2, alive=False)  # the leader command was applied
    w.advance(30.0, S1)
    assert len(w.events) == 2  # a death is reported once
    w.beat(S2)
    back = w.events[-1]
    assert isinstance(back, Recovered) and back.was_dead
    assert w.lv.updates(w.now, recorded) == [ServerState(S2, "h:2", 100 * GiB, 50 * GiB, True)]
    assert w.lv.live(w.now) == (S1, S2)


def test_after_a_recovery_a_crash_is_suspected_as_quickly_as_before() -> None:
    """The outage is not fed to phi as an interval: otherwise the next crash would
    be judged against a window with a 10 s sample in it (~7 s to suspect)."""
    w = _settled(PHI)
    w.advance(10.0, S1)
    w.beat(S2)
    assert [type(e) for e in w.events] == [Suspected, Recovered]
    w.advance(10.0, S1, S2)
    last = w.now
    w.advance(8.0, S1)
    suspect = w.events[-1]
    assert isinstance(suspect, Suspected) and suspect.server == S2
    assert suspect.at - last <= 4.0, suspect.reason  # fresh history: ~3.1 s, as at first


def _jittery_intervals(rng: random.Random, n: int) -> list[float]:
    """A slow, overloaded server: intervals 0.5-2 s, and one in 20 a stall of 4-9 s."""
    out = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(rng.uniform(4.0, 9.0))
        else:
            out.append(rng.uniform(0.5, 2.0))
    return out


@CONFIGS
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_slow_server_with_jittery_heartbeats_is_never_recorded_dead(
    cfg: LivenessConfig, seed: int
) -> None:
    w = World(cfg)
    recorded = {S1: rec(S1)}
    w.beat(S1)
    for gap in _jittery_intervals(random.Random(seed), 1500):
        target = w.now + gap
        for _ in range(100):  # the leader's ticks while waiting for the next heartbeat
            w.now = min(w.now + 0.5, target)
            assert w.lv.updates(w.now, recorded) == [], f"recorded dead at {w.now}"
            w.events += w.lv.take_events()
            if w.now >= target:
                break
        w.beat(S1)
    assert w.of(Died) == []
    suspicions = w.of(Suspected)
    assert suspicions, "no stall was ever suspected: the test lost its teeth"
    # Every false suspicion was followed by a recovery at the next heartbeat.
    assert len(w.of(Recovered)) == len(suspicions)
    assert w.lv.status(S1) is ServerStatus.ALIVE


def test_phi_adapts_to_a_slow_rhythm_where_the_timeout_detector_does_not() -> None:
    """A server beating every 4 s (a loaded host, a long interval): the timeout
    detector suspects it at every beat, phi learns the rhythm."""
    counts = {}
    for cfg in (PHI, TIMEOUT):
        w = World(cfg)
        w.beat(S1)
        w.advance(400.0, S1, every=4.0)
        counts[cfg.detector] = len(w.of(Suspected))
        assert w.of(Died) == []
    assert counts["timeout"] >= 90
    assert counts["phi"] <= 3  # only while it still assumed a 1 s interval


@CONFIGS
def test_a_new_leader_suspects_nobody_during_its_grace_period(cfg: LivenessConfig) -> None:
    old = _settled(cfg)
    old.advance(20.0, S1)  # S2 is dead to the old leader
    assert old.lv.status(S2) is ServerStatus.DEAD
    old.lv.step_down()
    w = World(cfg, start=old.now)  # a new leader: no history at all
    recorded = {S1: rec(S1), S2: rec(S2)}
    assert w.lv.updates(w.now, recorded) == []
    assert w.lv.status(S2) is ServerStatus.WAITING
    w.advance(4.9, S1, S2)  # both find the new leader and beat
    w.advance(60.0, S1, S2)
    assert w.events == []  # not even the first beats (0.9 s after taking over) looked late
    assert w.lv.live(w.now) == (S1, S2)


@CONFIGS
def test_a_server_never_heard_by_a_new_leader_is_suspected_after_the_grace_then_dead(
    cfg: LivenessConfig,
) -> None:
    w = World(cfg, start=100.0)
    recorded = {S1: rec(S1), S2: rec(S2)}
    w.lv.updates(w.now, recorded)
    w.advance(cfg.grace - 0.5, S1)
    assert w.events == [] and w.lv.status(S2) is ServerStatus.WAITING
    assert w.lv.holders(w.now, recorded) == (S1, S2)
    w.advance(1.0, S1)
    (suspect,) = w.events
    assert isinstance(suspect, Suspected) and suspect.server == S2
    assert suspect.reason.startswith("never heard by this leader; ")
    assert suspect.at == pytest.approx(100.0 + cfg.grace, abs=0.5)
    assert w.lv.updates(w.now, recorded) == []
    w.advance(cfg.dead_after - cfg.grace, S1)
    assert [type(e) for e in w.events] == [Suspected, Died]
    assert w.lv.updates(w.now, recorded) == [
        ServerState(S2, "h:2", 100 * GiB, 50 * GiB, False)]


def test_a_server_recorded_dead_by_an_earlier_leader_is_restored_by_a_heartbeat() -> None:
    w = World(PHI)
    recorded = {S1: rec(S1, alive=False)}
    assert w.lv.updates(w.now, recorded) == []
    view = w.lv.view(w.now, recorded)
    assert [(v.state, v.reason) for v in view] == [("dead", "recorded dead by an earlier leader")]
    assert w.lv.holders(w.now, recorded) == ()
    w.advance(30.0)
    assert w.events == []  # nobody watches a server already recorded dead
    w.beat(S1)
    assert w.lv.updates(w.now, recorded) == [ServerState(S1, "h:1", 100 * GiB, 50 * GiB, True)]
    assert w.lv.live(w.now) == (S1,)
