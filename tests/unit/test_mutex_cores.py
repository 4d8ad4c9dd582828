"""The three mutual-exclusion cores, event by event, with their exact effects.

Each test names the rule of the chapter (or of the lease design) it checks.
"""

from __future__ import annotations

import dataclasses

import pytest

from coord.mutex.centralized import Centralized
from coord.mutex.messages import (
    CGrant,
    CQuery,
    CRelease,
    CRequest,
    CState,
    RaReply,
    RaRequest,
    RingEpoch,
    RingToken,
)
from coord.mutex.ricart import LEFT_OUT_MARGIN, RicartAgrawala
from coord.mutex.ring import TokenRing
from coord.mutex.types import (
    INITIAL_EPOCH,
    OWNER_SPAN,
    Effect,
    Enter,
    Epoch,
    LeaseOver,
    LockName,
    MutexConfig,
    MutexConfigError,
    NodeId,
    Send,
    token_text,
)

L = LockName("L")
# Events in these tests are far apart: only the pause test uses a short pause_gap.
CFG = MutexConfig(lease=10.0, epsilon=1.0, max_delay=1.0, loss_timeout=5.0, idle_pass=0.5,
                  request_retry=20.0, pause_gap=100.0)
IDS = [NodeId(i) for i in (1, 2, 3)]
n1, n2, n3 = IDS


def sends(effects: list[Effect]) -> list[tuple[int, object]]:
    return [(e.to, e.msg) for e in effects if isinstance(e, Send)]


def entered(effects: list[Effect]) -> bool:
    return any(isinstance(e, Enter) for e in effects)


# ----------------------------------------------------------------------------- config, epochs


def test_config_rejects_a_lease_shorter_than_its_margins() -> None:
    with pytest.raises(MutexConfigError):
        MutexConfig(lease=1.0, epsilon=0.5).validate()
    with pytest.raises(MutexConfigError):
        MutexConfig(loss_timeout=0.1, idle_pass=0.1, max_delay=0.5).validate()
    assert CFG.recovery_wait == 12.0


def test_tokens_of_a_later_epoch_beat_every_token_of_an_earlier_one() -> None:
    old, new = Epoch(3, 2), Epoch(4, 1)
    assert new.token(1) > old.token(10**9)
    assert Epoch(3, 5).token(1) > Epoch(3, 2).token(10**9)  # equal numbers: owner decides
    assert token_text(Epoch(2, 5).token(7)) == "e2.5.7"


# ----------------------------------------------------------------------------- centralized


def test_centralized_request_grant_release_is_three_messages() -> None:
    coord = Centralized(n3, IDS, L, CFG)  # the highest id coordinates
    client = Centralized(n1, IDS, L, CFG)
    assert coord.coordinating and not client.coordinating
    (to, req), = sends(client.want(0.0))
    assert to == n3 and req == CRequest(L, n1, INITIAL_EPOCH, 1)
    (to, grant), = sends(coord.receive(req, 0.5))
    assert to == n1 and isinstance(grant, CGrant) and grant.token == INITIAL_EPOCH.token(1)
    out = client.receive(grant, 1.0)
    assert entered(out) and client.held is not None
    # The lease is timed from the request's send (0.0) plus the time it waited at the
    # coordinator (none: granted as it arrived), not from the grant's arrival (1.0).
    assert grant.waited == 0.0
    assert client.held.expires_at == 0.0 + CFG.lease - CFG.epsilon
    (to, rel), = sends(client.release(2.0))
    assert to == n3 and isinstance(rel, CRelease)
    assert coord.receive(rel, 2.5) == []


def test_centralized_grants_in_fifo_order_one_at_a_time() -> None:
    coord = Centralized(n3, IDS, L, CFG)
    assert len(sends(coord.receive(CRequest(L, n1, INITIAL_EPOCH, 1), 0.0))) == 1
    assert sends(coord.receive(CRequest(L, n2, INITIAL_EPOCH, 1), 0.1)) == []  # queued
    (to, grant), = sends(coord.receive(CRelease(L, n1, INITIAL_EPOCH, INITIAL_EPOCH.token(1)),
                                       1.0))
    assert to == n2 and isinstance(grant, CGrant)
    assert grant.waited == pytest.approx(0.9)  # queued 0.1 -> 1.0: n2's lease runs from then


