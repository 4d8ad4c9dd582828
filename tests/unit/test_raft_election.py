"""Pure-core tests of Raft elections: each names the rule of the paper it checks."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from coord.raft.config import ConfigError, RaftConfig
from coord.raft.core import IllegalTransition, RaftNode, ReadyOutstanding
from coord.raft.memlog import MemLog
from coord.raft.messages import AppendEntries, Heartbeat, Message, RequestVote, RequestVoteResponse
from coord.raft.ready import Role
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term
from tests.unit.raft_harness import CONFIG, Harness

N1, N2, N3, N4, N5 = (NodeId(i) for i in range(1, 6))
NO_PREVOTE = replace(CONFIG, pre_vote=False)


def e(index: int, term: int) -> Entry:
    return Entry(Term(term), LogIndex(index), EntryKind.COMMAND, b"%d/%d" % (index, term))


def vote(src: NodeId, dst: NodeId, term: int, last: int = 0, last_term: int = 0) -> RequestVote:
    return RequestVote(src, dst, Term(term), LogIndex(last), Term(last_term))


def responses(h: Harness, nid: NodeId) -> list[RequestVoteResponse]:
    return [m for m in h.take(RequestVoteResponse) if m.src == nid]


def test_s5_2_a_candidate_with_a_majority_becomes_the_only_leader() -> None:
    h = Harness(3)
    h.campaign(N1)
    assert [h.nodes[i].role for i in h.ids] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert all(h.nodes[i].term == 1 and h.nodes[i].leader == N1 for i in h.ids)


def test_s5_2_election_safety_two_simultaneous_candidates_at_most_one_leader_per_term() -> None:
    h = Harness(3, NO_PREVOTE)
    h.now = max(h.nodes[N1].election_deadline, h.nodes[N2].election_deadline)
    h.nodes[N1].tick(h.now)
    h.nodes[N2].tick(h.now)
    h.deliver()
    leaders = [i for i in h.ids if h.nodes[i].role is Role.LEADER]
    assert len(leaders) <= 1
    assert h.nodes[N1].term == h.nodes[N2].term == 1
    assert len(leaders) == 1  # node 3 votes for whichever request it sees first


def test_fig2_request_vote_receiver_grants_at_most_one_vote_per_term() -> None:
    h = Harness(3, NO_PREVOTE)
    n3 = h.nodes[N3]
    n3.step(vote(N1, N3, 1), h.now)
    n3.step(vote(N2, N3, 1), h.now)
    n3.step(vote(N1, N3, 1), h.now)  # a duplicate of the granted request is granted again
    got = [(m.dst, m.granted) for m in responses(h, N3)]
    assert got == [(N1, True), (N2, False), (N1, True)]
    assert h.hard[N3] == HardState(Term(1), N1, LogIndex(0))


def test_fig2_vote_is_persisted_with_must_sync_in_the_ready_that_carries_the_grant() -> None:
    h = Harness(3, NO_PREVOTE)
    h.nodes[N3].step(vote(N1, N3, 1), h.now)
    rd = h.process(N3)
    assert rd is not None and rd.must_sync
    assert rd.hard_state == HardState(Term(1), N1, LogIndex(0))
    assert any(isinstance(m, RequestVoteResponse) and m.granted for m in rd.messages)


def test_s5_2_a_restarted_node_keeps_its_vote_for_the_term() -> None:
    h = Harness(3, NO_PREVOTE, hard_states={N3: HardState(Term(5), N2, LogIndex(0))})
    h.nodes[N3].step(vote(N1, N3, 5), h.now)
    assert [m.granted for m in responses(h, N3)] == [False]


@pytest.mark.parametrize(
    ("cand_last", "cand_last_term", "granted"),
    [(1, 1, False), (3, 1, False), (1, 2, False), (2, 2, True), (3, 2, True), (1, 3, True)],
)
def test_s5_4_1_vote_only_for_a_candidate_whose_log_is_at_least_as_up_to_date(
    cand_last: int, cand_last_term: int, granted: bool
) -> None:
    h = Harness(3, NO_PREVOTE, logs={N3: [e(1, 1), e(2, 2)]})
    h.nodes[N3].step(vote(N1, N3, 3, cand_last, cand_last_term), h.now)
    assert [m.granted for m in responses(h, N3)] == [granted]


def test_s5_1_a_stale_term_request_is_rejected_with_the_current_term() -> None:
    h = Harness(3, NO_PREVOTE, hard_states={N3: HardState(Term(4))})
    h.nodes[N3].step(vote(N1, N3, 2, 9, 2), h.now)
    [resp] = responses(h, N3)
    assert not resp.granted and resp.term == 4


def test_s5_1_higher_term_makes_a_leader_step_down() -> None:
    h = Harness(3, NO_PREVOTE)
    h.campaign(N1)
    h.nodes[N1].step(Heartbeat(N2, N1, Term(7), LogIndex(0), 0), h.now)
    assert h.nodes[N1].role is Role.FOLLOWER and h.nodes[N1].term == 7


def test_s8_a_new_leader_appends_a_noop_of_its_term_first() -> None:
    h = Harness(
        3,
        logs={i: [e(1, 1)] for i in (N1, N2, N3)},
        hard_states={i: HardState(Term(1)) for i in (N1, N2, N3)},
    )
    h.campaign(N2)
    log = h.logs[N2]
    assert log.last_index() == 2
    noop = log.all_entries()[-1]
    assert noop.kind is EntryKind.NOOP and noop.term == h.nodes[N2].term == 2
    # The noop of term 2 commits, and with it the earlier-term entry 1 (§5.4.2);
    # the followers learn that from the next heartbeat.
    h.share_commit()
    assert all(h.nodes[i].commit_index == 2 for i in h.ids)
    assert [x.index for x in h.applied[N3]] == [1, 2]


def test_s9_6_pre_vote_does_not_bump_terms_while_partitioned() -> None:
    h = Harness(3)
    h.campaign(N1)
    isolated = lambda m: N3 not in (m.src, m.dst)  # noqa: E731
    for _ in range(10):
        h.advance_time(5.0)
        h.deliver(isolated)
    assert h.nodes[N3].term == 1 and h.nodes[N3].role is Role.PRE_CANDIDATE
    # Rejoining: pre-votes are ignored (the others hear from a leader); nothing is disrupted.
    for _ in range(10):
        h.advance_time(5.0)
        h.deliver()
    assert h.nodes[N1].role is Role.LEADER and all(h.nodes[i].term == 1 for i in h.ids)
    assert h.nodes[N3].role is Role.FOLLOWER and h.nodes[N3].leader == N1


def test_s9_6_without_pre_vote_a_partitioned_node_inflates_its_term_control() -> None:
    h = Harness(3, NO_PREVOTE)
    h.campaign(N1)
    for _ in range(10):
        h.advance_time(5.0)
        h.deliver(lambda m: N3 not in (m.src, m.dst))
    assert h.nodes[N3].term > 2  # the behaviour pre-vote exists to prevent


def test_s9_6_pre_vote_wins_then_real_election_increments_term_once() -> None:
    h = Harness(3)
    h.campaign(N2)
    assert h.nodes[N2].role is Role.LEADER and h.nodes[N2].term == 1
    pre = [m for m in h.sent if isinstance(m, RequestVote) and m.pre_vote]
    assert pre and all(m.term == 1 for m in pre)


def test_s4_2_3_leader_stickiness_followers_ignore_votes_while_the_leader_is_heard() -> None:
    h = Harness(3, NO_PREVOTE)
    h.campaign(N1)
    h.nodes[N2].step(vote(N3, N2, 5, 99, 1), h.now)
    assert h.nodes[N2].term == 1 and responses(h, N2) == []
    h.nodes[N1].step(vote(N3, N1, 5, 99, 1), h.now)
    assert h.nodes[N1].role is Role.LEADER and h.nodes[N1].term == 1
    # After a minimum election timeout without the leader the same request is honoured.
    h.now += CONFIG.election_timeout_min + 0.5
    h.nodes[N2].step(vote(N3, N2, 5, 99, 1), h.now)
    assert h.nodes[N2].term == 5 and [m.granted for m in responses(h, N2)] == [True]


def test_s6_2_check_quorum_leader_steps_down_without_a_majority() -> None:
    h = Harness(3)
    h.campaign(N1)
    silent = lambda m: m.src != N1  # noqa: E731  (the leader's messages are lost)
    for _ in range(2 * int(CONFIG.election_timeout_min)):
        h.advance_time(1.0, [N1])
        h.deliver(silent)
    assert h.nodes[N1].role is Role.FOLLOWER and h.nodes[N1].leader is None


def test_s6_2_check_quorum_leader_stays_with_a_majority() -> None:
    h = Harness(3)
    h.campaign(N1)
    for _ in range(4 * int(CONFIG.election_timeout_min)):
        h.advance_time(1.0, [N1])
        h.deliver(lambda m: N3 not in (m.src, m.dst))
    assert h.nodes[N1].role is Role.LEADER


def test_candidate_steps_down_on_append_from_a_leader_of_its_term() -> None:
    h = Harness(3, NO_PREVOTE)
    h.nodes[N2].tick(h.nodes[N2].election_deadline)
    h.take_all()
    assert h.nodes[N2].role is Role.CANDIDATE
    h.nodes[N2].step(AppendEntries(N1, N2, Term(1), LogIndex(0), Term(0), (), LogIndex(0)), 0)
    assert h.nodes[N2].role is Role.FOLLOWER and h.nodes[N2].leader == N1


def test_single_node_elects_itself_and_commits() -> None:
    h = Harness(1)
    h.campaign(N1)
    assert h.nodes[N1].role is Role.LEADER
    h.propose(N1, b"solo")
    h.deliver()
    assert h.commands(N1) == [b"solo"]


def test_illegal_role_transition_raises_with_history() -> None:
    node = RaftNode(
        N1, [N2, N3], CONFIG, log=MemLog(), hard_state=HardState(), rng=random.Random(1), now=0.0
    )
    with pytest.raises(IllegalTransition, match=r"follower -> leader.*history"):
        node._become_leader(0.0)


def test_ready_must_be_advanced_before_the_next() -> None:
    h = Harness(3)
    node = h.nodes[N1]
    node.tick(node.election_deadline)
    rd = node.ready()
    with pytest.raises(ReadyOutstanding):
        node.ready()
    assert not node.has_ready()
    node.advance(rd)
    with pytest.raises(ReadyOutstanding):
        node.advance(rd)


def test_messages_to_other_nodes_or_from_strangers_are_ignored() -> None:
    h = Harness(3, NO_PREVOTE)
    foreign: list[Message] = [vote(N1, N2, 3), vote(NodeId(9), N3, 3)]
    for m in foreign:
        h.nodes[N3].step(m, 0.0)
    assert h.nodes[N3].term == 0 and h.take_all() == []


@pytest.mark.parametrize(
    "bad",
    [
        {"heartbeat_interval": 10.0},
        {"election_timeout_max": 5.0},
        {"max_inflight": 0},
        {"max_inflight_bytes": 10, "max_append_bytes": 100},
    ],
)
def test_config_validate_rejects_inconsistent_relations(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        replace(RaftConfig(election_timeout_min=10.0, election_timeout_max=20.0), **bad).validate()
    assert RaftConfig().validate() == RaftConfig()


def test_next_deadline_tells_the_driver_when_tick_has_work() -> None:
    h = Harness(3)
    node = h.nodes[N1]
    deadline = node.next_deadline()
    assert CONFIG.election_timeout_min <= deadline < CONFIG.election_timeout_max
    node.tick(deadline - 0.01)
    assert node.role is Role.FOLLOWER and not node.has_ready()
    h.campaign(N1)
    elected = h.now
    # Leader: the no-op's commit index is due to the followers first, then heartbeats.
    assert node.next_deadline() == elected + CONFIG.commit_notify_delay
    h.advance_time(CONFIG.commit_notify_delay, [N1])
    h.deliver()
    assert node.next_deadline() == elected + CONFIG.heartbeat_interval
