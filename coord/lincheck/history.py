"""Histories of client operations for the linearizability checker.

An `Operation` is one call as a client saw it: who, what, the result, and the
interval [call, ret] of the client's own clock readings between sending the
request and receiving the reply.  Invariants:

* call is finite and call <= ret;
* ret == math.inf exactly when the outcome is unknown (the client timed out,
  or the history ended first): such an operation is *pending* — it may have
  taken effect at any instant after `call`, or never, and its `output` is
  ignored;
* times of different clients must be readings of one clock (in tests the
  simulator's; across processes, one monotonic clock on the test host),
  because real-time order is decided by comparing them.

Two operations are ordered only when one returned strictly before the other
was called (a.ret < b.call); equal times count as overlapping, so the checker
never reports a violation that rests on a tie of clock readings.

`History` is a recorder for test drivers: `invoke` before sending, then
`complete` on a reply, `discard` when the operation definitely did not take
effect (e.g. rejected before it reached the log), or nothing at all when the
outcome is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import NewType

ClientId = NewType("ClientId", int)
OpId = NewType("OpId", int)

PENDING = math.inf  # the return time of an operation whose outcome is unknown


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation with its real-time interval (see module docstring)."""

    client: ClientId
    kind: str  # interpreted by the model, e.g. "get", "put", "delete", "cas"
    key: Hashable  # the model partitions on this (None for unkeyed models)
    input: object  # the argument, e.g. the value of a put
    output: object  # the result the client saw; ignored when pending
    call: float
    ret: float = PENDING

    def __post_init__(self) -> None:
        if not math.isfinite(self.call):
            raise ValueError(f"operation call time must be finite, got {self.call}")
        if self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before its call ({self.call})")

    @property
    def pending(self) -> bool:
        return self.ret == PENDING

    def __str__(self) -> str:
        arg = "" if self.input is None else f", {self.input!r}"
        result = "?" if self.pending else repr(self.output)
        end = "..." if self.pending else repr(self.ret)
        call = f"{self.kind}({self.key!r}{arg})"
        return f"client {self.client} {call} -> {result} @[{self.call!r}, {end}]"


@dataclass(slots=True)
class _Open:
    """An invoked operation still waiting for its reply."""

    client: ClientId
    kind: str
    key: Hashable
    input: object
    call: float


class History:
    """Records operations as a test driver issues them; see the module docstring."""

    __slots__ = ("_done", "_next_id", "_open")

    def __init__(self) -> None:
        self._done: dict[OpId, Operation] = {}  # completed (or explicitly pending) ops
        self._open: dict[OpId, _Open] = {}  # invoked, no reply yet
        self._next_id = 0  # ids are handed out in invocation order

    def invoke(self, client: ClientId, kind: str, key: Hashable, input: object, at: float) -> OpId:
        if not math.isfinite(at):
            raise ValueError(f"invocation time must be finite, got {at}")
        op_id = OpId(self._next_id)
        self._next_id += 1
        self._open[op_id] = _Open(client, kind, key, input, at)
        return op_id

    def complete(self, op_id: OpId, output: object, at: float) -> Operation:
        """The reply arrived at `at` carrying `output`."""
        o = self._open.pop(op_id)
        op = Operation(o.client, o.kind, o.key, o.input, output, o.call, at)
        self._done[op_id] = op
        return op

    def unknown(self, op_id: OpId) -> Operation:
        """The client gave up waiting: the operation may or may not take effect."""
        o = self._open.pop(op_id)
        op = Operation(o.client, o.kind, o.key, o.input, None, o.call, PENDING)
        self._done[op_id] = op
        return op

    def discard(self, op_id: OpId) -> None:
        """The operation definitely had no effect: drop it from the history."""
        del self._open[op_id]

    def add(self, op: Operation) -> None:
        """Record an operation built elsewhere (e.g. a hand-written history)."""
        self._done[OpId(self._next_id)] = op
        self._next_id += 1

    def operations(self) -> list[Operation]:
        """All recorded operations in invocation order; still-open ones as pending."""
        ops: dict[OpId, Operation] = dict(self._done)
        for op_id, o in self._open.items():
            ops[op_id] = Operation(o.client, o.kind, o.key, o.input, None, o.call, PENDING)
        return [ops[i] for i in sorted(ops)]

    def __len__(self) -> int:
        return len(self._done) + len(self._open)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations())
