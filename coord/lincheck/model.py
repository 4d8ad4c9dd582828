"""Sequential specifications for the linearizability checker.

A `Model` says what one operation does to an abstract state and whether the
output the client saw is one the object could have given; states are
immutable and hashable, because the search memoises (linearized set, state)
pairs.  `partition` splits a history into independent sub-histories — a
model may do that only when it is P-compositional (Horn & Kroening 2015):
the whole history is linearizable iff every part is.  A key-value store is:
operations on different keys never constrain each other.

KvModel semantics (per key; a key's state is its value, None when absent):

    get(key)                -> the value, or None when absent
    put(key, value)         -> output ignored; value must not be None
    delete(key)             -> output ignored
    cas(key, (exp, new))    -> True and set to `new` iff the value == exp
                               (exp None means "absent"), else False

A pending operation (unknown outcome) is allowed any output: a pending cas
takes effect exactly when it matches at its linearization point, and not
linearizing it at all models "it never happened".  Pending gets constrain
nothing and are dropped when partitioning.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from coord.lincheck.history import Operation

S = TypeVar("S", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Partition:
    """An independent sub-history and the name used for it in reports."""

    label: str
    ops: tuple[Operation, ...]


class Model(Protocol[S]):
    """A sequential specification; see the module docstring."""

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, op: Operation) -> tuple[bool, S]:
        """(whether `op` with its recorded output is legal in `state`, the next state)."""
        ...

    def read_only(self, op: Operation) -> bool:
        """True only if `op` leaves unchanged every state in which it is legal
        (a completed read); the search then never branches on it.  False is
        always safe, just slower."""
        ...

    def partition(self, ops: Sequence[Operation]) -> list[Partition]:
        """Independent sub-histories (return [Partition("all", ops)] if not P-compositional)."""
        ...


KV_KINDS = frozenset({"get", "put", "delete", "cas"})


class KvModel:
    """A linearizable key-value map with get/put/delete/cas, checked per key."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        kind = op.kind
        if kind == "get":
            return (op.pending or op.output == state), state
        if kind == "put":
            return True, op.input
        if kind == "delete":
            return True, None
        if kind == "cas":
            expected, new = _cas_args(op)
            matches = state == expected
            if op.pending:
                return True, (new if matches else state)
            return (op.output == matches), (new if matches else state)
        raise ValueError(f"KvModel has no operation {kind!r}")

    def read_only(self, op: Operation) -> bool:
        # A failed cas changes nothing wherever it is legal; a pending one might succeed.
        if op.pending:
            return False
        return op.kind == "get" or (op.kind == "cas" and op.output is False)

    def partition(self, ops: Sequence[Operation]) -> list[Partition]:
        by_key: dict[Hashable, list[Operation]] = {}  # insertion order: first use of a key
        for op in ops:
            _validate(op)
            if op.kind == "get" and op.pending:
                continue  # an unanswered read constrains nothing
            by_key.setdefault(op.key, []).append(op)
        return [
            Partition(f"key {key!r}", tuple(_without_unobservable_writes(group)))
            for key, group in by_key.items()
        ]


def _without_unobservable_writes(group: list[Operation]) -> list[Operation]:
    """Drop pending writes that no operation could ever have observed.

    Each pending operation stays a candidate for the rest of the search and
    doubles its state space, so this matters.  A pending put/delete/cas
    writing v can be dropped when no op that may follow it (one returning at
    or after its call) reads v, no cas may expect v, and no completed cas
    failed: then in any linearization that includes it, the ops that see v
    are only pending cas no-ops (droppable too) until a put or delete
    overwrites v, so leaving it out yields a linearization as well.
    """
    last_seen: dict[Hashable, float] = {}  # value -> latest return of an op observing it
    last_failed_cas = -math.inf  # latest return of a completed, failed cas
    for op in group:
        if op.kind == "get" and not op.pending:
            observed: Hashable = op.output  # validated hashable
            last_seen[observed] = max(last_seen.get(observed, -math.inf), op.ret)
        elif op.kind == "cas":
            expected, _ = _cas_args(op)
            last_seen[expected] = max(last_seen.get(expected, -math.inf), op.ret)
            if op.output is False and not op.pending:
                last_failed_cas = max(last_failed_cas, op.ret)

    def observable(op: Operation) -> bool:
        if not op.pending:
            return True
        written = _written_value(op)
        return last_seen.get(written, -math.inf) >= op.call or last_failed_cas >= op.call

    return [op for op in group if observable(op)]


def _written_value(op: Operation) -> Hashable:
    if op.kind == "put":
        value: Hashable = op.input  # validated hashable
        return value
    if op.kind == "cas":
        return _cas_args(op)[1]
    return None  # delete


def _cas_args(op: Operation) -> tuple[Hashable, Hashable]:
    arg = op.input
    if not (isinstance(arg, tuple) and len(arg) == 2):
        raise ValueError(f"cas input must be (expected, new), got {arg!r}")
    expected, new = arg
    return expected, new


def _validate(op: Operation) -> None:
    """Reject malformed operations up front, with the operation in the message."""
    if op.kind not in KV_KINDS:
        raise ValueError(f"KvModel has no operation {op.kind!r}: {op}")
    if op.kind == "put" and (op.input is None or not isinstance(op.input, Hashable)):
        raise ValueError(f"put needs a hashable, non-None value: {op}")
    if op.kind == "get" and not op.pending and not isinstance(op.output, Hashable):
        raise ValueError(f"a get returns a hashable value or None: {op}")
    if op.kind == "cas":
        _, new = _cas_args(op)
        if new is None:
            raise ValueError(f"cas cannot set a key to None (use delete): {op}")
        if not op.pending and not isinstance(op.output, bool):
            raise ValueError(f"a completed cas returns a bool: {op}")
