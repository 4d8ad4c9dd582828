"""The trio driver of one Raft member: runs the sans-IO core against real
storage, a real state machine and a real transport.

The order of a Ready is written here once (see `coord.raft.ready`):

    persist (one LMDB transaction, fsync)  ->  send  ->  apply  ->  serve reads  ->  advance

Invariants:

* Every call into the core (step/tick/propose/read_index/ready/advance)
  happens on the trio thread, never across an await: the core is never seen
  half-updated.  Storage and state-machine commits run in worker threads
  (`trio.to_thread`), one at a time, and no LMDB transaction is ever held
  across an await (each call opens and closes its own).
* Messages leave only after the Ready that produced them was persisted: a
  vote or an append acknowledgement is a promise about durable state.
* A proposal is answered only by the entry applied at its index: if the
  entry there has the proposal's term it was committed, otherwise it was lost
  (a new leader overwrote it) and the caller gets `ProposalLost` — retrying
  is safe because commands carry (client, seq) and the state machine drops
  duplicates.
* Outgoing messages go through one bounded queue per peer; a full queue or a
  dead peer drops messages, which Raft tolerates (it retransmits on its own).
* Snapshots (when given a `SnapshotFiles`; `coord.raft.snapdriver`): chunks
  received are written and fsynced in the persist step; a completed one is
  installed after `advance` (Ready step 6) before the next Ready; at every
  multiple of `snapshot_every` the apply batch is split, the state pinned
  there (a read transaction) and streamed to a snapshot in a background task.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import trio

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.messages import Message, ReadCtx, RequestVoteResponse
from coord.raft.ready import NotLeader, Overloaded, Proposed, ReadQueued, Ready, Role
from coord.raft.snapdriver import SnapshotKeeper, SnapshotStateMachine
from coord.raft.snapfile import SnapshotFiles
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.storage import RaftStorage
from coord.raft.types import Entry, HardState, LogIndex, NodeId, Term

log = logging.getLogger(__name__)


class Applied(Protocol):
    """What a state machine reports for one applied entry."""

    @property
    def index(self) -> LogIndex: ...


A = TypeVar("A", bound=Applied)
A_co = TypeVar("A_co", bound=Applied, covariant=True)


class StateMachine(Protocol[A_co]):
    """A replicated state machine whose applied index commits with its state."""

    @property
    def applied_index(self) -> LogIndex: ...

    def apply(self, entries: Sequence[Entry]) -> Sequence[A_co]: ...


class Transport(Protocol):
    """Sends a batch of Raft messages to one peer (best effort, may raise)."""

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None: ...


class RaftUnavailable(Exception):
    """The request could not be served here; `leader` is where to retry (None: unknown)."""

    def __init__(self, message: str, leader: NodeId | None) -> None:
        super().__init__(message)
        self.leader = leader


class ProposalLost(RaftUnavailable):
    """The proposal's entry was overwritten by a new leader: it was not committed."""


class Busy(RaftUnavailable):
    """The leader holds too many uncommitted bytes; retry shortly."""


@dataclass(slots=True)
class _Waiter(Generic[A]):
    term: Term
    done: trio.Event = field(default_factory=trio.Event)
    result: A | None = None
    lost: bool = False


@dataclass(slots=True)
class _ReadWaiter:
    done: trio.Event = field(default_factory=trio.Event)
    index: LogIndex | None = None  # None with done set: the read failed


@dataclass(frozen=True, slots=True)
class DriverStatus:
    node_id: NodeId
    role: str
    term: int
    leader: NodeId | None
    commit_index: int
    applied_index: int
    last_index: int
    peers: tuple[NodeId, ...]
    match: Mapping[NodeId, int]  # leader only: replicated index per follower
    first_index: int = 1  # first entry still in the log (compaction point + 1)
    snapshot_index: int = 0  # newest snapshot this member holds (0: none)
    snapshots_taken: int = 0  # since start
    snapshots_installed: int = 0  # received from a leader, since start


