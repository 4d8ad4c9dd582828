"""The trio driver of one 2PC core (coordinator or participant).

It feeds the core its events (messages from peers, answers from the
decision store, timer ticks, `begin` for a coordinator) and runs the effects
the core returns, strictly in order and one batch at a time:

    Persist          the log append, in a worker thread (fsync blocks)
    Send             queued to that peer's sender task (never blocks the core)
    ResolveDecision  a task that asks the decision store, then feeds the answer back
    Checkpoint       the `on_step` hook (tests and `ddfs coord run 2pc` pause there);
                     when the hook is armed for it, the messages queued so far are
                     handed to the transport first, so "after-X-sent" means sent

Invariants:
* Persist before you speak: a batch's effects run in list order and the next
  batch (from any event) starts only when the previous one has finished, all
  under one lock, so no message leaves before every record it depends on is
  on disk — not even a retransmission triggered by another event.
* The core is only touched under that lock; time is read once per event and
  passed in.  A batch, once its event reached the core, runs to the end even if
  the task that delivered the event is cancelled (shielded; every effect is
  bounded), so the core's state never runs ahead of its log.  A
  `TransitionError` (a peer or a bug made the core refuse an event) is logged
  with its history and the event dropped: a bad message never stops the node.
* Fail-stop on storage errors: if a log append fails, the core may already be
  ahead of its log, so the driver stops serving and `run` raises
  `StorageFailure`; the node must restart and recover from what is on disk.
* Sends are best effort (the cores retransmit): a peer that is down or slow
  costs its own sender queue, never the core's progress.
* Every event is traced with this node's Lamport clock (shared with the RPC
  layer, which stamps every frame), so traces of all nodes merge in
  happened-before order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import trio

from coord.clock.lamport import LamportClock
from coord.trace import TraceRecorder
from coord.twopc.coordinator import Coordinator
from coord.twopc.decision import DecisionStore, DecisionStoreError
from coord.twopc.log import TwoPcLog
from coord.twopc.machine import TransitionError
from coord.twopc.messages import Message, label_of
from coord.twopc.participant import Participant
from coord.twopc.records import Checkpoint, Effect, Persist, ResolveDecision, Send, persist_note
from coord.twopc.types import Decision, NodeName, Step, TxId, Write

log = logging.getLogger(__name__)

Core = Coordinator | Participant
QUEUE = 256  # per-peer outgoing messages before new ones are dropped
TICK_MAX = 0.05  # the timer loop re-reads next_wakeup at least this often (seconds)


class StorageFailure(RuntimeError):
    """A log append failed: the node must stop and recover from its log."""


class StepHook(Protocol):
    def armed(self, step: Step, txid: TxId) -> bool:
        """Will `reached` act on this step?  (Then the driver flushes its sends first.)"""
        ...

    async def reached(self, step: Step, txid: TxId) -> None: ...


class Transport(Protocol):
    async def send(self, to: NodeName, msg: Message) -> None:
        """Deliver best effort; raise on failure (the caller drops the message)."""
        ...


class TwoPcDriver:
    def __init__(self, core: Core, log_store: TwoPcLog, transport: Transport, *,
                 store: DecisionStore | None, clock: LamportClock,
                 tracer: TraceRecorder | None = None, on_step: StepHook | None = None,
                 send_timeout: float = 2.0) -> None:
        self.core = core
        self.name = core.name
        self._log = log_store
        self._transport = transport
        self._store = store
        self.clock = clock
        self.tracer = tracer if tracer is not None else TraceRecorder()
        self._on_step = on_step
        self._send_timeout = send_timeout
        self._lock = trio.Lock()  # one effect batch at a time (see module docstring)
        self._queues: dict[NodeName, trio.MemorySendChannel[Message]] = {}
        self._queued: dict[NodeName, int] = {}  # messages queued per peer, ever
        self._handled: dict[NodeName, int] = {}  # ... of which the transport has finished
        self._nursery: trio.Nursery | None = None
        self._asking: set[TxId] = set()  # store questions in flight (one per txid)
        self.sent: dict[str, int] = {}  # messages handed to the transport, by kind
        self.dropped = 0  # messages that could not be delivered (the core retransmits)
        self._failure: BaseException | None = None  # set once a log append failed

    # ------------------------------------------------------------------ lifecycle

    async def run(self, initial: Sequence[Effect] = (), *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run `initial` (recovery effects), then serve events until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with self._lock:
                await self._execute(list(initial))
            nursery.start_soon(self._timers, name=f"2pc-{self.name}-timers")
            task_status.started()
        if self._failure is not None:
            raise StorageFailure(f"{self.name}: log append failed; "
                                 "restart to recover from the log") from self._failure

    # ------------------------------------------------------------------ events

    async def deliver(self, msg: Message, lamport: int) -> None:
        """A message from a peer; `lamport` is our clock after the RPC layer merged it."""
        self.tracer.receive(self.name, msg.sender, label_of(msg), lamport, ref=msg.stamp)
        await self._step(lambda now: self.core.receive(msg, now))

    async def begin(self, txid: TxId, work: Mapping[NodeName, Sequence[Write]]) -> None:
        core = self.core
        if not isinstance(core, Coordinator):
            raise TypeError(f"{self.name} is not a coordinator")
        await self._step(lambda now: core.begin(txid, work, now))

    async def _timers(self) -> None:
        while True:
            now = trio.current_time()
            due = self.core.next_wakeup()
            if due <= now:
                await self._step(self.core.tick)
                continue
            await trio.sleep_until(min(due, now + TICK_MAX))

    async def _step(self, produce: Callable[[float], list[Effect]]) -> None:
        async with self._lock:
            if self._failure is not None:
                raise StorageFailure(f"{self.name} stopped after a log failure")
            # Shielded: once the core has changed state, its effects must all run.
            # A cancelled RPC handler (its connection closed) must not leave, say, a
            # PREPARED core whose record was never written: the next PREPARE would
            # be answered READY with nothing on disk.  Every effect is bounded.
            with trio.CancelScope(shield=True):
                try:
                    effects = produce(trio.current_time())
                except TransitionError as exc:
                    log.error("%s: event refused: %s", self.name, exc)
                    return
                await self._execute(effects)

    # ------------------------------------------------------------------ effects

    async def _execute(self, effects: list[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Persist):
                try:
                    await trio.to_thread.run_sync(self._persist, eff)
                except Exception as exc:
                    self._stop_on_failure(exc)
                    raise StorageFailure(f"{self.name}: {exc}") from exc
                self.note(persist_note(eff))
            elif isinstance(eff, Send):
                self._send(eff.to, eff.msg)
            elif isinstance(eff, ResolveDecision):
                self._ask_store(eff.txid, eff.proposal)
            elif isinstance(eff, Checkpoint):
                await self._checkpoint(eff)

    def _stop_on_failure(self, exc: BaseException) -> None:
        log.critical("%s: log append failed, stopping: %s", self.name, exc)
        self._failure = exc
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _checkpoint(self, eff: Checkpoint) -> None:
        hook = self._on_step
        if hook is not None and hook.armed(eff.step, eff.txid):
            await self._drain()  # "after X was sent" must mean it left this process
            await hook.reached(eff.step, eff.txid)

    def _persist(self, eff: Persist) -> None:
        self._log.append(eff.record, eff.writes, sync=eff.sync)

    def _send(self, to: NodeName, msg: Message) -> None:
        label = label_of(msg)
        stamp = self.clock.tick()
        msg = dataclasses.replace(msg, stamp=stamp)  # lets the receiver's trace name this send
        self.tracer.send(self.name, to, label, stamp, reply=not isinstance(self.core, Coordinator))
        kind = label.split(" ", 1)[0]
        self.sent[kind] = self.sent.get(kind, 0) + 1
        queue = self._queues.get(to)
        if queue is None:
            queue = self._start_sender(to)
        try:
            queue.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1
            return
        self._queued[to] = self._queued.get(to, 0) + 1

    async def _drain(self) -> None:
        """Wait (bounded) until every message queued so far has been handed over."""
        target = dict(self._queued)
        with trio.move_on_after(self._send_timeout + 0.5):
            while any(self._handled.get(p, 0) < n for p, n in target.items()):
                await trio.sleep(0.005)

    def _start_sender(self, to: NodeName) -> trio.MemorySendChannel[Message]:
        assert self._nursery is not None, "run() first"
        send, receive = trio.open_memory_channel[Message](QUEUE)
        self._queues[to] = send
        self._nursery.start_soon(self._sender, to, receive, name=f"2pc-{self.name}-to-{to}")
        return send

    async def _sender(self, to: NodeName, queue: trio.MemoryReceiveChannel[Message]) -> None:
        async for msg in queue:
            with trio.move_on_after(self._send_timeout) as scope:
                try:
                    await self._transport.send(to, msg)
                except Exception as exc:  # any transport failure: the core retransmits
                    log.debug("%s: %s to %s lost: %s", self.name, label_of(msg), to, exc)
                    self.dropped += 1
            if scope.cancelled_caught:
                self.dropped += 1
            self._handled[to] = self._handled.get(to, 0) + 1

    def _ask_store(self, txid: TxId, proposal: Decision) -> None:
        if self._store is None:
            raise RuntimeError("the core asked for a decision store this node does not have")
        if txid in self._asking:
            return  # the earlier question is still out; its answer will do
        self._asking.add(txid)
        assert self._nursery is not None
        self._nursery.start_soon(self._store_task, txid, proposal, name=f"2pc-store-{txid}")

    async def _store_task(self, txid: TxId, proposal: Decision) -> None:
        assert self._store is not None
        self.note(f"Raft store: CAS {txid} {proposal.name} if empty")
        try:
            decision = await self._store.decide(txid, proposal)
        except DecisionStoreError as exc:
            log.warning("%s: decision store: %s (will retry)", self.name, exc)
            self.note(f"Raft store: no answer for {txid}")
            return
        finally:
            self._asking.discard(txid)
        self.note(f"Raft store: {txid} is {decision.name}")
        await self._step(lambda now: self.core.store_answer(txid, decision, now))

    # ------------------------------------------------------------------ tracing

    def note(self, text: str) -> None:
        self.tracer.note(self.name, text, self.clock.tick())
