"""The linearizability checker: hand-made histories with known verdicts,
pending operations, per-key partitioning, a brute-force cross-check, histories
generated from real sequential executions (and deliberately broken ones), the
time budget, and a 3,000-operation performance case."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.lincheck import (
    PENDING,
    CheckResult,
    CheckTimedOut,
    ClientId,
    History,
    KvModel,
    NotLinearizable,
    Operation,
    Verdict,
    assert_linearizable,
    check,
)

BUDGET = 10.0  # seconds; generous, the real runs take milliseconds
KV = KvModel()


def get(c: int, key: str, out: object, call: float, ret: float = PENDING) -> Operation:
    return Operation(ClientId(c), "get", key, None, out, call, ret)


def put(c: int, key: str, value: object, call: float, ret: float = PENDING) -> Operation:
    return Operation(ClientId(c), "put", key, value, None, call, ret)


def delete(c: int, key: str, call: float, ret: float = PENDING) -> Operation:
    return Operation(ClientId(c), "delete", key, None, None, call, ret)


def cas(
    c: int, key: str, expected: object, new: object, out: object, call: float, ret: float = PENDING
) -> Operation:
    return Operation(ClientId(c), "cas", key, (expected, new), out, call, ret)


def verdict(ops: Sequence[Operation]) -> Verdict:
    return check(ops, KV, BUDGET).verdict


# -- known verdicts -------------------------------------------------------------


def test_empty_and_sequential_histories_are_linearizable() -> None:
    assert check([], KV, BUDGET).ok
    ops = [
        get(1, "x", None, 0, 1),
        put(1, "x", "a", 2, 3),
        get(2, "x", "a", 4, 5),
        cas(2, "x", "a", "b", True, 6, 7),
        cas(1, "x", "a", "c", False, 8, 9),
        delete(1, "x", 10, 11),
        get(2, "x", None, 12, 13),
    ]
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.OK and result.ok
    assert result.explanation == "linearizable: 7 operations in 1 partitions"


def test_concurrent_overlapping_writes_and_reads() -> None:
    # Two overlapping puts; reads during them may see either order, once.
    ops = [
        put(1, "x", 1, 0, 10),
        put(2, "x", 2, 0, 10),
        get(3, "x", 2, 1, 2),
        get(3, "x", 1, 3, 4),
        get(4, "x", None, 0.5, 0.6),  # before either took effect
        get(4, "x", 1, 11, 12),
    ]
    assert verdict(ops) is Verdict.OK


def test_reads_that_flip_back_are_a_violation() -> None:
    ops = [
        put(1, "x", 1, 0, 10),
        put(2, "x", 2, 0, 10),
        get(3, "x", 2, 1, 2),
        get(3, "x", 1, 3, 4),
        get(3, "x", 2, 5, 6),  # 2 was overwritten by 1 and never written again
    ]
    assert verdict(ops) is Verdict.VIOLATION


def test_stale_read_after_completed_write() -> None:
    ops = [put(1, "x", 1, 0, 1), put(1, "x", 2, 2, 3), get(2, "x", 1, 4, 5)]
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.VIOLATION and not result.ok
    assert result.partition == "key 'x'"
    assert "not linearizable: key 'x'" in result.explanation
    assert "longest linearizable prefix: 2 operations, leaving state 2" in result.explanation
    assert "client 2 get('x') -> 1 @[4, 5] must take effect" in result.explanation
    assert ops[2] in result.operations


def test_read_of_a_value_never_written() -> None:
    ops = [put(1, "x", 1, 0, 5), get(2, "x", 7, 1, 3)]
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.VIOLATION
    assert "get('x') -> 7" in result.explanation


def test_lost_update_through_cas() -> None:
    # Both clients read 0 and both claim their cas from 0 succeeded.
    ops = [
        put(1, "n", 0, 0, 1),
        get(1, "n", 0, 2, 3),
        get(2, "n", 0, 2, 3),
        cas(1, "n", 0, 1, True, 4, 8),
        cas(2, "n", 0, 1, True, 5, 9),
    ]
    assert verdict(ops) is Verdict.VIOLATION
    # The correct outcome: exactly one succeeds.
    fixed = [*ops[:4], cas(2, "n", 0, 1, False, 5, 9), get(3, "n", 1, 10, 11)]
    assert verdict(fixed) is Verdict.OK


def test_cas_semantics_against_absent_key() -> None:
    assert verdict([cas(1, "k", None, "a", True, 0, 1), get(1, "k", "a", 2, 3)]) is Verdict.OK
    assert verdict([cas(1, "k", None, "a", False, 0, 1)]) is Verdict.VIOLATION
    assert verdict([put(1, "k", "z", 0, 1), cas(1, "k", None, "a", True, 2, 3)]) is (
        Verdict.VIOLATION
    )


def test_equal_times_overlap() -> None:
    # A read called at the instant a put returns may precede it: ties never convict.
    assert verdict([put(1, "x", 1, 0, 1), get(2, "x", None, 1, 2)]) is Verdict.OK
    assert verdict([put(1, "x", 1, 0, 1), get(2, "x", None, 1.5, 2)]) is Verdict.VIOLATION


# -- pending (unknown outcome) operations ------------------------------------------


def test_pending_write_may_take_effect() -> None:
    assert verdict([put(1, "x", 1, 0), get(2, "x", 1, 5, 6)]) is Verdict.OK


def test_pending_write_may_never_take_effect() -> None:
    assert verdict([put(1, "x", 1, 0), get(2, "x", None, 5, 6)]) is Verdict.OK


def test_pending_write_may_take_effect_late() -> None:
    ops = [put(1, "x", 1, 0), get(2, "x", None, 5, 6), get(2, "x", 1, 100, 101)]
    assert verdict(ops) is Verdict.OK


def test_pending_write_cannot_be_undone() -> None:
    ops = [put(1, "x", 1, 0), get(2, "x", 1, 5, 6), get(2, "x", None, 7, 8)]
    assert verdict(ops) is Verdict.VIOLATION


def test_pending_write_cannot_take_effect_before_its_call() -> None:
    assert verdict([get(2, "x", 1, 0, 5), put(1, "x", 1, 10)]) is Verdict.VIOLATION


def test_pending_cas_either_way() -> None:
    base = [put(1, "x", "a", 0, 1), cas(2, "x", "a", "b", None, 2)]
    assert verdict([*base, get(3, "x", "b", 5, 6)]) is Verdict.OK
    assert verdict([*base, get(3, "x", "a", 5, 6)]) is Verdict.OK
    assert verdict([*base, get(3, "x", "c", 5, 6)]) is Verdict.VIOLATION


def test_unobserved_pending_writes_are_pruned() -> None:
    ops = [
        put(1, "x", "seen", 0),  # pending, but a read returned its value
        put(2, "x", "unseen", 0),  # pending and never observed: cannot matter
        delete(3, "x", 0),  # pending; a read returned None after it was called
        get(4, "x", "seen", 1, 2),
        get(4, "x", None, 3, 4),
    ]
    (part,) = KV.partition(ops)
    assert "unseen" not in [op.input for op in part.ops]
    assert len(part.ops) == 4
    assert verdict(ops) is Verdict.OK


def test_pending_write_can_explain_a_failed_cas() -> None:
    # Without the pending put the cas would have found 1 and succeeded.
    ops = [put(1, "x", 1, 0, 1), put(2, "x", 2, 2), cas(3, "x", 1, 3, False, 3, 4)]
    assert verdict(ops) is Verdict.OK
    assert verdict([ops[0], ops[2]]) is Verdict.VIOLATION


def test_pending_write_called_as_a_read_returns_may_explain_it() -> None:
    # Equal times overlap, so the put may precede the read.
    assert verdict([put(1, "x", 1, 5), get(2, "x", 1, 0, 5)]) is Verdict.OK
    assert verdict([put(1, "x", 1, 5.5), get(2, "x", 1, 0, 5)]) is Verdict.VIOLATION


def test_pending_reads_are_ignored() -> None:
    assert verdict([put(1, "x", 1, 0, 1), get(2, "x", "anything", 0)]) is Verdict.OK


def test_history_recorder() -> None:
    h = History()
    a = h.invoke(ClientId(1), "put", "x", 1, at=0.0)
    b = h.invoke(ClientId(2), "put", "x", 2, at=0.5)  # times out: unknown
    c = h.invoke(ClientId(3), "put", "x", 3, at=0.6)  # rejected: no effect
    d = h.invoke(ClientId(4), "put", "x", 4, at=0.7)  # still open at the end
    h.complete(a, None, at=1.0)
    h.unknown(b)
    h.discard(c)
    e = h.invoke(ClientId(1), "get", "x", None, at=2.0)
    h.complete(e, 2, at=3.0)
    ops = h.operations()
    assert len(h) == len(ops) == 4
    assert [op.client for op in ops] == [1, 2, 4, 1]
    assert [op.pending for op in ops] == [False, True, True, False]
    assert check(h, KV, BUDGET).ok  # b took effect after a
    f = h.invoke(ClientId(1), "get", "x", None, at=4.0)
    h.complete(f, 3, at=5.0)  # only the discarded put wrote 3
    assert check(h, KV, BUDGET).verdict is Verdict.VIOLATION
    _ = d


def test_malformed_operations_are_refused() -> None:
    with pytest.raises(ValueError):
        put(1, "x", 1, 5, 4)  # returns before its call
    with pytest.raises(ValueError):
        check([Operation(ClientId(1), "incr", "x", 1, None, 0, 1)], KV, BUDGET)
    with pytest.raises(ValueError):
        check([put(1, "x", None, 0, 1)], KV, BUDGET)
    with pytest.raises(ValueError):
        check([cas(1, "x", 1, 2, "yes", 0, 1)], KV, BUDGET)
    with pytest.raises(ValueError):
        check([], KV, -1.0)


# -- partitioning ---------------------------------------------------------------


def test_histories_are_checked_per_key() -> None:
    ops = [
        put(1, "x", 1, 0, 1),
        put(1, "y", 1, 0, 1),
        get(2, "x", 1, 2, 3),
        put(2, "y", 2, 2, 3),
        get(3, "y", 1, 4, 5),  # stale: y was 2 since t=3
        get(3, "x", 1, 4, 5),
    ]
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.VIOLATION
    assert result.partition == "key 'y'"
    assert (result.partitions_checked, result.partitions_total) == (1, 2)
    assert all(op.key == "y" for op in result.operations)
    # The same reads on independent keys are fine: x's value does not leak into y.
    assert verdict([put(1, "x", 1, 0, 1), get(2, "y", None, 2, 3)]) is Verdict.OK


# -- brute-force cross-check --------------------------------------------------------


def _brute_force(ops: Sequence[Operation]) -> bool:
    """The definition, enumerated: some order of all completed operations and
    any subset of the pending ones, consistent with real time, that the
    sequential map accepts.  Exponential; only for tiny histories."""
    by_key: dict[Hashable, list[Operation]] = {}
    for op in ops:  # grouped here, not by KV.partition, whose pruning is under test too
        by_key.setdefault(op.key, []).append(op)
    return all(
        _brute_partition(group, frozenset(range(len(group))), KV.init())
        for group in by_key.values()
    )


def _brute_partition(ops: Sequence[Operation], left: frozenset[int], state: Hashable) -> bool:
    if all(ops[i].pending for i in left):
        return True  # the remaining pending ones never took effect
    for i in left:
        if any(ops[j].ret < ops[i].call for j in left):
            continue  # some remaining operation finished before i started
        legal, after = KV.step(state, ops[i])
        if legal and _brute_partition(ops, left - {i}, after):
            return True
    return False


values = st.sampled_from([1, 2, 3])


@st.composite
def small_ops(draw: st.DrawFn) -> Operation:
    kind = draw(st.sampled_from(["get", "get", "put", "put", "delete", "cas"]))
    key = draw(st.sampled_from(["x", "x", "y"]))
    call = draw(st.integers(0, 12))
    ret = PENDING if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 6))
    client = ClientId(draw(st.integers(1, 4)))
    if kind == "get":
        return Operation(client, kind, key, None, draw(st.none() | values), call, ret)
    if kind == "put":
        return Operation(client, kind, key, draw(values), None, call, ret)
    if kind == "delete":
        return Operation(client, kind, key, None, None, call, ret)
    arg = (draw(st.none() | values), draw(values))
    return Operation(client, kind, key, arg, draw(st.booleans()), call, ret)


@settings(max_examples=300, deadline=None)
@given(st.lists(small_ops(), max_size=7))
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = Verdict.OK if _brute_force(ops) else Verdict.VIOLATION
    assert check(ops, KV, BUDGET).verdict is expected


# -- histories generated from a real sequential execution ------------------------------


def _generate(
    rng: random.Random,
    clients: int,
    keys: int,
    per_client: int,
    pending_rate: float = 0.0,
    weights: Sequence[int] = (4, 3, 2, 1),  # get, put, cas, delete
) -> list[Operation]:
    """Each operation takes effect at a point inside its interval; the outputs
    come from running them on a dict in that order, so the history is
    linearizable by construction.  Written values are unique."""
    plans: list[tuple[float, int, float, float]] = []  # (effect time, client, call, ret)
    for client in range(clients):
        t = rng.uniform(0, 2)
        for _ in range(per_client):
            call = t + rng.uniform(0, 1)
            effect = call + rng.uniform(0, 2)
            ret = effect + rng.uniform(0, 2)
            plans.append((effect, client, call, ret))
            t = ret
    plans.sort()
    store: dict[str, object] = {}
    ops: list[Operation] = []
    for written, (_, client, call, ret) in enumerate(plans, start=1):
        key = f"k{rng.randrange(keys)}"
        kind = rng.choices(["get", "put", "cas", "delete"], weights)[0]
        pending = rng.random() < pending_rate
        takes_effect = not pending or rng.random() < 0.5
        arg, out = _execute(rng, store, kind, key, f"v{written}", takes_effect)
        ops.append(
            Operation(ClientId(client), kind, key, arg, out, call, PENDING if pending else ret)
        )
    rng.shuffle(ops)  # the checker must not depend on input order
    return ops


@pytest.mark.parametrize("seed", range(8))
def test_generated_histories_are_linearizable(seed: int) -> None:
    ops = _generate(random.Random(seed), clients=5, keys=3, per_client=40, pending_rate=0.05)
    result = assert_linearizable(ops, KV, BUDGET)
    assert result.partitions_total == 3


@pytest.mark.parametrize("seed", range(8))
def test_mutated_read_of_unwritten_value_is_caught(seed: int) -> None:
    ops = _generate(random.Random(seed), clients=5, keys=3, per_client=40)
    victim = next(i for i, op in enumerate(ops) if op.kind == "get")
    ops[victim] = _with_output(ops[victim], "never-written")
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.VIOLATION
    assert result.partition == f"key {ops[victim].key!r}"
    with pytest.raises(NotLinearizable) as caught:
        assert_linearizable(ops, KV, BUDGET)
    assert caught.value.result.verdict is Verdict.VIOLATION


@pytest.mark.parametrize("seed", range(8))
def test_mutated_stale_read_is_caught(seed: int) -> None:
    ops = _generate(random.Random(seed), clients=5, keys=3, per_client=40)
    victim, stale = _find_stale_read(ops)
    ops[victim] = _with_output(ops[victim], stale)
    assert check(ops, KV, BUDGET).verdict is Verdict.VIOLATION


def _execute(
    rng: random.Random, store: dict[str, object], kind: str, key: str, new: str, effect: bool
) -> tuple[object, object]:
    """Run one operation on the real dict (only if `effect`): (input, output)."""
    if kind == "get":
        return None, store.get(key)
    if kind == "put":
        if effect:
            store[key] = new
        return new, None
    if kind == "delete":
        if effect:
            store.pop(key, None)
        return None, None
    current = store.get(key)
    written_so_far = int(new[1:])
    expected = current if rng.random() < 0.6 else f"v{rng.randrange(1, written_so_far + 1)}"
    if effect and current == expected:
        store[key] = new
    return (expected, new), current == expected


def _with_output(op: Operation, output: object) -> Operation:
    return Operation(op.client, op.kind, op.key, op.input, output, op.call, op.ret)


def _find_stale_read(ops: Sequence[Operation]) -> tuple[int, object]:
    """A completed get R, and a value v written only by a put P, where P
    returned before another put Q began and Q returned before R began: every
    linearization orders P < Q < R, so R returning v is certainly wrong."""
    puts = [op for op in ops if op.kind == "put" and not op.pending]
    for (r_index, r), p, q in itertools.product(enumerate(ops), puts, puts):
        if r.kind != "get" or r.pending or not (r.key == p.key == q.key):
            continue
        if p.ret < q.call and q.ret < r.call and r.output != p.input:
            return r_index, p.input
    raise AssertionError("the generator produced no stale-read opportunity")


# -- time budget -----------------------------------------------------------------


def _hard_history(n: int) -> list[Operation]:
    """n overlapping puts, then a read of a value none wrote: proving the
    violation means trying ~n * 2**(n-1) (set, last value) pairs."""
    ops = [put(c, "x", c, 0, 100) for c in range(n)]
    return [*ops, get(n, "x", "never", 200, 300)]


class _StepClock:
    """A fake monotonic clock that advances `step` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


