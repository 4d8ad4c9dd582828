"""The leader's soft state of chunk servers: liveness, placement, what to record."""

from __future__ import annotations

from fs.meta.commands import ServerState
from fs.meta.liveness import Liveness, LivenessConfig
from fs.meta.protocol import Heartbeat
from fs.meta.state import ServerRec
from fs.types import CHUNK_SIZE, ServerId

GiB = 1 << 30
CFG = LivenessConfig(dead_after=5.0, free_interval=30.0, free_jump=0.05)


def hb(sid: int, free_gib: int, full: bool = False, address: str = "") -> Heartbeat:
    return Heartbeat(ServerId(sid), address or f"h:{sid}", 100 * GiB, free_gib * GiB, (), full)


def test_a_server_is_live_until_dead_after_seconds_of_silence() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(1.0, hb(1, 50))
    assert lv.live(6.0) == (ServerId(1),)
    assert lv.live(6.1) == ()


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


def test_a_new_leader_is_warming_up_until_a_heartbeat_or_the_dead_timeout() -> None:
    lv = Liveness(CFG)
    lv.lead(10.0)
    assert lv.warming_up(11.0)
    assert not lv.warming_up(15.1)  # long enough: an empty cluster really is empty
    lv.heartbeat(15.5, hb(1, 5))
    assert not lv.warming_up(15.5)


def test_full_reports_are_asked_for_until_one_arrives() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    assert lv.heartbeat(0.0, hb(1, 5)) is True
    assert lv.heartbeat(1.0, hb(1, 5, full=True)) is False
    assert lv.heartbeat(2.0, hb(1, 5)) is False
    lv.step_down()
    lv.lead(3.0)
    assert lv.heartbeat(3.0, hb(1, 5)) is True  # a new term starts from nothing


def test_updates_record_new_changed_dead_and_drifted_servers() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(0.0, hb(1, 50))
    lv.heartbeat(0.0, hb(2, 50))
    recorded = {ServerId(2): ServerRec(ServerId(2), "h:2", 100 * GiB, 50 * GiB, True),
                ServerId(3): ServerRec(ServerId(3), "h:3", 100 * GiB, 1 * GiB, True)}
    assert lv.updates(1.0, recorded) == [
        ServerState(ServerId(1), "h:1", 100 * GiB, 50 * GiB, True)]  # new; 3 not yet dead
    assert lv.updates(6.0, recorded) == [
        ServerState(ServerId(1), "h:1", 100 * GiB, 50 * GiB, False),  # silent since 0.0
        ServerState(ServerId(2), "h:2", 100 * GiB, 50 * GiB, False),
        ServerState(ServerId(3), "h:3", 100 * GiB, 1 * GiB, False),  # never heard, recorded alive
    ]


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
    lv.heartbeat(40.0, hb(1, 49))
    assert len(lv.updates(40.0, rec)) == 1  # old enough


def test_info_lists_heard_and_recorded_servers() -> None:
    lv = Liveness(CFG)
    lv.lead(0.0)
    lv.heartbeat(0.0, hb(1, 5))
    rec = {ServerId(2): ServerRec(ServerId(2), "h:2", 7, 3, True)}
    info = lv.info(2.0, rec)
    assert [(i.server, i.alive, i.silent_for) for i in info] == [
        (ServerId(1), True, 2.0), (ServerId(2), False, -1.0)]
