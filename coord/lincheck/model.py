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

    def partition(self, ops: Sequence[Operation]) -> list[Partition]:
        by_key: dict[Hashable, list[Operation]] = {}  # insertion order: first use of a key
        for op in ops:
            _validate(op)
            if op.kind == "get" and op.pending:
                continue  # an unanswered read constrains nothing
            by_key.setdefault(op.key, []).append(op)
        return [Partition(f"key {key!r}", tuple(group)) for key, group in by_key.items()]


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
    if op.kind == "cas":
        _, new = _cas_args(op)
        if new is None:
            raise ValueError(f"cas cannot set a key to None (use delete): {op}")
        if not op.pending and not isinstance(op.output, bool):
            raise ValueError(f"a completed cas returns a bool: {op}")
