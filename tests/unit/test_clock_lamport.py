"""Lamport clocks: monotonicity, the receive rule, and the clock condition
(a -> b implies L(a) < L(b)) over simulated message exchanges, with vector
clocks as the independent ground truth for happened-before."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.clock.lamport import LamportClock
from coord.clock.vector import VectorClock


def test_starts_where_told_and_rejects_negative_start() -> None:
    assert LamportClock().time == 0
    assert LamportClock(5).time == 5
    with pytest.raises(ValueError):
        LamportClock(-1)


def test_tick_is_strictly_monotonic() -> None:
    clock = LamportClock()
    stamps = [clock.tick() for _ in range(100)]
    assert stamps == list(range(1, 101))
    assert clock.time == 100


@given(st.integers(0, 1000), st.integers(0, 1000))
def test_receive_is_greater_than_both(local_start: int, remote: int) -> None:
    clock = LamportClock(local_start)
    stamp = clock.observe(remote)
    assert stamp > local_start and stamp > remote
    assert stamp == max(local_start, remote) + 1
    assert clock.time == stamp


def test_receive_of_negative_stamp_is_rejected_and_leaves_clock_alone() -> None:
    clock = LamportClock(3)
    with pytest.raises(ValueError):
        clock.observe(-1)
    assert clock.time == 3


@given(st.lists(st.one_of(st.just(-1), st.integers(0, 50)), max_size=60))
def test_never_decreases(events: list[int]) -> None:
    clock = LamportClock()
    previous = clock.time
    for remote in events:
        stamp = clock.tick() if remote < 0 else clock.observe(remote)
        assert stamp > previous
        previous = stamp


@dataclass(frozen=True, slots=True)
class _Event:
    process: int
    lamport: int
    vector: VectorClock  # ground truth for happened-before


def _simulate(seed: int, processes: int, steps: int) -> list[_Event]:
    """Random local events, sends and (possibly reordered) receives."""
    rng = random.Random(seed)
    lamport = [LamportClock() for _ in range(processes)]
    vector = [VectorClock() for _ in range(processes)]
    in_flight: list[tuple[int, int, VectorClock]] = []  # (dest, lamport stamp, vector stamp)
    events: list[_Event] = []
    for _ in range(steps):
        p = rng.randrange(processes)
        action = rng.random()
        deliverable = [m for m in in_flight if m[0] == p]
        if deliverable and action < 0.4:
            message = rng.choice(deliverable)  # any order: the network may reorder
            in_flight.remove(message)
            stamp = lamport[p].observe(message[1])
            vector[p] = vector[p].merge(message[2]).increment(p)
        else:
            stamp = lamport[p].tick()
            vector[p] = vector[p].increment(p)
            if action < 0.8:
                dest = rng.randrange(processes)
                in_flight.append((dest, stamp, vector[p]))
        events.append(_Event(p, stamp, vector[p]))
    return events


@pytest.mark.parametrize("seed", range(20))
def test_clock_condition_over_message_exchange(seed: int) -> None:
    events = _simulate(seed, processes=4, steps=120)
    related = 0
    for a in events:
        for b in events:
            if a.vector < b.vector:  # a happened before b
                related += 1
                assert a.lamport < b.lamport, (a, b)
    # The scenario must actually contain causal chains across processes.
    assert related > len(events)


def test_send_receive_ordering_explicit() -> None:
    """P1 sends to P2 while P2 is far behind, then P2 replies to P1 which is far ahead."""
    p1, p2 = LamportClock(), LamportClock()
    for _ in range(10):
        p1.tick()
    send = p1.tick()
    receive = p2.observe(send)
    assert receive > send
    p1_local = [p1.tick() for _ in range(20)]
    reply = p2.tick()
    got_reply = p1.observe(reply)
    assert send < receive < reply < got_reply
    assert got_reply > p1_local[-1]
