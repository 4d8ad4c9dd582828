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

Two refinements keep real histories cheap:

* a candidate the model calls read-only (a completed read) that is legal in
  the current state is linearized at once and is not a branch point: it can
  be moved to the front of any linearization of the rest, since nothing left
  precedes it in real time and it changes no state.  If that successor was
  already explored, the configuration itself is dead;
* the linearized set is stored relative to the oldest completed operation
  not yet linearized (see `_Key`), so a memo entry costs as many bits as the
  history is concurrent, not as long as it is.

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
_FRESH = -2  # walk position: a configuration just reached, not yet scanned
_DEAD = -3  # walk position: this configuration is known to fail; backtrack
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


# The memo key of a configuration: (f, window, pend, state).  Completed
# operations are ranked by call time; f is the lowest rank not yet
# linearized and bit k of `window` says whether rank f + k is.  Every
# operation linearized beyond f was called before f returned, so `window` is
# as wide as the history is concurrent, not as long as it is; pending
# operations have their own ranks and mask `pend`.
_Key = tuple[int, int, int, S]


def _advance(f: int, window: int, pend: int, rank: int, pending: bool) -> tuple[int, int, int]:
    """(f, window, pend) after linearizing the operation of this rank."""
    if pending:
        return f, window, pend | (1 << rank)
    window |= 1 << (rank - f)
    if rank == f:
        ones = (~window & (window + 1)).bit_length() - 1  # the low run of set bits
        return f + ones, window >> ones, pend
    return f, window, pend


class _Search(Generic[S]):
    """One partition's search; `run` is the whole algorithm."""

    def __init__(self, ops: Sequence[Operation], model: Model[S], clock: Clock, deadline: float):
        self.ops = ops
        self.model = model
        self.clock = clock
        self.deadline = deadline
        self.links = _Links(ops)
        self.read_only = [model.read_only(op) for op in ops]  # by op index
        self.pending = [op.pending for op in ops]  # by op index
        self.rank = _ranks(ops)  # by op index; see _Key
        self.completed = self.pending.count(False)
        self.best_depth = -1  # deepest stack seen so far
        self.best_prefix: tuple[int, ...] = ()  # op indices at that depth
        self.best_state: object = None
        self.blocked: int | None = None  # first blocked op at best depth
        self.candidates: tuple[int, ...] = ()

    def run(self) -> _Outcome:
        ops, links, step = self.ops, self.links, self.model.step
        rank, pending = self.rank, self.pending
        state = self.model.init()
        f = window = pend = 0  # the linearized set, encoded as in _Key
        # (call node, then the configuration before it: state, f, window, pend; forced)
        stack: list[tuple[int, S, int, int, int, bool]] = []
        seen: set[_Key[S]] = set()
        self._note_depth(stack, state)
        entry, steps = _FRESH, 0
        while f < self.completed:
            steps += 1
            if steps % _CHECK_EVERY == 0 and self.clock() >= self.deadline:
                return _Outcome(Verdict.TIMEOUT, len(seen))
            forced = False
            if entry == _FRESH:
                # A new configuration: a legal read is taken without branching.
                entry = self._legal_read(state)
                if entry == _END:
                    entry = links.nxt[_HEAD]
                    continue
                forced = True
            if entry != _DEAD and links.is_call[entry]:
                op_i = links.op_of[entry]
                legal, after = step(state, ops[op_i])
                if legal:
                    memo = (*_advance(f, window, pend, rank[op_i], pending[op_i]), after)
                    if memo not in seen:
                        seen.add(memo)
                        stack.append((entry, state, f, window, pend, forced))
                        f, window, pend, state = memo
                        links.lift(entry)
                        if len(stack) > self.best_depth:
                            self._note_depth(stack, state)
                        entry = _FRESH
                        continue
                # An explored read means this whole configuration was explored.
                entry = _DEAD if forced else links.nxt[entry]
                continue
            # A return (or a dead end): the last choice was wrong.
            if len(stack) == self.best_depth and self.blocked is None:
                self._note_block()
            if not stack:
                return _Outcome(Verdict.VIOLATION, len(seen), self._failure())
            entry, state, f, window, pend, forced = stack.pop()
            links.unlift(entry)
            entry = _DEAD if forced else links.nxt[entry]
        return _Outcome(Verdict.OK, len(seen))

    def _legal_read(self, state: S) -> int:
        """A candidate that is read-only and legal in `state`, or _END.

        Taking it first loses no linearization: it may move to the front of any
        order of the remaining operations, since nothing remaining precedes it in
        real time and it leaves the state as it found it.  So it is not a branch.
        """
        links, ops, step, read_only = self.links, self.ops, self.model.step, self.read_only
        node: int = links.nxt[_HEAD]
        while node != _END and links.is_call[node]:
            op_i = links.op_of[node]
            if read_only[op_i] and step(state, ops[op_i])[0]:
                return node
            node = links.nxt[node]
        return _END

    def _note_depth(self, stack: list[tuple[int, S, int, int, int, bool]], state: S) -> None:
        self.best_depth = len(stack)
        self.best_prefix = tuple(self.links.op_of[entry[0]] for entry in stack)
        self.best_state = state
        self.blocked = None

    def _note_block(self) -> None:
        """Remember the first return's op (blocked) and the calls before it."""
        links = self.links
        calls: list[int] = []
        node = links.nxt[_HEAD]
        while node != _END and links.is_call[node]:
            calls.append(links.op_of[node])
            node = links.nxt[node]
        self.blocked = links.op_of[node] if node != _END else None
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


def _ranks(ops: Sequence[Operation]) -> list[int]:
    """Completed ops ranked by call time, pending ops separately (see _Key)."""
    ranks = [0] * len(ops)
    for group in (False, True):
        chosen = sorted((op.call, i) for i, op in enumerate(ops) if op.pending is group)
        for r, (_, i) in enumerate(chosen):
            ranks[i] = r
    return ranks


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
    text = f"linearizable: {len(ops)} operations in {len(parts)} partitions"
    total = len(parts)
    return CheckResult(Verdict.OK, text, None, (), total, total, explored, clock() - start)


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
