"""The leader's soft state of chunk servers: config, placement, what to record, views.

The failure-detection scenarios (pauses, recoveries, deaths, jitter, new
leaders) are in test_fs_meta_liveness_detect.py."""

from __future__ import annotations

import pytest

from fs.meta.commands import ServerState
from fs.meta.liveness import Liveness, LivenessConfig, ServerStatus
from fs.meta.protocol import Heartbeat
from fs.meta.state import ServerRec
from fs.types import CHUNK_SIZE, ServerId

GiB = 1 << 30
CFG = LivenessConfig(dead_after=5.0, grace=2.0, free_interval=30.0, free_jump=0.05)


def hb(sid: int, free_gib: int, full: bool = False, address: str = "") -> Heartbeat:
    return Heartbeat(ServerId(sid), address or f"h:{sid}", 100 * GiB, free_gib * GiB, (), full)


# --- configuration ------------------------------------------------------------------------------


def test_the_default_config_is_valid_and_the_dead_timeout_outlasts_suspicion() -> None:
    cfg = LivenessConfig().validate()
    assert cfg.detector == "phi"
    assert cfg.dead_after > 3 * cfg.suspect_after  # a death is a long suspicion
    assert cfg.phi_config().threshold == cfg.phi_threshold
    assert cfg.timeout_config().timeout == cfg.suspect_after


@pytest.mark.parametrize("bad", [
    {"detector": "gossip"},
    {"phi_threshold": 0.0},
    {"phi_window": 1},
    {"phi_min_std": -1.0},
    {"suspect_after": float("inf")},
    {"dead_after": 0.0},
    {"grace": -1.0},
    {"free_jump": 1.5},
    {"detector": "timeout", "suspect_after": 10.0, "dead_after": 5.0},  # dead before suspect
    {"phi_pause": 20.0, "dead_after": 5.0},
])
def test_invalid_configs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LivenessConfig(**bad).validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Liveness(LivenessConfig(**bad))  # type: ignore[arg-type]


def test_a_config_table_is_typed_and_checked() -> None:
    cfg = LivenessConfig.from_mapping({"detector": "timeout", "suspect_after": 2,
                                       "dead_after": 30, "phi_window": 50})
    assert cfg == LivenessConfig(detector="timeout", suspect_after=2.0, dead_after=30.0,
                                 phi_window=50)
    assert isinstance(cfg.dead_after, float)
    for table in ({"dead_afterr": 3.0}, {"dead_after": "3"}, {"dead_after": True},
                  {"phi_window": 2.5}, {"detector": 1}, {"dead_after": -1}):
        with pytest.raises(ValueError):
            LivenessConfig.from_mapping(table)


# --- placement ----------------------------------------------------------------------------------


def test_placement_prefers_free_space_and_spreads_between_heartbeats() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    for sid, free in ((1, 10), (2, 30), (3, 20), (4, 30)):
        lv.heartbeat(0.0, hb(sid, free))
    assert lv.placement(0.0, 3) == (ServerId(2), ServerId(4), ServerId(3))  # ties by id
    for _ in range(200):  # each placement charges one chunk to each chosen server
        lv.placement(0.0, 1)
    chosen = lv.placement(0.0, 2)
    assert len(set(chosen)) == 2 and ServerId(1) not in chosen
    assert lv.placement(0.0, 10) == lv.live(0.0)[:4]  # never more than the live ones


