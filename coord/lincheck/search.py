"""The linearizability search: Wing & Gong (1993) with Lowe's memoisation
(Lowe 2017, "Testing for linearizability"), as an explicit iterative loop.

For one partition the operations' call and return events are put in one
time-ordered, doubly linked list (calls before returns at equal times, so
ties overlap).  The search walks the list from the front:

* at a call, it tries to linearize that operation next: if the model accepts
  it and the pair (set of linearized operations, resulting state) has not
  been seen before, the operation's two events are unlinked ("lifted"), the
  choice is pushed on an explicit stack, and the walk restarts at the front;
* at a return, the operation returned before being linearized, so the last
  choice was wrong: pop it, relink its events and try the next candidate.

Invariants: the list holds exactly the events of operations not on the
stack; the first return in the list belongs to the earliest-returning
operation not yet linearized, so every call before it is a legal candidate
under real-time order.  The memo set makes the search visit each (set,
state) pair at most once (Lowe's optimisation; sound because what can follow
depends only on that pair).  A pending operation's return is at +inf, so it
stays a candidate forever and may also never be linearized: the search
succeeds once every *completed* operation is linearized.

The budget is enforced with the injected clock between partitions and every
`_CHECK_EVERY` search steps; running out gives TIMEOUT, which is never OK.
A search that completes returns its definitive verdict.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from coord.lincheck.history import History, Operation
from coord.lincheck.model import Model, Partition

S = TypeVar("S", bound=Hashable)
Clock = Callable[[], float]

_CHECK_EVERY = 1024  # search steps between clock readings: cheap, yet prompt
_HEAD = 0  # index of the list's sentinel node
_END = -1  # "no node" in the prev/next arrays
_SHOW_PREFIX = 20  # prefix entries printed in an explanation (all are in the result)


class Verdict(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    TIMEOUT = "timeout"  # no verdict: the budget ran out; must never count as a pass


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    explanation: str
    partition: str | None  # the violating or unfinished partition's label
    operations: tuple[Operation, ...]  # violation: prefix, blocked op, candidates
    partitions_checked: int  # partitions with a complete, linearizable search
    partitions_total: int
    states_explored: int  # memoised (set, state) pairs over all partitions
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


class LinearizabilityError(AssertionError):
    """Raised by `assert_linearizable`; carries the full result."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.explanation)
        self.result = result


class NotLinearizable(LinearizabilityError):
    pass


class CheckTimedOut(LinearizabilityError):
    pass


class _Links:
    """The dancing-links event list, as parallel arrays for speed."""

    __slots__ = ("is_call", "match", "nxt", "op_of", "prv")

    def __init__(self, ops: Sequence[Operation]) -> None:
        events = sorted(
            [(op.call, 0, i) for i, op in enumerate(ops)]
            + [(op.ret, 1, i) for i, op in enumerate(ops)]
        )
        size = len(events) + 1  # node 0 is the sentinel
        self.op_of = [-1] * size  # node -> operation index
        self.is_call = [False] * size  # node -> call (True) or return event
        self.match = [_END] * size  # call node -> its return node
        call_node: dict[int, int] = {}
        for node, (_, kind, i) in enumerate(events, start=1):
            self.op_of[node] = i
            if kind == 0:
                self.is_call[node] = True
                call_node[i] = node
            else:
                self.match[call_node[i]] = node
        self.nxt = [*range(1, size), _END]
        self.prv = list(range(-1, size - 1))

    def lift(self, call: int) -> None:
        """Unlink an operation's call and return nodes (they keep their own links)."""
        nxt, prv = self.nxt, self.prv
        for node in (call, self.match[call]):
            nxt[prv[node]] = nxt[node]
            if nxt[node] != _END:
                prv[nxt[node]] = prv[node]

    def unlift(self, call: int) -> None:
        """Relink in the reverse order of `lift`, which restores the list exactly."""
        nxt, prv = self.nxt, self.prv
        for node in (self.match[call], call):
            nxt[prv[node]] = node
            if nxt[node] != _END:
                prv[nxt[node]] = node


@dataclass(frozen=True, slots=True)
class _Failure:
    prefix: tuple[Operation, ...]  # the longest linearizable prefix found
    state: object  # the model state after it
    blocked: Operation  # the op that returned before it could be linearized
    candidates: tuple[Operation, ...]  # calls that could have gone next


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: Verdict
    states: int
    failure: _Failure | None = None


