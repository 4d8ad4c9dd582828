"""An in-memory transport for election drivers: the twin of the RPC transport.

Messages go straight to the target driver's `deliver` (after merging the
send stamp into its Lamport clock, as the RPC layer does), so a whole
cluster of drivers runs in one trio run, e.g. under `autojump_clock`.

Invariants: a send to a node that is not registered or is marked down
raises `ConnectionRefusedError` (as a refused TCP connection would), so
the Ring driver's skip path is exercised; delivery happens in the sender's
task, in send order per (sender, receiver).  A protocol message for which
`lose(src, dst, msg)` is true vanishes without an error (as one does when
its receiver crashes mid-send): a test's way of losing a chosen message.
"""

from __future__ import annotations

from collections.abc import Callable

from coord.election.driver import ElectionDriver
from coord.election.messages import ElectionMessage, Heartbeat
from coord.election.types import NodeId


class MemoryElectionNet:
    def __init__(self) -> None:
        self.drivers: dict[NodeId, ElectionDriver] = {}
        self.down: set[NodeId] = set()  # registered but unreachable (crashed, cut off)
        # Protocol messages to lose silently (heartbeats are never lost here).
        self.lose: Callable[[NodeId, NodeId, ElectionMessage], bool] | None = None

    def register(self, driver: ElectionDriver) -> None:
        self.drivers[driver.id] = driver
        self.down.discard(driver.id)

    def transport(self, src: NodeId) -> MemoryTransport:
        return MemoryTransport(self, src)


class MemoryTransport:
    def __init__(self, net: MemoryElectionNet, src: NodeId) -> None:
        self._net = net
        self._src = src

    async def send(self, to: NodeId, msg: ElectionMessage | Heartbeat) -> None:
        net = self._net
        if self._src in net.down:
            raise ConnectionRefusedError(f"{self._src} is down")
        target = net.drivers.get(to)
        if target is None or to in net.down:
            raise ConnectionRefusedError(f"{to} is down")
        if isinstance(msg, Heartbeat):
            target.heard(msg.sender, msg.coordinator)
            return
        if net.lose is not None and net.lose(self._src, to, msg):
            return
        await target.deliver(msg, target.clock.observe(msg.stamp))