def test_budget_exhausted_before_start_is_timeout_not_ok() -> None:
    ops = [put(1, "x", 1, 0, 1), get(1, "x", 1, 2, 3)]  # trivially linearizable
    result = check(ops, KV, 0.5, clock=_StepClock(1.0))
    assert result.verdict is Verdict.TIMEOUT and not result.ok
    assert "not a pass" in result.explanation
    with pytest.raises(CheckTimedOut):
        assert_linearizable(ops, KV, 0.5, clock=_StepClock(1.0))


def test_budget_exhausted_during_search_is_timeout() -> None:
    clock = _StepClock(1.0)
    # start=1, deadline=3.5; the partition starts at 2; the search reads 3, then 4.
    result = check(_hard_history(20), KV, 2.5, clock=clock)
    assert result.verdict is Verdict.TIMEOUT
    assert result.partition == "key 'x'"
    assert result.partitions_checked == 0
    assert result.states_explored > 100  # the search ran, then was stopped
    assert clock.readings == 5  # start, partition, two in-search checks, elapsed


def test_tiny_real_budget_times_out_and_assert_raises() -> None:
    with pytest.raises(CheckTimedOut) as caught:
        assert_linearizable(_hard_history(25), KV, 0.05)
    assert caught.value.result.verdict is Verdict.TIMEOUT
    assert isinstance(caught.value, AssertionError)  # pytest reports it as a failure


def test_hard_history_is_decided_when_small() -> None:
    result: CheckResult = check(_hard_history(8), KV, BUDGET)
    assert result.verdict is Verdict.VIOLATION
    assert "get('x') -> 'never'" in result.explanation


# -- performance sanity -----------------------------------------------------------------


def test_three_thousand_operations_over_fifty_keys() -> None:
    ops = _generate(random.Random(42), clients=8, keys=50, per_client=375, pending_rate=0.01)
    assert len(ops) == 3000
    result = check(ops, KV, BUDGET)
    assert result.verdict is Verdict.OK, result.explanation
    assert result.partitions_total == 50
    victim = max(i for i, op in enumerate(ops) if op.kind == "get" and not op.pending)
    ops[victim] = _with_output(ops[victim], "never-written")
    assert check(ops, KV, BUDGET).verdict is Verdict.VIOLATION
