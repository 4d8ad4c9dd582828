"""The Bully core, one rule per test, asserting the exact effects (chapter 8.3.3)."""

from __future__ import annotations

import pytest

from coord.election import (
    BullyCoordinator,
    BullyElection,
    BullyNode,
    BullyOk,
    BullyPhase,
    ElectionConfig,
    ElectionConfigError,
    LeaderChanged,
    NodeId,
    Send,
)

N = [NodeId(i) for i in range(1, 6)]
CFG = ElectionConfig(ok_timeout=1.0, coordinator_timeout=3.0, ring_timeout=5.0)


def node(i: int) -> BullyNode:
    return BullyNode(NodeId(i), N, CFG)


def test_election_goes_to_every_higher_id_only() -> None:
    n = node(3)
    assert n.start_election(0.0) == [Send(NodeId(4), BullyElection(NodeId(3), 1)),
                                     Send(NodeId(5), BullyElection(NodeId(3), 1))]
    assert n.phase is BullyPhase.ELECTING
    assert n.next_deadline() == 1.0


def test_highest_id_wins_at_once_and_tells_every_lower_id() -> None:
    n = node(5)
    out = n.start_election(0.0)
    assert out[0] == LeaderChanged(NodeId(5), None, 0.0)
    assert out[1:] == [Send(NodeId(i), BullyCoordinator(NodeId(5))) for i in (1, 2, 3, 4)]
    assert n.leader == 5 and n.next_deadline() is None


def test_no_ok_within_timeout_wins() -> None:
    n = node(3)
    n.start_election(0.0)
    assert n.tick(0.5) == []
    out = n.tick(1.0)
    assert out == [LeaderChanged(NodeId(3), None, 1.0),
                   Send(NodeId(1), BullyCoordinator(NodeId(3))),
                   Send(NodeId(2), BullyCoordinator(NodeId(3)))]


def test_ok_makes_it_wait_for_coordinator_then_retry() -> None:
    n = node(3)
    n.start_election(0.0)
    assert n.step(BullyOk(NodeId(5), 1), 0.2) == []
    assert n.phase is BullyPhase.WAITING
    assert n.tick(1.0) == []  # the OK cancelled the win
    out = n.tick(3.2)  # no COORDINATOR within coordinator_timeout: start again
    assert out == [Send(NodeId(4), BullyElection(NodeId(3), 2)),
                   Send(NodeId(5), BullyElection(NodeId(3), 2))]


def test_stale_ok_from_an_older_round_is_ignored() -> None:
    n = node(3)
    n.start_election(0.0)
    n.tick(1.0)  # won round 1
    n.start_election(2.0)  # round 2
    n.step(BullyOk(NodeId(5), 1), 2.1)
    assert n.phase is BullyPhase.ELECTING


def test_election_from_lower_gets_ok_and_starts_own() -> None:
    n = node(4)
    out = n.step(BullyElection(NodeId(2), 7), 0.0)
    assert out == [Send(NodeId(2), BullyOk(NodeId(4), 7)),
                   Send(NodeId(5), BullyElection(NodeId(4), 1))]


def test_election_while_electing_only_answers_ok() -> None:
    n = node(4)
    n.start_election(0.0)
    assert n.step(BullyElection(NodeId(1), 3), 0.1) == [Send(NodeId(1), BullyOk(NodeId(4), 3))]


def test_coordinator_from_higher_is_adopted() -> None:
    n = node(2)
    n.start_election(0.0)
    out = n.step(BullyCoordinator(NodeId(5)), 0.3)
    assert out == [LeaderChanged(NodeId(5), None, 0.3)]
    assert n.phase is BullyPhase.IDLE and n.next_deadline() is None


def test_coordinator_from_lower_is_bullied() -> None:
    n = node(5)
    n.start_election(0.0)
    out = n.step(BullyCoordinator(NodeId(3)), 1.0)
    assert n.leader == 5
    assert out == [Send(NodeId(i), BullyCoordinator(NodeId(5))) for i in (1, 2, 3, 4)]


def test_stale_lower_coordinator_does_not_replace_a_trusted_higher_leader() -> None:
    n = node(2)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    assert n.step(BullyCoordinator(NodeId(4)), 0.1) == []
    assert n.leader == 5


def test_coordinator_from_a_suspected_node_is_not_adopted() -> None:
    n = node(2)
    n.suspect(NodeId(5), 0.0)
    assert n.step(BullyCoordinator(NodeId(5)), 0.1) == []
    assert n.leader is None


