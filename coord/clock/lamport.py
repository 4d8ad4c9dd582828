"""Lamport's logical clock (Lamport 1978; the chapter's "Lamport timestamps").

Invariant: the value never decreases, and every local event (sending a
message included) gets a value strictly greater than any event that happened
before it on this node or on any node whose message we have received.
"""

from __future__ import annotations


class LamportClock:
    __slots__ = ("_time",)

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError("a Lamport clock starts at 0 or later")
        self._time = start  # the timestamp of the latest event on this node

    @property
    def time(self) -> int:
        return self._time

    def tick(self) -> int:
        """A local event (including a send): advance and return the event's stamp."""
        self._time += 1
        return self._time

    def observe(self, remote: int) -> int:
        """A receive of a message stamped `remote`: merge, then count the receive."""
        if remote < 0:
            raise ValueError(f"negative Lamport time {remote}")
        self._time = max(self._time, remote) + 1
        return self._time