class RaftDriver(Generic[A]):
    PEER_QUEUE = 4096  # messages buffered per peer before we start dropping

    def __init__(
        self,
        node_id: NodeId,
        peers: Sequence[NodeId],
        config: RaftConfig,
        storage: RaftStorage,
        fsm: StateMachine[A],
        transport: Transport,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = trio.current_time,
        snapshots: SnapshotFiles | None = None,
    ) -> None:
        self.id = node_id
        self._storage = storage
        self._fsm = fsm
        self._transport = transport
        self._clock = clock
        self._keeper: SnapshotKeeper | None = None
        if snapshots is not None:
            if not isinstance(fsm, SnapshotStateMachine):
                raise TypeError(f"{type(fsm).__name__} cannot take snapshots")
            self._keeper = SnapshotKeeper(snapshots, storage, fsm, config)
            self._keeper.recover()  # before reading the applied index: it may move
        hs = storage.load()
        applied = fsm.applied_index
        # An applied entry was committed, whatever commit index we last persisted.
        hs = HardState(hs.term, hs.vote, LogIndex(max(hs.commit, applied)))
        self.core = RaftNode(
            node_id, peers, config, log=storage, hard_state=hs,
            rng=rng if rng is not None else random.Random(),
            now=clock(), applied=applied,
            snapshot=snapshots.latest() if snapshots else None, snapshots=snapshots,
            partial=snapshots.partial() if snapshots else None,
        )
        self._peers = tuple(p for p in peers if p != node_id)
        self._wake = trio.Event()
        self._proposals: dict[LogIndex, _Waiter[A]] = {}
        self._reads: dict[ReadCtx, _ReadWaiter] = {}
        self._read_seq = 0
        self._applied = applied
        self._outboxes: dict[NodeId, trio.MemorySendChannel[Message]] = {}
        self._leader_changed = trio.Event()
        self._last_leader: NodeId | None = None
        self.dropped_messages = 0
        self._completed: tuple[SnapshotMeta, bool] | None = None  # received, to install
        self._nursery: trio.Nursery | None = None  # for background snapshot takes

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        async with trio.open_nursery() as nursery:
            for peer in self._peers:
                send, recv = trio.open_memory_channel[Message](self.PEER_QUEUE)
                self._outboxes[peer] = send
                nursery.start_soon(self._sender, peer, recv, name=f"raft-send-{peer}")
            self._nursery = nursery
            task_status.started()
            await self._loop()

    async def _loop(self) -> None:
        while True:
            with trio.move_on_at(self._sleep_until()):
                await self._wake.wait()
            self._wake = trio.Event()
            self.core.tick(self._clock())
            while self.core.has_ready():
                rd = self.core.ready()
                await self._handle(rd)
                self.core.advance(rd)
                if self._completed is not None:
                    await self._install(*self._completed)
                self.core.tick(self._clock())

    def _sleep_until(self) -> float:
        deadline = self.core.next_deadline()
        return deadline if math.isfinite(deadline) else self._clock() + 1.0

    async def _handle(self, rd: Ready) -> None:
        # 1. persist.  A commit-only hard state needs no fsync (commit is
        # re-learned from the leader); it rides along with the next one that does.
        if rd.entries or rd.truncate_from is not None or (rd.hard_state and rd.must_sync):
            await trio.to_thread.run_sync(
                self._storage.persist, rd.hard_state, rd.entries, rd.truncate_from
            )
        if rd.snapshot_chunks:
            self._completed = await trio.to_thread.run_sync(self._write_chunks, rd.snapshot_chunks)
        # 2. send, only now that what the messages promise is durable.
        for msg in rd.messages:
            if isinstance(msg, RequestVoteResponse) and msg.granted and not msg.pre_vote:
                # An audit line per vote: tests check no member votes twice in a term.
                log.info("node %d: vote granted to %d in term %d", self.id, msg.dst, msg.term)
            self._enqueue(msg)
        # 3. apply.
        if rd.committed_entries:
            results = await self._apply(rd.committed_entries)
            self._settle(rd.committed_entries, results)
        # 4. reads: their index is <= what is applied now.
        for rs in rd.read_states:
            self._finish_read(rs.ctx, rs.index)
        for ctx in rd.failed_reads:
            self._finish_read(ctx, None)
        self._note_leader(rd)

    # ------------------------------------------------------------------ snapshots
    def _write_chunks(self, chunks: Sequence[SnapshotChunk]) -> tuple[SnapshotMeta, bool] | None:
        """Worker thread: write received chunks; the completed snapshot and its check."""
        assert self._keeper is not None, "the core sends chunks only to a member with snapshots"
        done = None
        for chunk in chunks:
            if chunk.offset == 0:
                log.info("node %d: receiving snapshot %d (%d bytes)", self.id, chunk.meta.index,
                         chunk.meta.size)
            ok = self._keeper.files.write_chunk(chunk)
            if chunk.last:
                done = (chunk.meta, ok)
        return done

    async def _install(self, meta: SnapshotMeta, ok: bool) -> None:
        assert self._keeper is not None
        self._completed = None
        if await self._keeper.install(self.core, meta, ok):
            self._applied = meta.index
            # Proposals at or below it were committed or lost: we cannot tell which,
            # and retrying is safe (the state machine drops duplicates).
            for index in [i for i in self._proposals if i <= meta.index]:
                waiter = self._proposals.pop(index)
                waiter.lost = True
                waiter.done.set()

    async def _apply(self, entries: Sequence[Entry]) -> list[A]:
        """Apply; at a snapshot boundary, pin the state exactly there in between."""
        keeper, nursery = self._keeper, self._nursery
        cut = keeper.boundary(entries) if keeper is not None and nursery else None
        if cut is None or keeper is None or nursery is None:
            return list(await trio.to_thread.run_sync(self._fsm.apply, entries))
        k = cut - entries[0].index + 1
        results = list(await trio.to_thread.run_sync(self._fsm.apply, entries[:k]))
        source = await trio.to_thread.run_sync(keeper.open_source)
        keeper.taking = True

        async def take() -> None:
            try:
                await keeper.take(self.core, source)
            except Exception:  # a failed snapshot is retried later; the log simply grows
                log.exception("node %d: taking a snapshot failed", self.id)
            finally:
                keeper.taking = False

        nursery.start_soon(take, name="raft-snapshot")
        if entries[k:]:
            results += await trio.to_thread.run_sync(self._fsm.apply, entries[k:])
        return results

    def _note_leader(self, rd: Ready) -> None:
        leader = rd.soft_state.leader
        if leader != self._last_leader:
            log.info("node %d: leader is now %s (term %d, role %s)", self.id, leader,
                     rd.soft_state.term, rd.soft_state.role.value)
            self._last_leader = leader
            self._leader_changed.set()
            self._leader_changed = trio.Event()

    def _settle(self, entries: Sequence[Entry], results: Sequence[A]) -> None:
        by_index = {r.index: r for r in results}
        for entry in entries:
            self._applied = entry.index
            waiter = self._proposals.pop(entry.index, None)
            if waiter is None:
                continue
            if entry.term == waiter.term:
                waiter.result = by_index.get(entry.index)
            else:
                waiter.lost = True
            waiter.done.set()

    # ------------------------------------------------------------------ transport
    def _enqueue(self, msg: Message) -> None:
        box = self._outboxes.get(msg.dst)
        if box is None:
            log.warning("node %d: message for unknown peer %d dropped", self.id, msg.dst)
            return
        try:
            box.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped_messages += 1

    async def _sender(self, peer: NodeId, recv: trio.MemoryReceiveChannel[Message]) -> None:
        backoff = 0.0
        async for first in recv:
            batch = [first]
            while len(batch) < 512:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            if backoff and self._clock() < backoff:
                self.dropped_messages += len(batch)  # peer recently unreachable
                continue
            try:
                await self._transport.send(peer, batch)
                backoff = 0.0
            except Exception as exc:  # any transport failure: Raft retransmits by itself
                log.debug("node %d: send to %d failed: %s", self.id, peer, exc)
                self.dropped_messages += len(batch)
                backoff = self._clock() + 0.05

    def deliver(self, messages: Sequence[Message]) -> None:
        """Messages from peers (called by the RPC handler, on the trio thread)."""
        now = self._clock()
        for msg in messages:
            if msg.dst != self.id:
                log.warning("node %d: message addressed to %d dropped", self.id, msg.dst)
                continue
            self.core.step(msg, now)
        self._wake.set()

    # ------------------------------------------------------------------ clients
    @property
    def leader(self) -> NodeId | None:
        return self.core.soft_state().leader

    @property
    def is_leader(self) -> bool:
        return self.core.soft_state().role is Role.LEADER

    async def propose(self, data: bytes) -> A:
        """Replicate `data`; return its state-machine result once applied here.

        Raises RaftUnavailable (not leader), Busy, or ProposalLost.  The caller
        bounds the wait with its own deadline (cancel scope).
        """
        result = self.core.propose(data)
        match result:
            case NotLeader(hint):
                raise RaftUnavailable("not the leader", hint)
            case Overloaded(used, limit):
                raise Busy(f"{used} uncommitted bytes (limit {limit})", self.id)
            case Proposed(index, term):
                waiter: _Waiter[A] = _Waiter(term)
                self._proposals[index] = waiter
        self._wake.set()
        try:
            await waiter.done.wait()
        finally:
            if not waiter.done.is_set():
                self._proposals.pop(index, None)
        if waiter.lost or waiter.result is None:
            raise ProposalLost(f"entry {index} was overwritten by a new leader", self.leader)
        return waiter.result

    async def read_barrier(self) -> LogIndex:
        """Wait until a read of the local state machine is linearizable (ReadIndex).

        Works on followers too (the leader confirms the index).  Raises
        RaftUnavailable when no leader can confirm it.
        """
        self._read_seq += 1
        ctx = ReadCtx(self.id.to_bytes(8, "big") + self._read_seq.to_bytes(8, "big"))
        started = self.core.read_index(ctx)
        if not isinstance(started, ReadQueued):
            raise RaftUnavailable("no leader to confirm a read", started.leader_hint)
        waiter = _ReadWaiter()
        self._reads[ctx] = waiter
        self._wake.set()
        try:
            # A forwarded request or its answer may be lost: give up when the
            # leader changes so the caller can retry (its deadline bounds us).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_leader_change, waiter, nursery.cancel_scope)
                await waiter.done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._reads.pop(ctx, None)
        if waiter.index is None:
            raise RaftUnavailable("leadership changed during the read", self.leader)
        return waiter.index

    async def _cancel_on_leader_change(self, waiter: _ReadWaiter, scope: trio.CancelScope) -> None:
        await self._leader_changed.wait()
        waiter.done.set()

    def _finish_read(self, ctx: ReadCtx, index: LogIndex | None) -> None:
        waiter = self._reads.get(ctx)
        if waiter is not None:
            waiter.index = index
            waiter.done.set()

    def status(self) -> DriverStatus:
        soft = self.core.soft_state()
        match: dict[NodeId, int] = {}
        if soft.role is Role.LEADER:
            match = {p: int(pr.match) for p, pr in self.core.progress.items()}
        return DriverStatus(
            node_id=self.id, role=soft.role.value, term=int(soft.term), leader=soft.leader,
            commit_index=int(self.core.commit_index), applied_index=int(self._applied),
            last_index=int(self._storage.last_index()), peers=self._peers, match=match,
            first_index=int(self.core.log.first_index()),
            snapshot_index=int(self.core.snapshot.index) if self.core.snapshot else 0,
            snapshots_taken=self._keeper.taken if self._keeper else 0,
            snapshots_installed=self._keeper.installed if self._keeper else 0,
        )


def status_dict(st: DriverStatus) -> dict[str, Any]:
    """A JSON-friendly form of the status (for `ddfs raft status`)."""
    return {
        "id": st.node_id, "role": st.role, "term": st.term, "leader": st.leader,
        "commit_index": st.commit_index, "applied_index": st.applied_index,
        "last_index": st.last_index, "peers": list(st.peers),
        "lag": {str(p): st.last_index - m for p, m in st.match.items()},
        "first_index": st.first_index, "snapshot_index": st.snapshot_index,
        "snapshots_taken": st.snapshots_taken, "snapshots_installed": st.snapshots_installed,
    }