def test_suspecting_the_leader_clears_it_and_starts_an_election() -> None:
    n = node(3)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    out = n.suspect(NodeId(5), 1.0)
    assert out == [LeaderChanged(None, NodeId(5), 1.0),
                   Send(NodeId(4), BullyElection(NodeId(3), 1)),
                   Send(NodeId(5), BullyElection(NodeId(3), 1))]


def test_suspecting_a_non_leader_does_nothing() -> None:
    n = node(3)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    assert n.suspect(NodeId(4), 1.0) == []
    assert n.suspected == {4}


def test_recovered_higher_than_leader_triggers_an_election() -> None:
    n = node(3)
    n.step(BullyCoordinator(NodeId(4)), 0.0)
    n.suspect(NodeId(5), 0.1)
    out = n.recover(NodeId(5), 2.0)
    assert out == [Send(NodeId(4), BullyElection(NodeId(3), 1)),
                   Send(NodeId(5), BullyElection(NodeId(3), 1))]
    assert n.recover(NodeId(1), 2.1) == []  # lower than us: nothing to do


def test_restarted_higher_node_takes_over() -> None:
    low = node(4)
    low.start_election(0.0)
    low.tick(1.0)  # 5 is down: 4 wins
    assert low.leader == 4
    high = node(5)  # 5 restarts: a fresh core holds an election at once
    out = high.start_election(5.0)
    assert Send(NodeId(4), BullyCoordinator(NodeId(5))) in out
    assert low.step(BullyCoordinator(NodeId(5)), 5.1) == [
        LeaderChanged(NodeId(5), NodeId(4), 5.1)]


def test_confused_higher_sender_of_election_gets_no_ok() -> None:
    assert node(2).step(BullyElection(NodeId(4), 1), 0.0) == []


def test_config_validation() -> None:
    with pytest.raises(ElectionConfigError):
        ElectionConfig(ok_timeout=2.0, coordinator_timeout=1.0).validate()
    with pytest.raises(ElectionConfigError):
        ElectionConfig(ring_timeout=float("nan")).validate()


def test_sitting_highest_coordinator_answers_election_with_ok_and_coordinator() -> None:
    n = node(5)
    n.start_election(0.0)
    assert n.step(BullyElection(NodeId(2), 4), 1.0) == [
        Send(NodeId(2), BullyOk(NodeId(5), 4)), Send(NodeId(2), BullyCoordinator(NodeId(5)))]


def test_coordinator_that_won_by_timeout_holds_a_new_election_when_asked() -> None:
    n = node(4)
    n.start_election(0.0)
    n.tick(1.0)  # 5 did not answer: 4 leads, but still trusts 5
    assert n.step(BullyElection(NodeId(2), 4), 2.0) == [
        Send(NodeId(2), BullyOk(NodeId(4), 4)), Send(NodeId(5), BullyElection(NodeId(4), 2))]


def test_higher_node_recovering_during_an_election_is_asked_afterwards() -> None:
    n = node(3)
    n.suspect(NodeId(5), 0.0)
    n.step(BullyElection(NodeId(1), 1), 1.0)  # no leader known: our election starts
    n.step(BullyOk(NodeId(4), 1), 1.1)
    assert n.recover(NodeId(5), 1.5) == []  # mid-election: remembered, not acted on
    out = n.step(BullyCoordinator(NodeId(4)), 2.0)
    assert out == [LeaderChanged(NodeId(4), None, 2.0),
                   Send(NodeId(4), BullyElection(NodeId(3), 2)),
                   Send(NodeId(5), BullyElection(NodeId(3), 2))]


def test_follower_of_a_trusted_higher_leader_only_answers_ok() -> None:
    n = node(3)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    assert n.step(BullyElection(NodeId(1), 4), 1.0) == [Send(NodeId(1), BullyOk(NodeId(3), 4))]
    assert n.phase is BullyPhase.IDLE


def test_coordinator_of_a_suspected_node_is_adopted_when_it_is_trusted_again() -> None:
    n = node(2)
    n.step(BullyCoordinator(NodeId(4)), 0.0)
    n.suspect(NodeId(5), 0.0)  # 5 crashed ... and restarted, announcing itself
    assert n.step(BullyCoordinator(NodeId(5)), 1.0) == []
    assert n.recover(NodeId(5), 1.2) == [LeaderChanged(NodeId(5), NodeId(4), 1.2)]
    assert n.phase is BullyPhase.IDLE