def test_centralized_moves_on_when_a_lease_expires_unreleased() -> None:
    coord = Centralized(n3, IDS, L, CFG)
    coord.receive(CRequest(L, n1, INITIAL_EPOCH, 1), 0.0)
    coord.receive(CRequest(L, n2, INITIAL_EPOCH, 1), 0.0)
    assert sends(coord.tick(CFG.lease + CFG.epsilon - 0.01)) == []  # n1 may still act
    (to, grant), = sends(coord.tick(CFG.lease + CFG.epsilon))
    assert to == n2 and isinstance(grant, CGrant)


def test_centralized_new_coordinator_asks_everyone_and_waits_before_granting() -> None:
    n2core = Centralized(n2, IDS, L, CFG)
    out = n2core.suspect(n3, 5.0)  # the coordinator is suspected: n2 is the highest left
    queries = sends(out)
    assert [to for to, _ in queries] == [n1, n3]
    assert all(isinstance(m, CQuery) and m.epoch == Epoch(2, 2) for _, m in queries)
    # n1 was waiting: its answer is a request, re-anchored at the answer.
    n1core = Centralized(n1, IDS, L, CFG)
    n1core.want(4.0)
    (_, state), = sends(n1core.receive(queries[0][1], 5.5))
    assert isinstance(state, CState) and state.waiting and n1core.epoch == Epoch(2, 2)
    assert sends(n2core.receive(state, 6.0)) == []  # recovery wait: nothing granted yet
    assert sends(n2core.tick(5.0 + CFG.recovery_wait - 0.01)) == []
    (to, grant), = sends(n2core.tick(5.0 + CFG.recovery_wait))
    assert to == n1 and isinstance(grant, CGrant) and grant.epoch == Epoch(2, 2)
    assert grant.token > INITIAL_EPOCH.token(10**6)
    # The answer (sent at 5.5) waited 11 s at n2 (6.0 -> 17.0): the grant says so, and the
    # lease runs from 5.5 + 11 (less the drift bound), not from the stale answer.
    assert isinstance(grant, CGrant) and grant.waited == pytest.approx(11.0)
    out = n1core.receive(grant, 17.5)
    assert entered(out) and n1core.held is not None
    assert n1core.held.expires_at == pytest.approx(5.5 + 11.0 * (1 - CFG.drift_bound)
                                                   + CFG.lease - CFG.epsilon)


def test_centralized_grant_from_an_older_epoch_is_handed_back() -> None:
    n1core = Centralized(n1, IDS, L, CFG)
    n1core.want(0.0)
    n1core.receive(CQuery(L, n2, Epoch(2, 2)), 0.5)  # adopts epoch 2
    out = n1core.receive(CGrant(L, n3, INITIAL_EPOCH, 2, INITIAL_EPOCH.token(9), 0.0), 1.0)
    assert not entered(out)
    assert sends(out) == [(n3, CRelease(L, n1, INITIAL_EPOCH, INITIAL_EPOCH.token(9)))]


def test_centralized_a_grant_that_arrives_expired_is_not_used() -> None:
    coord = Centralized(n3, IDS, L, CFG)
    client = Centralized(n1, IDS, L, CFG)
    (_, req), = sends(client.want(0.0))
    (_, grant), = sends(coord.receive(req, 0.1))
    out = client.receive(grant, CFG.lease)  # e.g. the client was paused meanwhile
    assert not entered(out) and client.held is None
    kinds = [type(m).__name__ for _, m in sends(out)]
    assert kinds == ["CRelease", "CRequest"]  # give it back, ask again


def test_centralized_older_coordinator_learns_of_a_newer_epoch_and_starts_a_later_one() -> None:
    coord = Centralized(n3, IDS, L, CFG)
    out = coord.receive(CRequest(L, n1, Epoch(2, 2), 5), 1.0)
    assert coord.epoch == Epoch(3, 3)
    assert {to for to, m in sends(out) if isinstance(m, CQuery)} == {n1, n2}


def test_centralized_a_frozen_coordinator_waits_for_its_backlog_and_does_not_count_the_pause(
) -> None:
    cfg = dataclasses.replace(CFG, pause_gap=0.5)
    coord = Centralized(n3, IDS, L, cfg)
    coord.tick(0.0)
    coord.receive(CRequest(L, n1, INITIAL_EPOCH, 1), 0.1)  # granted at once
    coord.receive(CRequest(L, n2, INITIAL_EPOCH, 1), 0.2)  # queued
    coord.tick(0.3)
    # Frozen from 0.3 to 30: n1's lease ran out meanwhile.  Waking up, the coordinator
    # first lets messages sent to it while frozen arrive (max_delay) ...
    assert sends(coord.tick(30.0)) == []
    assert sends(coord.tick(30.4)) == sends(coord.tick(30.8)) == []  # awake: ticks < pause_gap
    assert sends(coord.tick(30.0 + cfg.max_delay - 0.01)) == []
    (to, grant), = sends(coord.tick(30.0 + cfg.max_delay))
    # ... and the time frozen is not queueing time: n2's lease runs from its request.
    assert to == n2 and isinstance(grant, CGrant)
    assert grant.waited == pytest.approx(cfg.max_delay)


