"""The Ring core, one rule per test, asserting the exact effects (chapter 8.3.3)."""

from __future__ import annotations

import pytest

from coord.election import (
    ElectionConfig,
    LeaderChanged,
    NodeId,
    RingCoordinator,
    RingElection,
    RingNode,
    RingPhase,
    Send,
)

RING = [NodeId(i) for i in (1, 2, 3, 4, 5)]
CFG = ElectionConfig(ok_timeout=1.0, coordinator_timeout=3.0, ring_timeout=5.0)
n1, n2, n3, n4, n5 = RING


def node(i: int) -> RingNode:
    return RingNode(NodeId(i), RING, CFG)


def test_start_sends_own_id_to_successor() -> None:
    n = node(3)
    assert n.start_election(0.0) == [Send(n4, RingElection(n3, n3, 1, (n3,)))]
    assert n.phase is RingPhase.ELECTING and n.next_deadline() == 5.0


def test_forward_appends_own_id() -> None:
    n = node(5)
    out = n.step(RingElection(n4, n3, 1, (n3, n4)), 0.0)
    assert out == [Send(n1, RingElection(n5, n3, 1, (n3, n4, n5)))]  # wraps round
    assert n.phase is RingPhase.PARTICIPATING


def test_dead_successor_is_skipped() -> None:
    n = node(3)
    n.suspect(n4, 0.0)
    assert n.successor(0.0) == n5
    assert n.start_election(0.0) == [Send(n5, RingElection(n3, n3, 1, (n3,)))]


def test_send_failure_skips_and_resends() -> None:
    n = node(3)
    msg = RingElection(n3, n3, 1, (n3,))
    n.start_election(0.0)
    assert n.send_failed(msg, n4, 0.1) == [Send(n5, msg)]
    assert n.successor(5.0) == n5  # skipped for ring_timeout ...
    assert n.successor(5.1) == n4  # ... then tried again
    assert n.suspected == frozenset()  # a failed send is not the detector's opinion


def test_back_at_starter_announces_highest() -> None:
    n = node(3)
    n.start_election(0.0)
    out = n.step(RingElection(n2, n3, 1, (n3, n4, n5, n1, n2)), 0.5)
    assert out == [LeaderChanged(n5, None, 0.5),
                   Send(n4, RingCoordinator(n3, n3, 1, n5, (n3, n4, n5, n1, n2), (n3,)))]
    assert n.phase is RingPhase.ANNOUNCING


def test_announcement_leaves_out_nodes_suspected_since() -> None:
    n = node(3)
    n.start_election(0.0)
    n.suspect(n5, 0.2)
    out = n.step(RingElection(n2, n3, 1, (n3, n4, n5, n1, n2)), 0.5)
    assert out[0] == LeaderChanged(n4, None, 0.5)


def test_coordinator_is_adopted_forwarded_and_stops_at_starter() -> None:
    n = node(4)
    msg = RingCoordinator(n3, n3, 1, n5, (n3, n4, n5, n1, n2), (n3,))
    out = n.step(msg, 1.0)
    assert out == [LeaderChanged(n5, None, 1.0),
                   Send(n5, RingCoordinator(n4, n3, 1, n5, msg.members, (n3, n4)))]
    s = node(3)
    s.start_election(0.0)
    s.step(RingElection(n2, n3, 1, msg.members), 0.5)
    back = RingCoordinator(n2, n3, 1, n5, msg.members, (n3, n4, n5, n1, n2))
    assert s.step(back, 1.5) == []
    assert s.phase is RingPhase.IDLE and s.next_deadline() is None


def test_lower_starter_is_swallowed_by_a_higher_starter() -> None:
    n = node(4)
    n.start_election(0.0)
    assert n.step(RingElection(n3, n2, 1, (n2, n3)), 0.1) == []
    # ... but a higher starter's message is forwarded.
    h = node(2)
    h.start_election(0.0)
    assert h.step(RingElection(n1, n5, 1, (n5, n1)), 0.1) == [
        Send(n3, RingElection(n2, n5, 1, (n5, n1, n2)))]