def test_suspecting_the_leader_follows_the_highest_coordinator_it_had_ignored() -> None:
    n = node(1)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    n.step(BullyCoordinator(NodeId(4)), 1.0)  # 4 won while we still trusted 5
    n.step(BullyCoordinator(NodeId(3)), 1.1)  # a staler one
    assert n.leader == 5
    assert n.suspect(NodeId(5), 2.0) == [LeaderChanged(NodeId(4), NodeId(5), 2.0)]


def test_winning_while_a_higher_node_is_trusted_asks_again_later() -> None:
    n = node(4)
    n.start_election(0.0)
    n.tick(1.0)  # no OK from 5 (slow, lost, or dead but not yet suspected): 4 wins
    assert n.leader == 4 and n.next_deadline() == 4.0
    assert n.tick(4.0) == [Send(NodeId(5), BullyElection(NodeId(4), 2))]
    n.step(BullyCoordinator(NodeId(5)), 4.5)
    assert n.leader == 5 and n.next_deadline() is None


def test_no_recheck_once_the_higher_node_is_suspected() -> None:
    n = node(4)
    n.start_election(0.0)
    n.tick(1.0)
    n.suspect(NodeId(5), 2.0)
    assert n.tick(4.0) == []
    assert n.leader == 4 and n.next_deadline() is None


# ---------------------------------------------------------------- claims: the repair of a
# lost COORDINATOR.  The sitting coordinator's heartbeats say "I am the coordinator";
# the driver hands each such claim to `claim`.


def test_claim_of_a_higher_node_than_our_leader_is_adopted() -> None:
    n = node(2)
    n.step(BullyCoordinator(NodeId(4)), 0.0)  # 5 restarted and won; its COORDINATOR to us was lost
    assert n.claim(NodeId(5), 1.0) == [LeaderChanged(NodeId(5), NodeId(4), 1.0)]
    assert n.phase is BullyPhase.IDLE and n.next_deadline() is None


def test_claim_ends_the_wait_for_a_lost_coordinator() -> None:
    n = node(3)
    n.start_election(0.0)
    n.step(BullyOk(NodeId(5), 1), 0.1)
    assert n.claim(NodeId(5), 0.5) == [LeaderChanged(NodeId(5), None, 0.5)]
    assert n.phase is BullyPhase.IDLE and n.next_deadline() is None


def test_claim_of_our_own_leader_does_not_cut_an_election_short() -> None:
    n = node(3)
    n.step(BullyCoordinator(NodeId(4)), 0.0)
    n.suspect(NodeId(5), 0.1)
    n.recover(NodeId(5), 1.0)  # asks the recovered 5 whether it is alive
    assert n.phase is BullyPhase.ELECTING
    assert n.claim(NodeId(4), 1.1) == []
    assert n.phase is BullyPhase.ELECTING and n.next_deadline() == 2.0


def test_claim_of_a_lower_node_is_left_to_the_higher_leaders_own_claims() -> None:
    follower = node(4)
    follower.step(BullyCoordinator(NodeId(5)), 0.0)
    assert follower.claim(NodeId(3), 1.0) == []  # no election per heartbeat
    leader = node(5)
    leader.start_election(0.0)
    assert leader.claim(NodeId(3), 1.0) == []
    assert follower.leader == 5 and leader.leader == 5


def test_claim_of_a_suspected_node_is_ignored_and_not_remembered() -> None:
    n = node(2)
    n.step(BullyCoordinator(NodeId(4)), 0.0)
    n.suspect(NodeId(5), 0.1)
    assert n.claim(NodeId(5), 1.0) == []
    # Trusted again: the recovery asks it (no deferred adoption); its next claim settles it.
    assert n.recover(NodeId(5), 2.0) == [Send(NodeId(i), BullyElection(NodeId(2), 1))
                                         for i in (3, 4, 5)]
    assert n.claim(NodeId(5), 2.1) == [LeaderChanged(NodeId(5), NodeId(4), 2.1)]


def test_claim_lower_than_a_trusted_leader_is_ignored_and_not_remembered() -> None:
    n = node(1)
    n.step(BullyCoordinator(NodeId(5)), 0.0)
    assert n.claim(NodeId(4), 1.0) == []
    assert n.leader == 5
    out = n.suspect(NodeId(5), 2.0)  # an election, not the ignored claim
    assert out[0] == LeaderChanged(None, NodeId(5), 2.0)
    assert out[1:] == [Send(NodeId(i), BullyElection(NodeId(1), 1)) for i in (2, 3, 4, 5)]