class _Search(Generic[S]):
    """One partition's search; `run` is the whole algorithm."""

    def __init__(self, ops: Sequence[Operation], model: Model[S], clock: Clock, deadline: float):
        self.ops = ops
        self.model = model
        self.clock = clock
        self.deadline = deadline
        self.links = _Links(ops)
        self.best_depth = -1  # deepest stack seen so far
        self.best_prefix: tuple[int, ...] = ()  # op indices at that depth
        self.best_state: object = None
        self.blocked: int | None = None  # first blocked op at best depth
        self.candidates: tuple[int, ...] = ()

    def run(self) -> _Outcome:
        ops, links, step = self.ops, self.links, self.model.step
        state = self.model.init()
        linearized = 0  # bit i set: ops[i] is on the stack
        stack: list[tuple[int, S]] = []  # (call node, state before it)
        seen: set[tuple[int, S]] = set()
        left = sum(1 for op in ops if not op.pending)  # completed ops not yet linearized
        self._note_depth(stack, state)
        entry, steps = links.nxt[_HEAD], 0
        while left:
            steps += 1
            if steps % _CHECK_EVERY == 0 and self.clock() >= self.deadline:
                return _Outcome(Verdict.TIMEOUT, len(seen))
            op_i = links.op_of[entry]
            if links.is_call[entry]:
                legal, after = step(state, ops[op_i])
                memo = (linearized | (1 << op_i), after)
                if legal and memo not in seen:
                    seen.add(memo)
                    stack.append((entry, state))
                    linearized, state = memo
                    links.lift(entry)
                    left -= not ops[op_i].pending
                    if len(stack) > self.best_depth:
                        self._note_depth(stack, state)
                    entry = links.nxt[_HEAD]
                else:
                    entry = links.nxt[entry]
                continue
            # A return: ops[op_i] had to take effect by now and did not.
            if len(stack) == self.best_depth and self.blocked is None:
                self._note_block(entry)
            if not stack:
                return _Outcome(Verdict.VIOLATION, len(seen), self._failure())
            entry, state = stack.pop()
            op_i = links.op_of[entry]
            linearized &= ~(1 << op_i)
            links.unlift(entry)
            left += not ops[op_i].pending
            entry = links.nxt[entry]
        return _Outcome(Verdict.OK, len(seen))

    def _note_depth(self, stack: list[tuple[int, S]], state: S) -> None:
        self.best_depth = len(stack)
        self.best_prefix = tuple(self.links.op_of[node] for node, _ in stack)
        self.best_state = state
        self.blocked = None

    def _note_block(self, return_node: int) -> None:
        """Remember the blocked op and the calls that stood before its return."""
        links = self.links
        self.blocked = links.op_of[return_node]
        calls: list[int] = []
        node = links.nxt[_HEAD]
        while node != return_node:
            calls.append(links.op_of[node])  # only calls precede the first return
            node = links.nxt[node]
        self.candidates = tuple(calls)

    def _failure(self) -> _Failure:
        assert self.blocked is not None  # set on the way to exhausting the stack
        ops = self.ops
        return _Failure(
            prefix=tuple(ops[i] for i in self.best_prefix),
            state=self.best_state,
            blocked=ops[self.blocked],
            candidates=tuple(ops[i] for i in self.candidates),
        )


def check(
    history: History | Iterable[Operation],
    model: Model[S],
    time_budget_s: float,
    *,
    clock: Clock = time.monotonic,
) -> CheckResult:
    """Decide whether `history` is linearizable with respect to `model`.

    `clock` (seconds, monotonic) measures `time_budget_s`; inject a fake one
    to test the timeout path.  TIMEOUT means "unknown", never "passed".
    """
    if not time_budget_s >= 0:
        raise ValueError(f"time budget must be >= 0 seconds, got {time_budget_s}")
    start = clock()
    deadline = start + time_budget_s
    ops = history.operations() if isinstance(history, History) else list(history)
    parts = model.partition(ops)
    explored = 0
    for index, part in enumerate(parts):
        outcome = None
        if clock() < deadline:
            outcome = _Search(part.ops, model, clock, deadline).run()
            explored += outcome.states
        if outcome is None or outcome.verdict is Verdict.TIMEOUT:
            return _timed_out(
                part,
                index,
                len(parts),
                explored=explored,
                budget=time_budget_s,
                elapsed=clock() - start,
            )
        if outcome.failure is not None:
            return _violation(
                part,
                index,
                len(parts),
                explored=explored,
                failure=outcome.failure,
                elapsed=clock() - start,
            )
    return CheckResult(
        Verdict.OK,
        f"linearizable: {len(ops)} operations in {len(parts)} partitions",
        None,
        (),
        len(parts),
        len(parts),
        explored,
        clock() - start,
    )


def assert_linearizable(
    history: History | Iterable[Operation],
    model: Model[S],
    time_budget_s: float,
    *,
    clock: Clock = time.monotonic,
) -> CheckResult:
    """`check`, raising NotLinearizable on VIOLATION and CheckTimedOut on TIMEOUT."""
    result = check(history, model, time_budget_s, clock=clock)
    if result.verdict is Verdict.VIOLATION:
        raise NotLinearizable(result)
    if result.verdict is Verdict.TIMEOUT:
        raise CheckTimedOut(result)
    return result


def _timed_out(
    part: Partition, index: int, total: int, *, explored: int, budget: float, elapsed: float
) -> CheckResult:
    text = (
        f"no verdict: the {budget:g} s budget ran out while checking {part.label} "
        f"(partition {index + 1} of {total}, {len(part.ops)} operations); "
        f"a timed-out check is not a pass"
    )
    return CheckResult(Verdict.TIMEOUT, text, part.label, (), index, total, explored, elapsed)


def _violation(
    part: Partition, index: int, total: int, *, explored: int, failure: _Failure, elapsed: float
) -> CheckResult:
    involved = (*failure.prefix, failure.blocked, *failure.candidates)
    return CheckResult(
        Verdict.VIOLATION,
        _explain(part, index, total, failure),
        part.label,
        involved,
        index,
        total,
        explored,
        elapsed,
    )


def _explain(part: Partition, index: int, total: int, failure: _Failure) -> str:
    prefix = failure.prefix
    lines = [
        f"not linearizable: {part.label} "
        f"(partition {index + 1} of {total}, {len(part.ops)} operations)",
        f"longest linearizable prefix: {len(prefix)} operations, leaving state {failure.state!r}:",
    ]
    shown = prefix[-_SHOW_PREFIX:]
    if len(prefix) > len(shown):
        lines.append(f"  ... {len(prefix) - len(shown)} earlier operations")
    first = len(prefix) - len(shown) + 1
    lines += [f"  {first + n}. {op}" for n, op in enumerate(shown)] or ["  (none)"]
    lines.append(
        f"then {failure.blocked} must take effect before it returns, "
        "but no order of the operations that could still go next allows it:"
    )
    lines += [f"  - {op}" for op in failure.candidates] or ["  (none)"]
    return "\n".join(lines)
