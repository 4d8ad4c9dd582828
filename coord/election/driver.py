"""The trio driver of one election core (Bully or Ring), with its failure detector.

It feeds the core its events and runs the effects it returns, in order:

    message from a peer   -> core.step        (also counts as a heartbeat)
    timer due             -> core.tick
    detector transition   -> core.suspect / core.recover
    send failed (Ring)    -> core.send_failed (the message goes past the dead node)

    Send           queued to that peer's sender task (never blocks the core)
    LeaderChanged  `leader` updated, traced as a note, `on_leader` called,
                   waiters of `wait_leader` woken

Heartbeats (`Heartbeat` notifications every `heartbeat_every` seconds to
every peer) feed the detector; they are failure-detector traffic, so they
are neither traced nor counted as protocol messages.  The detector watches
a peer from the first time it is heard from.  A node whose core names
itself leader marks its heartbeats (`coordinator=True`): that is the
sitting coordinator's periodic re-announcement, and a receiver feeds it to
`core.claim`, so a node that lost the COORDINATOR learns the leader within
a heartbeat or two at no message cost (`DriverTiming.reannounce=False`
turns the marking off: the chapter's algorithms without the repair).

Invariants:
* The core is only touched from synchronous code between two awaits (each
  event's step and the queueing of its effects happen without a checkpoint),
  so events are applied one at a time without a lock.
* Every protocol message sent or received is traced once, with this node's
  Lamport clock (shared with the RPC layer, which merges every frame's
  stamp), and carries its send stamp so a receive names its exact send.
  Retransmissions do not exist at this layer (the cores re-run elections
  instead), and RPC frames are not traced.
* Sends are best effort: a peer that is down or slow costs its own queue.
  A queue that is full drops the message (the cores' timeouts cover loss).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from coord.clock.lamport import LamportClock
from coord.election.bully import BullyNode
from coord.election.messages import (
    ElectionMessage,
    Heartbeat,
    RingCoordinator,
    RingElection,
    label,
)
from coord.election.ring import RingNode
from coord.election.types import LeaderChanged, NodeId, Send
from coord.failure import FailureDetector, PeerId, Recover, Suspect
from coord.trace import TraceRecorder

log = logging.getLogger(__name__)

Core = BullyNode | RingNode
QUEUE = 256  # per-peer outgoing messages before new ones are dropped
TICK_MAX = 0.05  # the timer loop re-reads the core's deadline at least this often (s)


class Transport(Protocol):
    async def send(self, to: NodeId, msg: ElectionMessage | Heartbeat) -> None:
        """Deliver best effort; raise on failure (refused, timed out)."""
        ...


@dataclass(frozen=True, slots=True)
class DriverTiming:
    heartbeat_every: float = 0.2  # seconds between heartbeats to each peer
    check_every: float = 0.05  # how often the detector's opinion is polled
    send_timeout: float = 1.0  # a send taking longer counts as failed
    # Mark our heartbeats "I am the coordinator" while our core says so (the
    # repair of a lost COORDINATOR; False only to show what it repairs).
    reannounce: bool = True

    def validate(self) -> DriverTiming:
        if min(self.heartbeat_every, self.check_every, self.send_timeout) <= 0:
            raise ValueError(f"every interval must be > 0: {self}")
        return self


def peer_id(node: NodeId) -> PeerId:
    return PeerId(str(node))


class ElectionDriver:
    def __init__(self, core: Core, transport: Transport, detector: FailureDetector, *,
                 peers: Iterable[NodeId], clock: LamportClock,
                 tracer: TraceRecorder | None = None, timing: DriverTiming | None = None,
                 on_leader: Callable[[LeaderChanged], None] | None = None,
                 start_election: bool = True) -> None:
        self.core = core
        self.id = core.id
        self.name = str(core.id)
        self.peers = tuple(sorted(set(peers) - {core.id}))
        self._transport = transport
        self._detector = detector
        self.clock = clock
        self.tracer = tracer if tracer is not None else TraceRecorder()
        self.timing = (timing or DriverTiming()).validate()
        self._on_leader = on_leader
        self._start = start_election  # hold an election as soon as we run (a restart)
        self._queues: dict[NodeId, trio.MemorySendChannel[ElectionMessage]] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()  # set (and replaced) at every leader change
        self.sent: dict[str, int] = {}  # protocol messages handed to the queues, by kind
        self.received = 0  # protocol messages received
        self.dropped = 0  # sends that failed or found their queue full
        self.elections = 0  # elections this node started (start_election calls it made)
        self.leader_changes = 0

    # ------------------------------------------------------------------ views

    @property
    def leader(self) -> NodeId | None:
        return self.core.leader

    async def wait_leader(self, want: Callable[[NodeId | None], bool] | None = None) -> NodeId:
        """Wait until the leader view satisfies `want` (default: someone is leader)."""
        ok = want or (lambda leader: leader is not None)
        while not ok(self.core.leader) or self.core.leader is None:
            await self._changed.wait()
        return self.core.leader

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # A peer is watched from the first time it is heard from: nodes
            # start at different times, and a peer not yet started is not a
            # failed one (a dead one costs the cores only their timeouts).
            for p in self.peers:
                nursery.start_soon(self._heartbeats, p, name=f"election-{self.name}-hb-{p}")
            nursery.start_soon(self._timers, name=f"election-{self.name}-timers")
            nursery.start_soon(self._detect, name=f"election-{self.name}-detector")
            if self._start:
                self.elect()
            task_status.started()

    # ------------------------------------------------------------------ events

    def elect(self) -> None:
        """Hold an election now (at start-up, or on demand)."""
        self.elections += 1
        self.note("start election")
        self._execute(self.core.start_election(trio.current_time()))

    async def deliver(self, msg: ElectionMessage, lamport: int) -> None:
        """A protocol message; `lamport` is our clock after the RPC layer merged its stamp."""
        self.tracer.receive(self.name, str(msg.sender), label(msg), lamport, ref=msg.stamp)
        self.received += 1
        now = trio.current_time()
        self._detector.heartbeat(peer_id(msg.sender), now)
        self._execute(self._step(msg, now))

    def heard(self, peer: NodeId, coordinator: bool = False) -> None:
        """A heartbeat from `peer` arrived (`coordinator`: it names itself leader)."""
        now = trio.current_time()
        self._detector.heartbeat(peer_id(peer), now)
        if coordinator:
            effects = self.core.claim(peer, now)
            if effects:  # the claim repaired our view: say why the leader changed
                self.note(f"coordinator claim from {peer}")
            self._execute(effects)

    def note(self, text: str) -> None:
        self.tracer.note(self.name, text, self.clock.tick())

    def _step(self, msg: ElectionMessage, now: float) -> Sequence[object]:
        core = self.core
        if isinstance(core, BullyNode):
            if isinstance(msg, RingElection | RingCoordinator):
                raise ValueError(f"ring message {msg} sent to a Bully node")
            return core.step(msg, now)
        if not isinstance(msg, RingElection | RingCoordinator):
            raise ValueError(f"bully message {msg} sent to a Ring node")
        return core.step(msg, now)

    async def _timers(self) -> None:
        while True:
            now = trio.current_time()
            due = self.core.next_deadline()
            if due is not None and due <= now:
                self._execute(self.core.tick(now))
                continue
            await trio.sleep_until(now + TICK_MAX if due is None else min(due, now + TICK_MAX))

    async def _detect(self) -> None:
        while True:
            await trio.sleep(self.timing.check_every)
            now = trio.current_time()
            for event in self._detector.check(now):
                peer = NodeId(int(event.peer))
                if isinstance(event, Suspect):
                    self.note(f"suspect {peer}")
                    self._execute(self.core.suspect(peer, now))
                elif isinstance(event, Recover):
                    self.note(f"trust {peer}")
                    self._execute(self.core.recover(peer, now))

    async def _heartbeats(self, peer: NodeId) -> None:
        while True:
            # Read the view at every beat: the claim must stop once we follow another.
            claim = self.timing.reannounce and self.core.leader == self.id
            beat = Heartbeat(self.id, coordinator=claim)
            with trio.move_on_after(self.timing.send_timeout):
                try:
                    await self._transport.send(peer, beat)
                except Exception as exc:  # a dead peer: the detector will notice
                    log.debug("%s: heartbeat to %s: %s", self.name, peer, exc)
            await trio.sleep(self.timing.heartbeat_every)

    # ------------------------------------------------------------------ effects

    def _execute(self, effects: Sequence[object]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self._send(eff.to, eff.msg)
            elif isinstance(eff, LeaderChanged):
                self._leader_changed(eff)

    def _leader_changed(self, eff: LeaderChanged) -> None:
        self.leader_changes += 1
        self.note(f"leader {eff.leader if eff.leader is not None else 'none'}")
        if self._on_leader is not None:
            self._on_leader(eff)
        self._changed.set()
        self._changed = trio.Event()

    def _send(self, to: NodeId, msg: ElectionMessage) -> None:
        stamp = self.clock.tick()
        msg = dataclasses.replace(msg, stamp=stamp)
        text = label(msg)
        self.tracer.send(self.name, str(to), text, stamp, reply=text.startswith("OK"))
        kind = text.split(" ", 1)[0]
        self.sent[kind] = self.sent.get(kind, 0) + 1
        queue = self._queues.get(to)
        if queue is None:
            queue = self._start_sender(to)
        try:
            queue.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1

    def _start_sender(self, to: NodeId) -> trio.MemorySendChannel[ElectionMessage]:
        assert self._nursery is not None, "run() first"
        send, receive = trio.open_memory_channel[ElectionMessage](QUEUE)
        self._queues[to] = send
        self._nursery.start_soon(self._sender, to, receive, name=f"election-{self.name}-to-{to}")
        return send

    async def _sender(self, to: NodeId, queue: trio.MemoryReceiveChannel[ElectionMessage]
                      ) -> None:
        async for msg in queue:
            failed = True
            with trio.move_on_after(self.timing.send_timeout):
                try:
                    await self._transport.send(to, msg)
                    failed = False
                except Exception as exc:  # refused, reset, ...: the peer is unreachable
                    log.debug("%s: %s to %s lost: %s", self.name, label(msg), to, exc)
            if failed:
                self.dropped += 1
                self._send_failed(to, msg)

    def _send_failed(self, to: NodeId, msg: ElectionMessage) -> None:
        core = self.core
        if isinstance(core, RingNode) and isinstance(msg, RingElection | RingCoordinator):
            # The Ring passes the message on past the dead successor.
            self.note(f"send to {to} failed")
            self._execute(core.send_failed(msg, to, trio.current_time()))