# ----------------------------------------------------------------------------- Ricart-Agrawala


def test_ra_broadcasts_and_enters_after_n_minus_1_replies() -> None:
    a = RicartAgrawala(n1, IDS, L, CFG)
    out = a.want(0.0)
    reqs = sends(out)
    assert [to for to, _ in reqs] == [n2, n3]
    ts = reqs[0][1].ts  # type: ignore[attr-defined]
    assert not entered(a.receive(RaReply(L, n2, 5, ts), 0.1))
    out = a.receive(RaReply(L, n3, 6, ts), 0.2)
    assert entered(out) and a.held is not None
    assert a.held.expires_at == CFG.lease - CFG.epsilon


def test_ra_replies_at_once_when_neither_inside_nor_wanting_earlier() -> None:
    b = RicartAgrawala(n2, IDS, L, CFG)
    out = b.receive(RaRequest(L, n1, 4), 0.0)
    (to, reply), = sends(out)
    assert to == n1 and isinstance(reply, RaReply) and reply.to_ts == 4


def test_ra_defers_while_inside_and_answers_on_exit() -> None:
    b = RicartAgrawala(n2, [n1, n2], L, CFG)
    (_, req), = sends(b.want(0.0))
    assert entered(b.receive(RaReply(L, n1, 3, req.ts), 0.1))  # type: ignore[attr-defined]
    assert b.held is not None
    token = b.held.token
    assert sends(b.receive(RaRequest(L, n1, 9), 0.2)) == []  # inside: deferred
    (to, reply), = sends(b.release(0.3))
    assert to == n1 and isinstance(reply, RaReply) and reply.to_ts == 9
    assert reply.highest == token  # the next holder's token will be above ours


def test_ra_ties_go_to_the_earlier_timestamp_then_the_lower_id() -> None:
    b = RicartAgrawala(n2, [n1, n2, n3, NodeId(4)], L, CFG)
    b.receive(RaRequest(L, n1, 5), 0.0)  # (answered at once: b wants nothing yet)
    reqs = sends(b.want(0.0))
    mine = reqs[0][1].ts  # type: ignore[attr-defined]
    assert mine == 8  # observed 5, replied (6, 7), asked (8)
    assert sends(b.receive(RaRequest(L, n3, mine), 0.1)) == []  # same ts, higher id: wait
    assert len(sends(b.receive(RaRequest(L, n1, mine), 0.1))) == 1  # lower id: reply
    assert len(sends(b.receive(RaRequest(L, NodeId(4), mine - 1), 0.1))) == 1  # earlier ts
    # A request overtaken by a later one of the same peer (reordered) is stale.
    assert sends(b.receive(RaRequest(L, n1, 5), 0.2)) == []


def test_ra_a_suspected_peer_is_left_out_only_when_no_lease_of_it_can_run() -> None:
    a = RicartAgrawala(n1, [n1, n2], L, CFG)
    a.receive(RaRequest(L, n2, 1), 0.0)  # heard n2's request at 0.0: it may hold until ~9
    assert len(sends(a.want(0.5))) == 1
    assert not entered(a.suspect(n2, 2.0))
    assert a.next_wakeup(2.0) == 0.0 + CFG.lease + CFG.epsilon  # when n2 may be left out
    assert not entered(a.tick(CFG.lease + CFG.epsilon - 0.1))
    out = a.tick(CFG.lease + CFG.epsilon)
    # By then our own request (sent at 0.5) is older than a lease: ask again.
    assert not entered(out) and any(isinstance(m, RaRequest) for _, m in sends(out))
    # The new request must be 2 * max_delay old before we leave n2 out.
    assert not entered(a.tick(CFG.lease + CFG.epsilon + 2 * CFG.max_delay - 0.1))
    out = a.tick(CFG.lease + CFG.epsilon + 2 * CFG.max_delay)
    assert entered(out) and a.held is not None
    # Its token is far above n2's last request (n2 may have entered with it).
    assert a.held.token > (1 + LEFT_OUT_MARGIN) * OWNER_SPAN


