"""`RaftDriver.propose_nowait`: the callback form of `propose`.

* a running one-member group answers callbacks with the applied result,
  once each, at their log positions, mixed with awaited `propose` calls;
* an entry of another term at the proposal's index (a new leader overwrote
  it) answers ProposalLost; an abandoned proposal is never answered and
  leaves no waiter behind; a snapshot install answers ProposalLost;
* a member that is not the leader refuses at once, like `propose`.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
import trio

from coord.kv.commands import RegisterClient, stamp
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import RegisterResult
from coord.kv.store import MemoryKVStore
from coord.raft.config import RaftConfig
from coord.raft.driver import ProposalLost, RaftDriver, RaftUnavailable
from coord.raft.storage import MemoryRaftStorage
from coord.raft.types import Entry, EntryKind, NodeId, Term

CONFIG = RaftConfig(election_timeout_min=0.3, election_timeout_max=0.6, heartbeat_interval=0.05)
ME = NodeId(1)


class _NoNet:
    async def send(self, peer: NodeId, messages: Any) -> None:
        raise AssertionError(f"a one-member group sends nothing ({messages!r})")


def _driver(peers: list[NodeId] | None = None) -> RaftDriver[Applied]:
    return RaftDriver(ME, peers or [ME], CONFIG, MemoryRaftStorage(),
                      KVStateMachine(MemoryKVStore()), _NoNet(), rng=random.Random(3))


def _solo_leader() -> RaftDriver[Applied]:
    driver = _driver()
    driver.core.tick(trio.current_time() + 10)  # a one-member group elects itself
    assert driver.is_leader
    return driver


def _record(into: list[tuple[str, Applied | ProposalLost]], name: str,
            outcome: Applied | ProposalLost) -> None:
    into.append((name, outcome))


async def test_callbacks_get_the_applied_results_once_in_log_order() -> None:
    driver = _driver()
    outcomes: list[tuple[str, Applied | ProposalLost]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        with trio.fail_after(10):
            while not driver.is_leader:
                await trio.sleep(0.01)
            for i in range(5):
                driver.propose_nowait(stamp(RegisterClient(), 1),
                                      functools.partial(_record, outcomes, f"cb{i}"),
                                      early=i % 2 == 0)
            awaited = await driver.propose(stamp(RegisterClient(), 1))
            while len(outcomes) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # Early ones may be answered before the others of the same apply batch.
    assert sorted(name for name, _ in outcomes) == [f"cb{i}" for i in range(5)]
    by_name = dict(outcomes)
    indexes = [o.index for o in (by_name[f"cb{i}"] for i in range(5)) if isinstance(o, Applied)]
    assert len(indexes) == 5 and indexes == sorted(indexes) and awaited.index > indexes[-1]
    assert all(isinstance(o, Applied) and isinstance(o.result, RegisterResult)
               for _, o in outcomes)
    assert driver._proposals == {}


async def test_an_overwritten_entry_answers_proposal_lost_and_abandon_is_silent() -> None:
    driver = _solo_leader()
    got: list[Applied | ProposalLost] = []
    first = driver.propose_nowait(b"a", got.append)
    second = driver.propose_nowait(b"b", got.append)
    index = max(driver._proposals)
    driver.abandon(second)
    driver.abandon(second)  # idempotent
    assert index not in driver._proposals
    term = driver.core.soft_state().term
    overwritten = [Entry(Term(term + 1), i, EntryKind.COMMAND, b"x") for i in
                   sorted([*driver._proposals, index])]
    driver._release(overwritten, [])
    assert len(got) == 1 and isinstance(got[0], ProposalLost)
    assert "overwritten" in str(got[0]) and got[0].leader == ME
    assert driver._proposals == {}
    driver.abandon(first)  # after the answer: nothing happens
    assert len(got) == 1


async def test_a_snapshot_install_answers_waiting_callbacks_lost() -> None:
    driver = _solo_leader()
    got: list[Applied | ProposalLost] = []
    driver.propose_nowait(b"a", got.append)
    # What `_install` does with the waiters at or below the snapshot's index.
    for index in list(driver._proposals):
        waiter = driver._proposals.pop(index)
        waiter.lost = True
        waiter.finish()
    assert len(got) == 1 and isinstance(got[0], ProposalLost)


async def test_a_callback_that_raises_does_not_break_the_release() -> None:
    driver = _solo_leader()
    got: list[Applied | ProposalLost] = []

    def broken(outcome: Applied | ProposalLost) -> None:
        raise RuntimeError("caller bug")

    driver.propose_nowait(b"a", broken)
    driver.propose_nowait(b"b", got.append)
    term = driver.core.soft_state().term
    entries = [Entry(Term(term + 1), i, EntryKind.COMMAND, b"x") for i in sorted(driver._proposals)]
    driver._release(entries, [])
    assert len(got) == 1 and driver._proposals == {}


async def test_a_follower_refuses_at_once() -> None:
    driver = _driver([ME, NodeId(2), NodeId(3)])
    got: list[Applied | ProposalLost] = []
    with pytest.raises(RaftUnavailable):
        driver.propose_nowait(b"a", got.append)
    assert got == [] and driver._proposals == {}


