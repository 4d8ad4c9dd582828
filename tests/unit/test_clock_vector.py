"""Vector clocks: the partial-order and join-semilattice laws, checked with
hypothesis, plus a replayed three-process message exchange."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.clock.vector import Order, VectorClock

# Few nodes and small counters so that equal and ordered pairs are common,
# not just concurrent ones.
clocks = st.dictionaries(st.integers(0, 4), st.integers(0, 3), max_size=5).map(VectorClock)
nodes = st.integers(0, 6)


def _pointwise_le(a: VectorClock, b: VectorClock) -> bool:
    """The definition, written independently of `compare`."""
    return all(a[n] <= b[n] for n in set(a) | set(b))


@given(clocks, clocks)
def test_le_matches_pointwise_definition(a: VectorClock, b: VectorClock) -> None:
    assert (a <= b) == _pointwise_le(a, b)
    assert (a < b) == (_pointwise_le(a, b) and not _pointwise_le(b, a))


@given(clocks)
def test_le_is_reflexive(a: VectorClock) -> None:
    same = a
    assert a <= same
    assert a.compare(same) is Order.EQUAL
    assert not a < same


@given(clocks, clocks)
def test_le_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    if a <= b <= a:
        assert a == b
        assert hash(a) == hash(b)


@given(clocks, clocks, clocks)
def test_le_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    # Force a chain often: b' = a ⊔ b and c' = b' ⊔ c give a <= b' <= c'.
    b2, c2 = a.merge(b), a.merge(b).merge(c)
    assert a <= b2 <= c2 and a <= c2
    if a <= b <= c:
        assert a <= c


@given(clocks, clocks)
def test_exactly_one_relation_holds(a: VectorClock, b: VectorClock) -> None:
    relations = [a < b, b < a, a == b, a.concurrent(b)]
    assert sum(relations) == 1
    mirror = {
        Order.BEFORE: Order.AFTER,
        Order.AFTER: Order.BEFORE,
        Order.EQUAL: Order.EQUAL,
        Order.CONCURRENT: Order.CONCURRENT,
    }
    assert b.compare(a) is mirror[a.compare(b)]
    assert (a > b) == (b < a) and (a >= b) == (b <= a)
    assert a.happens_before(b) == (a < b)


@given(clocks, clocks)
def test_merge_is_commutative_and_an_upper_bound(a: VectorClock, b: VectorClock) -> None:
    m = a.merge(b)
    assert m == b.merge(a)
    assert a <= m and b <= m
    for n in set(a) | set(b):
        assert m[n] == max(a[n], b[n])


@given(clocks, clocks, clocks)
def test_merge_is_associative_and_least(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    if a <= c and b <= c:
        assert a.merge(b) <= c


@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(clocks, nodes)
def test_increment_is_strictly_after(a: VectorClock, node: int) -> None:
    b = a.increment(node)
    assert a < b and b > a
    assert a.compare(b) is Order.BEFORE
    assert b[node] == a[node] + 1
    assert all(b[n] == a[n] for n in set(a) if n != node)


@given(clocks)
def test_wire_round_trip(a: VectorClock) -> None:
    wire = a.to_dict()
    assert all(v > 0 for v in wire.values())
    assert VectorClock.from_dict(wire) == a
    wire[99] = 5  # the dict is a copy: mutating it cannot change the clock
    assert a[99] == 0


def test_zero_entries_do_not_matter() -> None:
    assert VectorClock({1: 0, 2: 3}) == VectorClock({2: 3})
    assert hash(VectorClock({1: 0, 2: 3})) == hash(VectorClock({2: 3}))
    assert len(VectorClock({1: 0})) == 0
    assert VectorClock({1: 0}).to_dict() == {}


@pytest.mark.parametrize(
    "bad, error",
    [({1: -1}, ValueError), ({"a": 1}, TypeError), ({1: 1.5}, TypeError), ({1: True}, TypeError)],
)
def test_from_dict_rejects_bad_peer_input(
    bad: dict[object, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        VectorClock.from_dict(bad)  # type: ignore[arg-type]


def test_immutable() -> None:
    a = VectorClock({1: 1})
    a.increment(1)
    a.merge(VectorClock({2: 7}))
    assert a == VectorClock({1: 1})
    with pytest.raises(AttributeError):
        a.extra = 1  # type: ignore[attr-defined]


class _Process:
    """A process in the replayed scenario: the vector-clock update rules."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.clock = VectorClock()

    def local(self) -> VectorClock:
        self.clock = self.clock.increment(self.pid)
        return self.clock

    def send(self) -> VectorClock:
        return self.local()  # the message carries the send event's stamp

    def receive(self, stamp: VectorClock) -> VectorClock:
        self.clock = self.clock.merge(stamp).increment(self.pid)
        return self.clock


def test_three_process_exchange() -> None:
    """P1, P2, P3 in the textbook figure's style:

    P1: a(local)   b(send m1 to P2)                       f(recv m3)
    P2:                  c(recv m1)  d(send m2 to P3)  e(send m3 to P1)
    P3: g(local)                          h(recv m2)     i(local)
    """
    p1, p2, p3 = _Process(1), _Process(2), _Process(3)
    a = p1.local()
    g = p3.local()
    b = m1 = p1.send()
    c = p2.receive(m1)
    d = m2 = p2.send()
    h = p3.receive(m2)
    e = m3 = p2.send()
    f = p1.receive(m3)
    i = p3.local()

    assert a == VectorClock({1: 1})
    assert b == VectorClock({1: 2})
    assert c == VectorClock({1: 2, 2: 1})
    assert d == VectorClock({1: 2, 2: 2})
    assert h == VectorClock({1: 2, 2: 2, 3: 2})
    assert f == VectorClock({1: 3, 2: 3})
    assert i == VectorClock({1: 2, 2: 2, 3: 3})

    # Causal chains: program order, send -> receive, and transitively.
    for early, late in [(a, b), (b, c), (c, d), (d, h), (a, h), (b, f), (e, f), (g, h), (g, i)]:
        assert early.compare(late) is Order.BEFORE
        assert late.compare(early) is Order.AFTER
    # Independent events: no message path links them.
    for x, y in [(a, g), (b, g), (c, g), (e, h), (e, i), (f, h), (f, i), (d, g)]:
        assert x.compare(y) is Order.CONCURRENT
        assert y.compare(x) is Order.CONCURRENT