def test_placement_charges_a_chunk_of_space() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(0.0, hb(1, 1))
    lv.heartbeat(0.0, Heartbeat(ServerId(2), "h:2", GiB, GiB - CHUNK_SIZE // 2))
    assert lv.placement(0.0, 1) == (ServerId(1),)
    assert lv.placement(0.0, 1) == (ServerId(2),)  # server 1 was charged a chunk


def test_placement_and_leases_avoid_a_suspected_server() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    t = 0.0
    for _ in range(10):  # 1, 2, 3 beat every second; 3 has the most space
        for sid, free in ((1, 10), (2, 20), (3, 90)):
            lv.heartbeat(t, hb(sid, free))
        t += 1.0
    assert lv.placement(t, 3)[0] == ServerId(3)
    for _ in range(4):  # 3 falls silent (last heard at 9.0)
        lv.heartbeat(t, hb(1, 10))
        lv.heartbeat(t, hb(2, 20))
        t += 1.0
    t -= 0.5  # 4.5 s of silence: suspected, not yet dead (5 s)
    lv.poll(t)
    assert lv.status(ServerId(3)) is ServerStatus.SUSPECTED
    assert lv.placement(t, 3) == (ServerId(2), ServerId(1))
    assert ServerId(3) not in lv.live(t) and not lv.is_live(t, ServerId(3))
    assert lv.holders(t, {}) == (ServerId(1), ServerId(2), ServerId(3))  # replicas still count
    info = {i.server: i.alive for i in lv.info(t, {})}
    assert info == {ServerId(1): True, ServerId(2): True, ServerId(3): False}


def test_a_new_leader_is_warming_up_until_a_heartbeat_or_the_grace_period_ends() -> None:
    lv = Liveness(CFG)
    lv.lead(10.0)
    assert lv.warming_up(11.0)
    assert lv.grace_left(11.0) == pytest.approx(1.0)
    assert not lv.warming_up(12.1)  # long enough: an empty cluster really is empty
    assert lv.grace_left(12.1) == 0.0
    lv.heartbeat(12.5, hb(1, 5))
    assert not lv.warming_up(12.5)
    lv.step_down()
    assert lv.warming_up(13.0) and not lv.leading


def test_a_new_leader_waits_for_every_recorded_server_before_placing() -> None:
    # Placing on the first server heard would give a chunk one replica for good.
    lv = Liveness(CFG)
    lv.lead(10.0)
    lv.watch({ServerId(i): ServerRec(ServerId(i), f"h:{i}", 100 * GiB, 50 * GiB, True)
              for i in (1, 2, 3)})
    lv.heartbeat(10.2, hb(1, 5))
    assert lv.warming_up(10.3)  # 2 and 3 are recorded alive and not heard yet
    lv.heartbeat(10.4, hb(2, 5))
    assert lv.warming_up(10.5)
    lv.heartbeat(10.6, hb(3, 5))
    assert not lv.warming_up(10.7)
    assert len(lv.placement(10.7, 3)) == 3


def test_a_recorded_server_that_stays_silent_delays_placement_only_for_the_grace() -> None:
    lv = Liveness(CFG)
    lv.lead(10.0)
    lv.watch({ServerId(i): ServerRec(ServerId(i), f"h:{i}", 100 * GiB, 50 * GiB, True)
              for i in (1, 2)})
    lv.heartbeat(10.2, hb(1, 5))
    assert lv.warming_up(11.0)
    assert not lv.warming_up(12.1)  # grace over: place on what is there
    assert lv.placement(12.1, 3) == (ServerId(1),)


def test_full_reports_are_asked_for_until_one_arrives() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    assert lv.heartbeat(0.0, hb(1, 5)) is True
    assert lv.heartbeat(1.0, hb(1, 5, full=True)) is False
    assert lv.heartbeat(2.0, hb(1, 5)) is False
    lv.step_down()
    assert lv.lead(3.0) is True
    assert lv.lead(3.5) is False  # idempotent
    assert lv.heartbeat(3.0, hb(1, 5)) is True  # a new term starts from nothing


# --- what to record -----------------------------------------------------------------------------


def test_updates_record_new_and_changed_servers_at_once() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(0.0, hb(1, 50))
    lv.heartbeat(0.0, hb(2, 50, address="new:2"))
    recorded = {ServerId(2): ServerRec(ServerId(2), "h:2", 100 * GiB, 50 * GiB, True)}
    assert lv.updates(1.0, recorded) == [
        ServerState(ServerId(1), "h:1", 100 * GiB, 50 * GiB, True),
        ServerState(ServerId(2), "new:2", 100 * GiB, 50 * GiB, True)]


def test_updates_never_record_a_merely_suspected_server_dead() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    rec = {ServerId(1): ServerRec(ServerId(1), "h:1", 100 * GiB, 50 * GiB, True)}
    lv.heartbeat(0.0, hb(1, 50))
    assert lv.updates(0.0, rec) == []
    lv.poll(4.0)
    assert lv.status(ServerId(1)) is ServerStatus.SUSPECTED  # after the 2 s grace
    assert lv.updates(4.9, rec) == []  # silent 4.9 s < dead_after 5 s: still recorded alive
    assert lv.updates(5.0, rec) == [ServerState(ServerId(1), "h:1", 100 * GiB, 50 * GiB, False)]


def test_free_space_updates_are_rate_limited_unless_they_jump() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    rec = {ServerId(1): ServerRec(ServerId(1), "h:1", 100 * GiB, 50 * GiB, True)}
    lv.heartbeat(0.0, hb(1, 49))  # 1% moved
    assert len(lv.updates(0.0, rec)) == 1  # never recorded by this leader: stale at once
    lv.heartbeat(1.0, hb(1, 48))
    assert lv.updates(1.0, rec) == []  # small and recent
    lv.heartbeat(2.0, hb(1, 40))  # 10% moved
    assert lv.updates(2.0, rec) == [ServerState(ServerId(1), "h:1", 100 * GiB, 40 * GiB, True)]
    for t in range(3, 41):  # keep it alive meanwhile
        lv.heartbeat(float(t), hb(1, 40))
    lv.heartbeat(40.0, hb(1, 49))
    assert len(lv.updates(40.0, rec)) == 1  # old enough


def test_info_and_view_list_heard_waiting_and_recorded_dead_servers() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(0.0, hb(1, 5))
    rec = {ServerId(2): ServerRec(ServerId(2), "h:2", 7, 3, True),
           ServerId(3): ServerRec(ServerId(3), "h:3", 7, 3, False)}
    info = lv.info(1.0, rec)
    assert [(i.server, i.alive, i.silent_for) for i in info] == [
        (ServerId(1), True, 1.0), (ServerId(2), False, -1.0), (ServerId(3), False, -1.0)]
    view = {v.server: v for v in lv.view(1.0, rec)}
    assert [(v.state, v.silent_for, v.suspected_for, v.recorded_alive) for v in view.values()] == [
        ("alive", 1.0, -1.0, False), ("waiting", -1.0, -1.0, True), ("dead", -1.0, -1.0, False)]
    assert 0.0 <= view[ServerId(1)].phi < CFG.phi_threshold
    assert lv.holders(1.0, rec) == (ServerId(1), ServerId(2))  # 3 was recorded dead
