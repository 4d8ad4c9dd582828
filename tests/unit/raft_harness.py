"""A tiny synchronous driver for pure-core Raft tests: perfect (or filtered)
delivery, in-memory logs, and the persist → send → apply → advance order.

Nothing here is random except the nodes' injected rngs; every test that uses
it controls exactly which messages are delivered and when.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TypeVar

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.memlog import MemLog
from coord.raft.messages import Message
from coord.raft.readindex import ReadState
from coord.raft.ready import Ready, Role
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId

CONFIG = RaftConfig(
    election_timeout_min=10.0,
    election_timeout_max=20.0,
    heartbeat_interval=2.0,
    max_append_entries=64,
    max_append_bytes=1 << 16,
    max_inflight=4,
    max_inflight_bytes=1 << 20,
)

Filter = Callable[[Message], bool]
M = TypeVar("M", bound=Message)


class Harness:
    def __init__(
        self,
        n: int = 3,
        config: RaftConfig = CONFIG,
        node_cls: type[RaftNode] = RaftNode,
        logs: dict[NodeId, list[Entry]] | None = None,
        hard_states: dict[NodeId, HardState] | None = None,
    ) -> None:
        self.ids = [NodeId(i) for i in range(1, n + 1)]
        self.config = config
        self.now = 0.0
        self.logs: dict[NodeId, MemLog] = {}
        self.hard: dict[NodeId, HardState] = {}
        self.nodes: dict[NodeId, RaftNode] = {}
        self.applied: dict[NodeId, list[Entry]] = {i: [] for i in self.ids}
        self.read_states: dict[NodeId, list[ReadState]] = {i: [] for i in self.ids}
        self.readies: dict[NodeId, list[Ready]] = {i: [] for i in self.ids}
        self.net: list[Message] = []  # sent, not yet delivered
        self.sent: list[Message] = []  # every message ever sent, for assertions
        for i in self.ids:
            self.logs[i] = MemLog((logs or {}).get(i, []))
            self.hard[i] = (hard_states or {}).get(i, HardState())
            self.nodes[i] = node_cls(
                i,
                self.ids,
                config,
                log=self.logs[i],
                hard_state=self.hard[i],
                rng=random.Random(int(i)),
                now=self.now,
            )

    def process(self, nid: NodeId) -> Ready | None:
        """Handle one Ready of node nid in the driver order; returns it (or None)."""
        node = self.nodes[nid]
        if not node.has_ready():
            return None
        rd = node.ready()
        self.readies[nid].append(rd)
        self.logs[nid].append(rd.entries)  # persist (MemLog truncates the suffix itself)
        if rd.hard_state is not None:
            self.hard[nid] = rd.hard_state
        self.net.extend(rd.messages)  # send
        self.sent.extend(rd.messages)
        self.applied[nid].extend(rd.committed_entries)  # apply
        self.read_states[nid].extend(rd.read_states)
        node.advance(rd)
        return rd

    def process_all(self) -> None:
        for _ in range(10):
            if not any([self.process(i) for i in self.ids]):
                return

    def deliver(self, keep: Filter = lambda m: True, rounds: int = 50) -> None:
        """Deliver in rounds until quiet; messages failing `keep` are dropped."""
        for _ in range(rounds):
            self.process_all()
            if not self.net:
                return
            batch, self.net = self.net, []
            for m in batch:
                if keep(m):
                    self.nodes[m.dst].step(m, self.now)
        raise AssertionError("network did not quiesce")

    def take(self, kind: type[M]) -> list[M]:
        """Remove and return in-flight messages of one kind, after processing readies."""
        self.process_all()
        taken: list[M] = []
        rest: list[Message] = []
        for m in self.net:
            if isinstance(m, kind):
                taken.append(m)
            else:
                rest.append(m)
        self.net = rest
        return taken

    def take_all(self) -> list[Message]:
        self.process_all()
        taken, self.net = self.net, []
        return taken

    def tick(self, nid: NodeId, by: float = 0.0) -> None:
        self.now += by
        self.nodes[nid].tick(self.now)

    def advance_time(self, by: float, ids: Iterable[NodeId] | None = None) -> None:
        self.now += by
        for i in ids if ids is not None else self.ids:
            self.nodes[i].tick(self.now)

    def share_commit(self, keep: Filter = lambda m: True) -> None:
        """Let one heartbeat interval pass on the leader and deliver: followers learn
        its commit index from that heartbeat (the core sends no append just for it)."""
        leader = self.leader()
        assert leader is not None
        self.advance_time(self.config.heartbeat_interval, [leader])
        self.deliver(keep)

    def campaign(self, nid: NodeId, keep: Filter = lambda m: True) -> None:
        """Make nid's election timer fire now and deliver until quiet."""
        self.now = max(self.now, self.nodes[nid].election_deadline)
        self.nodes[nid].tick(self.now)
        self.deliver(keep)

    def leader(self) -> NodeId | None:
        leaders = [i for i in self.ids if self.nodes[i].role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def propose(self, nid: NodeId, data: bytes) -> object:
        return self.nodes[nid].propose(data)

    def commands(self, nid: NodeId) -> list[bytes]:
        return [e.data for e in self.applied[nid] if e.kind is EntryKind.COMMAND]

    def last_index(self, nid: NodeId) -> LogIndex:
        return self.nodes[nid].log.last_index()