def test_ra_after_a_freeze_a_peer_is_left_out_only_a_lease_later() -> None:
    cfg = dataclasses.replace(CFG, pause_gap=0.5)
    a = RicartAgrawala(n1, [n1, n2], L, cfg)
    a.tick(0.0)
    assert len(sends(a.want(0.1))) == 1
    a.tick(0.2)
    # Frozen until 50: n2 (which we never heard from) may have left us out and entered.
    a.suspect(n2, 50.0)
    t = 50.0
    while t < 50.0 + cfg.lease + cfg.epsilon - 0.4:  # (ticks closer than pause_gap)
        t += 0.4
        assert not entered(a.tick(t)) and a.wanting
    # A lease after waking up: n2 cannot hold any more, but our request (0.1) is stale.
    out = a.tick(50.0 + cfg.lease + cfg.epsilon)
    assert not entered(out) and any(isinstance(m, RaRequest) for _, m in sends(out))
    t = 50.0 + cfg.lease + cfg.epsilon
    for _ in range(4):
        t += 0.5
        out = a.tick(t)
    assert entered(out)  # 2 * max_delay after asking again


def test_ra_lease_over_releases_and_answers_deferred() -> None:
    a = RicartAgrawala(n1, [n1, n2], L, CFG)
    (_, req), = sends(a.want(0.0))
    a.receive(RaReply(L, n2, 2, req.ts), 0.1)  # type: ignore[attr-defined]
    a.receive(RaRequest(L, n2, 50), 0.2)
    out = a.tick(CFG.lease)
    assert any(isinstance(e, LeaseOver) for e in out)
    assert [type(m).__name__ for _, m in sends(out)] == ["RaReply"]


# ----------------------------------------------------------------------------- token ring


def test_ring_only_the_holder_enters_and_passes_on_exit() -> None:
    first = TokenRing(n1, IDS, L, CFG)
    second = TokenRing(n2, IDS, L, CFG)
    assert first.has_token and not second.has_token
    assert second.want(0.0) == []
    out = first.want(0.1)
    assert entered(out)
    (to, tok), = sends(first.release(0.2))
    assert to == n2 and tok == RingToken(L, n1, INITIAL_EPOCH, 1)
    out = second.receive(tok, 0.3)
    assert entered(out) and second.held is not None
    assert second.held.token == INITIAL_EPOCH.token(2)


def test_ring_idle_node_keeps_the_token_briefly_then_passes_skipping_suspects() -> None:
    first = TokenRing(n1, IDS, L, CFG)
    first.suspect(n2, 0.0)
    assert sends(first.tick(CFG.idle_pass - 0.01)) == []
    (to, _), = sends(first.tick(CFG.idle_pass))
    assert to == n3


def test_ring_late_token_after_a_pause_is_passed_without_entering() -> None:
    second = TokenRing(n2, IDS, L, CFG)
    second.want(0.0)
    out = second.receive(RingToken(L, n1, INITIAL_EPOCH, 4), CFG.lease)  # anchor 0 is stale
    assert not entered(out)
    (to, tok), = sends(out)
    assert to == n3 and isinstance(tok, RingToken)


def test_ring_lost_token_is_regenerated_by_the_leader_after_the_recovery_wait() -> None:
    third = TokenRing(n3, IDS, L, CFG)
    second = TokenRing(n2, IDS, L, CFG)
    assert sends(second.tick(CFG.loss_timeout + 1)) == []  # not the leader
    out = third.tick(CFG.loss_timeout + 1)
    announced = sends(out)
    assert [to for to, _ in announced] == [n1, n2]
    epoch = Epoch(2, 3)
    assert all(m == RingEpoch(L, n3, epoch) for _, m in announced)
    assert sends(third.tick(CFG.loss_timeout + 1 + CFG.recovery_wait - 0.01)) == []
    third.want(CFG.loss_timeout + 2)
    out = third.tick(CFG.loss_timeout + 1 + CFG.recovery_wait)
    # Its anchor is the announcement, older than a lease by now: pass, enter next round.
    assert [to for to, _ in sends(out)] == [n1]


def test_ring_tokens_of_an_older_epoch_are_discarded() -> None:
    second = TokenRing(n2, IDS, L, CFG)
    second.receive(RingEpoch(L, n3, Epoch(2, 3)), 1.0)
    second.want(1.0)
    out = second.receive(RingToken(L, n1, INITIAL_EPOCH, 7), 1.5)
    assert not entered(out) and sends(out) == [] and not second.has_token
    assert entered(second.receive(RingToken(L, n1, Epoch(2, 3), 0), 2.0))