def test_adopting_abandons_own_election() -> None:
    n = node(2)
    n.start_election(0.0)
    n.step(RingCoordinator(n1, n5, 1, n5, (n5, n1, n2), (n5, n1)), 1.0)
    assert n.phase is RingPhase.IDLE
    # its own message, if it comes back, is stale
    assert n.step(RingElection(n1, n2, 1, (n2, n3, n4, n5, n1)), 1.1) == []


def test_orphan_election_is_dropped_and_replaced() -> None:
    n = node(2)  # starter 1 died after 2 forwarded its message
    out = n.step(RingElection(n1, n1, 1, (n1, n2, n3, n4, n5)), 0.0)
    assert out == [Send(n3, RingElection(n2, n2, 1, (n2,)))]


def test_orphan_coordinator_stops_after_one_circle() -> None:
    n = node(2)  # starter 3 died after the announcement passed 2
    assert n.step(RingCoordinator(n1, n3, 1, n5, (n3, n5), (n3, n4, n5, n2, n1)), 0.0) == []
    assert n.leader is None


def test_skipped_higher_node_contests_a_lower_announcement() -> None:
    n = node(5)
    out = n.step(RingCoordinator(n4, n1, 1, n4, (n1, n2, n3, n4), (n1, n2, n3, n4)), 0.0)
    assert out[0] == Send(n1, RingCoordinator(n5, n1, 1, n4, (n1, n2, n3, n4),
                                              (n1, n2, n3, n4, n5)))
    assert out[1] == Send(n1, RingElection(n5, n5, 1, (n5,)))
    assert n.leader is None


def test_stale_lower_announcement_does_not_replace_trusted_leader() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n5, (n1, n5), (n1,)), 0.0)
    n.step(RingCoordinator(n1, n1, 2, n4, (n1, n4), (n1,)), 0.1)
    assert n.leader == n5


def test_timeout_restarts() -> None:
    n = node(3)
    n.start_election(0.0)
    assert n.tick(4.9) == []
    assert n.tick(5.0) == [Send(n4, RingElection(n3, n3, 2, (n3,)))]


def test_alone_elects_itself() -> None:
    n = node(3)
    for p in (n1, n2, n4, n5):
        n.suspect(p, 0.0)
    assert n.start_election(0.0) == [LeaderChanged(n3, None, 0.0)]


def test_suspect_leader_then_recover_higher() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n5, (n1, n5), (n1,)), 0.0)
    out = n.suspect(n5, 1.0)
    assert out == [LeaderChanged(None, n5, 1.0), Send(n3, RingElection(n2, n2, 1, (n2,)))]
    n.step(RingCoordinator(n1, n1, 2, n4, (n1, n4), (n1,)), 2.0)
    assert n.leader == n4
    assert n.recover(n5, 3.0) == [Send(n3, RingElection(n2, n2, 2, (n2,)))]


def test_ring_must_hold_the_node() -> None:
    with pytest.raises(ValueError):
        RingNode(NodeId(7), RING)


def test_trusted_node_left_out_makes_a_recheck_after_ring_timeout() -> None:
    n = node(2)  # 4 was skipped by someone else's false suspicion; 2 trusts 4
    n.step(RingCoordinator(n1, n1, 1, n5, (n1, n2, n3, n5), (n1,)), 0.0)
    assert n.leader == n5 and n.phase is RingPhase.IDLE
    assert n.next_deadline() == 5.0
    assert n.tick(5.0) == [Send(n3, RingElection(n2, n2, 1, (n2,)))]


def test_everyone_included_means_no_recheck() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n5, tuple(RING), (n1,)), 0.0)
    assert n.next_deadline() is None


