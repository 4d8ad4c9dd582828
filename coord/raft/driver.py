"""The trio driver of one Raft member: runs the sans-IO core against real
storage, a real state machine and a real transport.

The order of a Ready is written here once (see `coord.raft.ready`):

    persist (one durable write, fsync)  ->  send  ->  queue (apply -> serve reads)  ->  advance

the apply and the reads running in the applier task, in Ready order (below).

Invariants:

* Every call into the core (step/tick/propose/read_index/ready/advance)
  happens on the trio thread, never across an await: the core is never seen
  half-updated.  Storage and state-machine commits run in worker threads
  (one long-lived `coord.raft.worker.Worker` each; `trio.to_thread` for the
  rare snapshot calls), at most one of each at a time, and no LMDB
  transaction is ever held across an await (each call opens and closes its
  own).  Two
  exceptions, both because the hand-off to a Python thread costs more than
  the work: a follower persists a small Ready (<= INLINE_PERSIST_BYTES) on
  the trio thread, blocking it for one fdatasync, because its loop would
  wait for that persist anyway (see _persist); a leader applies a small
  batch on the trio thread (see _inline_apply).
* Messages leave only after the Ready that produced them was persisted: a
  vote or an append acknowledgement is a promise about durable state.  The
  one exception is a leader's AppendEntries and Heartbeats (thesis §10.2.1):
  they promise nothing about the leader's disk, whose own replica counts
  towards a commit only after `advance`, so they leave before the leader's
  fsync and the followers' fsyncs overlap it.  Not when the Ready changes
  term or vote (then everything waits for the fsync).
* Committed entries are applied by one applier task, in log order, after
  the Ready that handed them out was persisted; the Ready loop advances the
  core without waiting for the apply, so the next persist overlaps it.  The
  core then believes more is applied than the state store shows, so the
  read states of a Ready travel through the same queue and are released
  only after the entries before them are applied.  The queue is bounded
  (`APPLY_QUEUE` Readys): a slow state machine slows the Ready loop down.
  A follower's applier may hold entries up to `follower_apply_delay` to
  apply them in one transaction, never when a read state waits behind them.
* A proposal is answered only by the entry applied at its index: if the
  entry there has the proposal's term it was committed, otherwise it was lost
  (a new leader overwrote it) and the caller gets `ProposalLost` — retrying
  is safe because commands carry (client, seq) and the state machine drops
  duplicates.  A proposal made `early` is answered while the state store is
  still committing that apply (`StateMachine.apply`'s `announce`): the entry
  is committed (durable on a majority) and its outcome is a function of the
  log, so a crash only replays it.  Reads wait for the commit.
* Outgoing messages go through one bounded queue per peer; a full queue or a
  dead peer drops messages, which Raft tolerates (it retransmits on its own).
* The peers are the other members of the configuration in force (the newest
  CONFIG entry in the log): after each Ready the driver starts a sender for a
  new member and stops the sender of a removed one, and tells its listeners
  (`on_membership`) so the transport and the services learn new addresses.
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
from collections.abc import Callable, Sequence
from typing import Generic

import trio

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.driverapi import (
    A,
    Applied,
    ApplyJob,
    Busy,
    ChangeRefused,
    DriverStatus,
    Proposal,
    ProposalLost,
    RaftUnavailable,
    ReadWaiter,
    StateMachine,
    Transport,
    Waiter,
    status_dict,
)
from coord.raft.logview import entry_size
from coord.raft.membership import ConfChange, Membership
from coord.raft.messages import (
    AppendEntries,
    Heartbeat,
    Message,
    ReadCtx,
    RequestVoteResponse,
)
from coord.raft.ready import (
    NotLeader,
    Overloaded,
    Proposed,
    ReadQueued,
    Ready,
    Refused,
    Role,
    TransferStarted,
)
from coord.raft.snapdriver import SnapshotKeeper, SnapshotStateMachine
from coord.raft.snapfile import SnapshotFiles
from coord.raft.snapshot import SnapshotChunk, SnapshotMeta
from coord.raft.storage import RaftStorage
from coord.raft.types import Entry, HardState, LogIndex, NodeId
from coord.raft.worker import Worker

log = logging.getLogger(__name__)


class RaftDriver(Generic[A]):
    PEER_QUEUE = 4096  # messages buffered per peer before we start dropping
    # Readys whose entries are committed but not yet applied; when full, the Ready
    # loop waits (backpressure: the core's apply budget per Ready bounds each job).
    APPLY_QUEUE = 16
    # A follower persists a Ready of at most this many entry bytes on the trio
    # thread (see _persist); bigger ones (catching up) go to a worker thread.
    INLINE_PERSIST_BYTES = 64 << 10
    # A leader applies a batch of at most this many entries and bytes on the trio
    # thread (see _apply_batch); a follower, and bigger batches, use the worker.
    INLINE_APPLY_ENTRIES = 256
    INLINE_APPLY_BYTES = 256 << 10

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
        membership: Membership | None = None,
        snapshots: SnapshotFiles | None = None,
    ) -> None:
        """`membership` is the bootstrap configuration (default: `peers` as voters;
        `Membership.of(())` for a node joining an existing cluster)."""
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
            now=clock(), applied=applied, membership=membership,
            snapshot=snapshots.latest() if snapshots else None, snapshots=snapshots,
            partial=snapshots.partial() if snapshots else None,
        )
        self._membership = self.core.membership
        self._peers = self.core.peers
        self.on_membership: list[Callable[[Membership], None]] = []  # called on every change
        self._wake = trio.Event()
        self._proposals: dict[LogIndex, Waiter[A]] = {}
        self._reads: dict[ReadCtx, ReadWaiter] = {}
        self._read_seq = 0
        self._applied = applied
        self._outboxes: dict[NodeId, trio.MemorySendChannel[Message]] = {}
        self._apply_jobs: trio.MemorySendChannel[ApplyJob]  # set by run()
        self._leader_changed = trio.Event()
        self._last_leader: NodeId | None = None
        self.dropped_messages = 0
        # (term, vote) as last written to storage: a Ready that changes either
        # sends nothing before its fsync.
        self._durable_term_vote = (hs.term, hs.vote)
        self._completed: tuple[SnapshotMeta, bool] | None = None  # received, to install
        self._nursery: trio.Nursery | None = None  # for background snapshot takes
        # Apply jobs sent and not yet finished; `_drained` is set when it drops to 0
        # (a snapshot install waits for that: it replaces the state underneath).
        self._apply_pending = 0
        self._drained = trio.Event()
        # Long-lived threads for the two per-write blocking calls (see coord.raft.worker).
        self._persister = Worker(f"raft-persist-{node_id}")
        self._apply_worker = Worker(f"raft-apply-{node_id}")

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        self._persister.start()
        self._apply_worker.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._apply_jobs, jobs = trio.open_memory_channel[ApplyJob](self.APPLY_QUEUE)
                nursery.start_soon(self._applier, jobs, name="raft-apply")
                self._sync_peers()
                task_status.started()
                await self._loop()
        finally:
            # Every task that used them has ended (and waited for its call): quick joins.
            self._persister.stop()
            self._apply_worker.stop()

    def _sync_peers(self) -> None:
        """One sender per other member of the configuration in force."""
        assert self._nursery is not None
        for peer in self._peers:
            if peer not in self._outboxes:
                self._open_outbox(peer)
        for peer in [p for p in self._outboxes if p not in self._peers]:
            self._outboxes.pop(peer).close()  # its sender drains what is queued, then ends

    def _open_outbox(self, peer: NodeId) -> trio.MemorySendChannel[Message]:
        assert self._nursery is not None
        send, recv = trio.open_memory_channel[Message](self.PEER_QUEUE)
        self._outboxes[peer] = send
        self._nursery.start_soon(self._sender, peer, recv, name=f"raft-send-{peer}")
        return send

    def _note_membership(self) -> None:
        m = self.core.membership
        if m == self._membership:
            return
        log.info("node %d: configuration voters=%s learners=%s", self.id,
                 sorted(m.voters), sorted(m.learners))
        self._membership, self._peers = m, self.core.peers
        for listener in self.on_membership:
            listener(m)  # before the senders start, so they find the new addresses
        self._sync_peers()

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
                    await self._drain_applier()  # the install replaces the state
                    await self._install(*self._completed)
                self.core.tick(self._clock())

    def _sleep_until(self) -> float:
        deadline = self.core.next_deadline()
        return deadline if math.isfinite(deadline) else self._clock() + 1.0

    async def _handle(self, rd: Ready) -> None:
        # 1. persist.  A commit-only hard state needs no fsync (commit is
        # re-learned from the leader); it rides along with the next one that does.
        persist = bool(
            rd.entries or rd.truncate_from is not None or (rd.hard_state and rd.must_sync)
        )
        early = self._early_messages(rd) if persist else ()
        for msg in early:  # a leader's appends need not wait for its own fsync
            self._enqueue(msg)
        # 3. (early) apply what is already durable here, before this Ready's persist.
        applied_early = self._durable_here(rd)
        if applied_early:
            await self._queue_apply(rd)
        if persist:
            await self._persist(rd)
        if rd.snapshot_chunks:
            self._completed = await trio.to_thread.run_sync(self._write_chunks, rd.snapshot_chunks)
        # 2. send, only now that what the messages promise is durable.
        self._send_rest(rd, early)
        # 3. apply, and 4. serve reads (their index is <= what is applied once
        # the job's entries are): queued to the applier, which keeps their order.
        if not applied_early:
            await self._queue_apply(rd)
        for ctx in rd.failed_reads:
            self._finish_read(ctx, None)
        self._note_leader(rd)
        self._note_membership()

    @staticmethod
    def _durable_here(rd: Ready) -> bool:
        """Whether every committed entry of `rd` is already in this node's durable log
        (all below what this Ready writes), so the applier may take them before
        the Ready's persist.  Committed entries are durable on a majority anyway;
        this also keeps the state store from ever running ahead of the local log.
        It is the common case on a leader under load: the entries an ack commits
        were persisted by the previous Ready, and waiting for this Ready's fsync
        (entries proposed meanwhile) cost every write one more persist cycle.
        Measured with tools/raftprobe at 64 clients, quiet machine: see the commit."""
        if not (rd.committed_entries or rd.read_states) or rd.snapshot_chunks:
            return False
        if not rd.committed_entries:
            return True
        writes = [i for i in (rd.truncate_from, rd.entries[0].index if rd.entries else None)
                  if i is not None]
        return not writes or rd.committed_entries[-1].index < min(writes)

    async def _queue_apply(self, rd: Ready) -> None:
        if rd.committed_entries or rd.read_states:
            self._apply_pending += 1
            await self._apply_jobs.send((rd.committed_entries, rd.read_states))

    async def _persist(self, rd: Ready) -> None:
        if rd.soft_state.role is not Role.LEADER and (
            sum(entry_size(e) for e in rd.entries) <= self.INLINE_PERSIST_BYTES
        ):
            # A follower's loop waits for this persist anyway (its acks need it),
            # so a small one runs right here: the thread hand-off costs two
            # context switches per write, which on a loaded machine cost more
            # than the fdatasync itself (measured: single-client p50 about
            # 15-40 % lower).  A leader keeps the thread: blocking its loop
            # stops it reading proposals and acks meanwhile (measured: 64-client
            # throughput halved when every member persisted inline).
            self._storage.persist(rd.hard_state, rd.entries, rd.truncate_from)
        else:
            await self._persister.run(
                self._storage.persist, rd.hard_state, rd.entries, rd.truncate_from
            )
        if rd.hard_state is not None:
            self._durable_term_vote = (rd.hard_state.term, rd.hard_state.vote)

    async def _applier(self, jobs: trio.MemoryReceiveChannel[ApplyJob]) -> None:
        """Applies committed entries in log order, then releases the reads queued
        behind them.  Runs beside the Ready loop, so the next Ready's persist (and
        its fsync) overlaps this apply's commit instead of waiting for it."""
        async for first in jobs:
            batch = await self._gather(first, jobs)
            entries = tuple(e for job_entries, _ in batch for e in job_entries)
            if entries:
                self._settle(entries, await self._apply(entries))
            for _, read_states in batch:
                for rs in read_states:
                    self._finish_read(rs.ctx, rs.index)
            self._apply_pending -= len(batch)
            if not self._apply_pending:
                self._drained.set()

    async def _gather(
        self, first: ApplyJob, jobs: trio.MemoryReceiveChannel[ApplyJob]
    ) -> list[ApplyJob]:
        """`first` and the jobs that queue up behind it, for one transaction (one
        state-store fsync instead of one each), within the apply budget.

        A follower with nothing waiting for these entries (no read state among
        them, no proposal of ours) also waits up to `follower_apply_delay` for
        more: each state-store commit writes ~10 pages and syncs twice, and at
        one client every write used to cost every follower one (measured with
        tools/raftprobe: see the commit message for the figure).  A job that
        carries a read ends the wait at once, so follower reads are not slowed."""
        budget = self.core.config.max_apply_bytes
        batch = [first]
        size = sum(entry_size(e) for e in first[0])
        deadline = -math.inf
        if not first[1] and self._may_defer_apply():
            deadline = self._clock() + self.core.config.follower_apply_delay
        while size < budget:
            job: ApplyJob | None = None
            try:
                job = jobs.receive_nowait()
            except trio.WouldBlock:
                if self._clock() >= deadline:
                    break
                with trio.move_on_at(deadline):
                    job = await jobs.receive()  # cancel-safe: a cancelled receive takes nothing
                if job is None:
                    break
            except trio.EndOfChannel:
                break
            batch.append(job)
            size += sum(entry_size(e) for e in job[0])
            if job[1]:
                deadline = -math.inf  # a read waits: apply now
        return batch

    def _may_defer_apply(self) -> bool:
        return (
            self.core.config.follower_apply_delay > 0
            and not self._proposals
            and self.core.soft_state().role is not Role.LEADER
        )

    async def _drain_applier(self) -> None:
        """Wait until every queued apply job is done (the core's applied index is
        then the state store's)."""
        while self._apply_pending:
            self._drained = trio.Event()
            await self._drained.wait()

    async def _apply_batch(self, entries: Sequence[Entry]) -> Sequence[A]:
        """Apply, here or in the worker thread (see _inline_apply).  When clients
        wait for some of these entries, they are answered as soon as the
        outcomes are known, before the state store's commit and fsync: an
        outcome is a function of the committed log, which is already durable
        on a majority.  Reads are not served until this returns (the store
        shows the entries only after the commit)."""
        early = any((w := self._proposals.get(e.index)) and w.early for e in entries)
        if self._inline_apply(entries):
            if not early:
                return self._fsm.apply(entries)
            return self._fsm.apply(entries, lambda out: self._release(entries, tuple(out), True))
        if not early:
            return await self._apply_worker.run(self._fsm.apply, entries)
        token = trio.lowlevel.current_trio_token()

        def announce(results: Sequence[A]) -> None:  # runs in the worker thread
            # Queued, not waited for: the worker goes on to the commit at once, and
            # the trio thread runs this before it resumes us (run_sync_soon is FIFO
            # and the worker's completion is queued after it).
            token.run_sync_soon(self._release, entries, tuple(results), True)

        return await self._apply_worker.run(self._fsm.apply, entries, announce)

    def _inline_apply(self, entries: Sequence[Entry]) -> bool:
        """Whether a leader applies `entries` right here, on the trio thread.

        The apply is Python code holding the GIL: in a worker thread it ran no
        faster, and the hand-offs (the worker waiting for the GIL while the
        trio thread served sockets, then the trio thread waiting to be woken)
        made every write wait ~1 ms longer.  Measured with tools/raftprobe at
        64 clients, 3 interleaved triples: 5,780-5,930 writes/s applying
        inline vs 5,220-5,280 in the worker, CPU per write 0.27 vs 0.30 ms.
        A follower keeps the worker: it applies in large, delayed batches
        (follower_apply_delay) that would stall its acks, and nobody waits
        for them.  Big batches (a new leader catching up) keep it too: the
        loop must not stop for long."""
        return (
            self.core.role is Role.LEADER
            and len(entries) <= self.INLINE_APPLY_ENTRIES
            and sum(entry_size(e) for e in entries) <= self.INLINE_APPLY_BYTES
        )

    def _release(
        self, entries: Sequence[Entry], results: Sequence[A], early_only: bool = False
    ) -> None:
        """Answer the proposals among `entries` (only those proposed `early`, if
        `early_only`); `_settle` later answers the rest."""
        by_index = {r.index: r for r in results}
        for entry in entries:
            waiter = self._proposals.get(entry.index)
            if waiter is None or (early_only and not waiter.early):
                continue
            del self._proposals[entry.index]
            if entry.term == waiter.term:
                waiter.result = by_index.get(entry.index)
            else:
                waiter.lost = True
            waiter.finish()

    def _early_messages(self, rd: Ready) -> tuple[Message, ...]:
        """A leader's appends and heartbeats, unless this Ready changes term or vote."""
        if rd.soft_state.role is not Role.LEADER:
            return ()
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) != self._durable_term_vote:
            return ()
        return tuple(m for m in rd.messages if isinstance(m, AppendEntries | Heartbeat))

    def _send_rest(self, rd: Ready, early: Sequence[Message]) -> None:
        sent = {id(m) for m in early}
        for msg in rd.messages:
            if id(msg) in sent:
                continue
            if isinstance(msg, RequestVoteResponse) and msg.granted and not msg.pre_vote:
                # An audit line per vote: tests check no member votes twice in a term.
                log.info("node %d: vote granted to %d in term %d", self.id, msg.dst, msg.term)
            self._enqueue(msg)

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
                waiter.finish()

    async def _apply(self, entries: Sequence[Entry]) -> list[A]:
        """Apply; at a snapshot boundary, pin the state exactly there in between."""
        keeper, nursery = self._keeper, self._nursery
        cut = keeper.boundary(entries) if keeper is not None and nursery else None
        if cut is None or keeper is None or nursery is None:
            return list(await self._apply_batch(entries))
        k = cut - entries[0].index + 1
        results = list(await self._apply_batch(entries[:k]))
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
            results += await self._apply_batch(entries[k:])
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
        if entries:
            self._applied = entries[-1].index
        self._release(entries, results)

    # ------------------------------------------------------------------ transport
    def _enqueue(self, msg: Message) -> None:
        box = self._outboxes.get(msg.dst)
        if box is None and self._nursery is not None:
            # Not a member we know of (we are joining, or it was removed): answer it
            # anyway; the transport drops it if it has no address for that node.
            box = self._open_outbox(msg.dst)
        if box is None:
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
                except (trio.WouldBlock, trio.EndOfChannel):  # closed: the peer was removed
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

    async def propose(self, data: bytes, *, early: bool = False) -> A:
        """Replicate `data`; return its state-machine result once applied here.

        With `early`, return as soon as the result is known, possibly before
        the state store has committed it (so a read of the local store that
        bypasses `read_barrier` may not show it yet): for callers that only
        pass the result on, like the KV service.  Raises RaftUnavailable (not
        leader), Busy, or ProposalLost.  The caller bounds the wait with its
        own deadline (cancel scope).
        """
        waiter = self._start_proposal(data, early, trio.Event(), None)
        assert waiter.done is not None
        try:
            await waiter.done.wait()
        finally:
            if not waiter.done.is_set():
                self._withdraw(waiter)
        if waiter.lost or waiter.result is None:
            raise ProposalLost(f"entry {waiter.index} was overwritten by a new leader",
                               self.leader)
        return waiter.result

    def propose_nowait(
        self, data: bytes, on_done: Callable[[A | ProposalLost], None], *, early: bool = False
    ) -> Proposal[A]:
        """`propose` without a task: `on_done(result or ProposalLost)` is called
        once, later, on the trio thread, from wherever `propose` would have
        woken up (apply, snapshot install).  Raises RaftUnavailable or Busy at
        once like `propose`.  The caller bounds the wait itself and calls
        `abandon` when it stops waiting (then on_done is never called).
        Why: a proposal then costs no trio.Event, task switch or cancel
        scope (see KvService.submit_deferred for the figure)."""
        return self._start_proposal(data, early, None, on_done)

    def abandon(self, proposal: Proposal[A]) -> None:
        """Stop waiting for a `propose_nowait`; its on_done will not be called."""
        if not proposal.finished:
            proposal.finished = True
            self._withdraw(proposal)

    def _start_proposal(
        self, data: bytes, early: bool, done: trio.Event | None,
        on_done: Callable[[A | ProposalLost], None] | None,
    ) -> Waiter[A]:
        result = self.core.propose(data)
        match result:
            case NotLeader(hint):
                raise RaftUnavailable("not the leader", hint)
            case Overloaded(used, limit):
                raise Busy(f"{used} uncommitted bytes (limit {limit})", self.id)
            case Refused(reason):
                raise Busy(reason, self.id)
            case Proposed(index, term):
                waiter: Waiter[A] = Waiter(term, early, done, on_done, index=index,
                                             leader=self._leader_hint)
                self._proposals[index] = waiter
        self._wake.set()
        return waiter

    def _leader_hint(self) -> NodeId | None:
        return self.leader

    def _withdraw(self, waiter: Waiter[A]) -> None:
        # Only this waiter: after a leader change another proposal may own the index.
        index = LogIndex(waiter.index)
        if self._proposals.get(index) is waiter:
            del self._proposals[index]

    async def change_membership(self, change: ConfChange) -> LogIndex:
        """Propose a single-server membership change; return its index once applied here.

        Raises RaftUnavailable (not leader), ChangeRefused (with the reason) or
        ProposalLost.  The caller bounds the wait with its own deadline."""
        result = self.core.propose_conf_change(change)
        match result:
            case NotLeader(hint):
                raise RaftUnavailable("not the leader", hint)
            case Refused(reason):
                raise ChangeRefused(reason, self.id)
            case Overloaded():
                raise Busy("too many uncommitted bytes", self.id)
            case Proposed(index, term):
                done = trio.Event()
                waiter: Waiter[A] = Waiter(term, done=done)
                self._proposals[index] = waiter
        self._wake.set()
        try:
            await done.wait()
        finally:
            if not done.is_set():
                self._proposals.pop(index, None)
        if waiter.lost:
            raise ProposalLost(f"entry {index} was overwritten by a new leader", self.leader)
        return index

    async def transfer_leadership(self, target: NodeId | None) -> NodeId:
        """Hand leadership to `target` (None: the most caught-up voter); return the
        new leader once this node has seen it.  Raises RaftUnavailable (not leader),
        ChangeRefused, or RaftUnavailable again if the transfer timed out."""
        result = self.core.transfer_leadership(target, self._clock())
        match result:
            case NotLeader(hint):
                raise RaftUnavailable("not the leader", hint)
            case Refused(reason):
                raise ChangeRefused(reason, self.id)
            case TransferStarted(chosen):
                pass
        self._wake.set()
        with trio.move_on_after(2 * self.core.config.election_timeout_max):
            while True:
                leader = self.leader
                if leader is not None and leader != self.id:
                    return leader
                if self.is_leader and self.core.transfer_target is None:
                    break  # aborted: the target did not take over within an election timeout
                with trio.move_on_after(self.core.config.heartbeat_interval):
                    await self._leader_changed.wait()
        raise RaftUnavailable(f"transfer to {chosen} did not complete", self.leader)

    async def read_barrier(self) -> LogIndex:
        """Wait until a read of the local state machine is linearizable (ReadIndex).

        Works on followers too (the leader confirms the index).  Raises
        RaftUnavailable when no leader can confirm it.
        """
        self._read_seq += 1
        ctx = ReadCtx(self.id.to_bytes(8, "big") + self._read_seq.to_bytes(8, "big"))
        started = self.core.read_index(ctx, self._clock())
        if not isinstance(started, ReadQueued):
            raise RaftUnavailable("no leader to confirm a read", started.leader_hint)
        waiter = ReadWaiter()
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

    async def _cancel_on_leader_change(self, waiter: ReadWaiter, scope: trio.CancelScope) -> None:
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
        m = self.core.membership
        return DriverStatus(
            node_id=self.id, role=soft.role.value, term=int(soft.term), leader=soft.leader,
            commit_index=int(self.core.commit_index), applied_index=int(self._applied),
            last_index=int(self._storage.last_index()), peers=self._peers, match=match,
            # Not part of the RaftStorage Protocol: only adapters that fsync count.
            fsyncs=int(getattr(self._storage, "fsyncs", 0)),
            voters=tuple(sorted(m.voters)), learners=tuple(sorted(m.learners)),
            first_index=int(self.core.log.first_index()),
            snapshot_index=int(self.core.snapshot.index) if self.core.snapshot else 0,
            snapshots_taken=self._keeper.taken if self._keeper else 0,
            snapshots_installed=self._keeper.installed if self._keeper else 0,
        )


__all__ = [
    "Applied",
    "Busy",
    "ChangeRefused",
    "DriverStatus",
    "Proposal",
    "ProposalLost",
    "RaftDriver",
    "RaftUnavailable",
    "StateMachine",
    "Transport",
    "status_dict",
]
