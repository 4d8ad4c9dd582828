"""The in-memory twin of the driver's `Transport`: services in one trio process.

`MemoryTransport` hands a message straight to the destination service's
`deliver`, merging its Lamport clock the way the RPC layer does.  A node in
`down` neither sends nor receives (a crash, for tests).

Invariant: per (sender, receiver) pair messages arrive in send order (each
sender task delivers one message at a time), like one TCP connection.
"""

from __future__ import annotations

from coord.mutex.driver import MutexService
from coord.mutex.types import NodeId


class Unreachable(ConnectionError):
    """The destination (or the sender) is down."""


class MemoryTransport:
    def __init__(self, me: NodeId, services: dict[NodeId, MutexService],
                 down: set[NodeId]) -> None:
        self._me = me
        self._services = services  # shared by every node's transport
        self._down = down  # shared too: the test adds and removes nodes

    async def send(self, to: NodeId, msg: object) -> None:
        if to in self._down or self._me in self._down:
            raise Unreachable(f"n{to} is down")
        target = self._services[to]
        lamport = target.clock.observe(int(getattr(msg, "stamp", 0)))
        await target.deliver(msg, lamport)