def test_recovered_node_that_missed_the_election_triggers_one() -> None:
    n = node(2)
    n.suspect(n4, 0.0)
    n.step(RingCoordinator(n1, n1, 1, n5, (n1, n2, n3, n5), (n1,)), 0.0)
    assert n.next_deadline() is None  # 4 is suspected: not "missing"
    assert n.recover(n4, 1.0) == [Send(n3, RingElection(n2, n2, 1, (n2,)))]


def test_announcement_of_a_suspected_leader_is_adopted_when_it_is_trusted_again() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n4, (n1, n2, n3, n4), (n1,)), 0.0)
    n.suspect(n5, 0.0)
    members = (n5, n1, n2, n3, n4)
    assert n.step(RingCoordinator(n1, n5, 7, n5, members, (n5, n1)), 1.0) == [
        Send(n3, RingCoordinator(n2, n5, 7, n5, members, (n5, n1, n2)))]
    assert n.leader == n4  # 5 is suspected: not adopted yet
    assert n.recover(n5, 1.5) == [LeaderChanged(n5, n4, 1.5)]  # the detector was slow
    assert n.next_deadline() is None


def test_a_suspected_starter_still_gets_its_message_back() -> None:
    n = node(4)
    n.suspect(n5, 0.0)  # 5 restarted before our detector heard it
    assert n.step(RingElection(n3, n5, 9, (n5, n1, n2, n3)), 0.1) == [
        Send(n5, RingElection(n4, n5, 9, (n5, n1, n2, n3, n4)))]
    assert n.successor(0.1) == n1  # other messages still skip it


def test_suspecting_the_leader_adopts_an_announcement_that_left_it_out() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n5, tuple(RING), (n1,)), 0.0)
    members = (n3, n4, n1, n2)  # 3's election skipped the dead 5
    n.step(RingCoordinator(n1, n3, 4, n4, members, (n3, n4, n1)), 1.0)
    assert n.leader == n5  # we still trusted 5
    assert n.suspect(n5, 2.0) == [LeaderChanged(n4, n5, 2.0)]  # no new election


# ---------------------------------------------------------------- claims: the repair of a
# lost COORDINATOR, riding the sitting coordinator's heartbeats (see ring.py).


def test_claim_of_a_higher_node_than_our_leader_is_adopted() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n4, tuple(RING), (n1,)), 0.0)
    assert n.claim(n5, 1.0) == [LeaderChanged(n5, n4, 1.0)]
    assert n.phase is RingPhase.IDLE and n.next_deadline() is None


def test_claim_adopted_mid_election_abandons_it() -> None:
    n = node(2)
    n.start_election(0.0)
    assert n.claim(n5, 0.5) == [LeaderChanged(n5, None, 0.5)]
    assert n.phase is RingPhase.IDLE
    assert n.step(RingElection(n1, n2, 1, (n2, n3, n4, n5, n1)), 1.0) == []  # abandoned


def test_claim_of_our_own_leader_changes_nothing() -> None:
    n = node(2)
    n.step(RingCoordinator(n1, n1, 1, n4, tuple(RING), (n1,)), 0.0)
    n.suspect(n5, 0.1)
    assert n.recover(n5, 1.0) == [Send(n3, RingElection(n2, n2, 1, (n2,)))]
    assert n.claim(n4, 1.1) == []
    assert n.phase is RingPhase.ELECTING and n.next_deadline() == 6.0


def test_claims_of_lower_or_suspected_nodes_are_ignored() -> None:
    n = node(3)
    n.step(RingCoordinator(n1, n1, 1, n5, tuple(RING), (n1,)), 0.0)
    assert n.claim(n2, 1.0) == []  # lower than us: 5's own claims tell it
    assert n.claim(n4, 1.0) == []  # lower than the leader we trust
    m = node(2)
    m.suspect(n5, 0.0)
    assert m.claim(n5, 1.0) == []
    assert n.leader == n5 and m.leader is None
