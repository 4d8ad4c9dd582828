"""The primary's side of the two-phase commit: the driver of `twopc.Round`
(one mutation) and `twopc.plan_resolution` (settling what an earlier
primary left undecided), on top of the local `Participant` and RPCs to the
secondaries.

Invariants:

* Before the first mutation under a token (and again after a round of it
  ended abnormally), the primary fences every replica with the token and
  settles every undecided mutation (`_book`); only then are serials of the
  token handed out (`Book`).  A new `Book` waits for every round of the
  previous one to end first, so the primary never decides one mutation
  twice.
* A round, once it has a serial, runs to its end even if the client's
  request is cancelled (shielded, bounded by `round_bound`): every serial
  gets a decision sent, or the book is marked stale (re-settled before the
  next mutation).  `Book.finish` always runs, so later rounds never wait
  for a dead one.
* Decisions are sent in serial order (`Book.ready_to_decide`), so replicas
  only wait for decisions already on their way.
* A replica that did not take a decision has missed a serial: it is
  `broken` for the rest of the token, never asked again, and reported in
  every reply (the client drops it from the chunk map).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import trio

from coord.lease import FencingToken
from coord.rpc import RemoteError, Request, RpcClient, RpcError
from fs.chunk import protocol as p
from fs.chunk.ordering import ChunkGate, Reject
from fs.chunk.participant import Participant, reject
from fs.chunk.runner import ChunkLocks, Runner
from fs.chunk.twopc import (
    UNREACHABLE,
    Book,
    Decision,
    Finished,
    Outcome,
    Refuse,
    Reply,
    Round,
    Step,
    plan_resolution,
)
from fs.types import CHUNK_SIZE, ChunkHandle, ChunkVersion

log = logging.getLogger(__name__)
R = TypeVar("R")

SetVersion = Callable[[p.ChunkSetVersion], Awaitable[p.SetVersionReply]]


@dataclass(frozen=True, slots=True)
class ClientMutation:
    """A client's mutation as the primary received it."""

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    secondaries: list[str]
    offset: int  # a write's offset; a truncate's length
    data: bytes | None  # None: a truncate
    origin: int  # whose staged data the secondaries take
    data_id: int


@dataclass(frozen=True, slots=True)
class Appended:
    """A record append at the primary: where it went, and the round's reply."""

    offset: int
    full: bool  # did not fit: nothing written, `reply` is a no-op
    reply: Reply


class Primary:
    def __init__(self, address: str, runner: Runner, gate: ChunkGate, local: Participant,
                 peers: RpcClient, set_version: SetVersion, *, call_timeout: float) -> None:
        self.address = address
        self._run = runner
        self._gate = gate
        self._local = local
        self._peers = peers
        self._set_version = set_version
        self._timeout = call_timeout  # one prepare/decide/inquiry to one replica
        self.round_bound = 4 * call_timeout  # a whole round, whatever the client does
        self._books: dict[ChunkHandle, Book] = {}
        self._inflight: dict[ChunkHandle, int] = {}  # rounds running per chunk
        self._settled: dict[ChunkHandle, int] = {}  # mutations the last resolution settled
        self._resolving = ChunkLocks()  # one resolution per chunk at a time
        self._progress = ChunkLocks()  # events: a book moved (decided, round ended)
        self._placing = ChunkLocks()  # record appends pick their offsets one at a time
        # (token, end): how far appends under `token` have claimed the chunk so far
        self._append_end: dict[ChunkHandle, tuple[FencingToken, int]] = {}

    # -- the entry points -----------------------------------------------------

    async def mutate(self, m: ClientMutation) -> Reply:
        """Admit, settle earlier leases if needed, run one round.  Shielded: the
        round ends properly even if the client's request is cancelled."""
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self.round_bound):
                    reply = await self._mutate(m)
            except trio.TooSlowError:
                raise RemoteError(p.EIO, f"chunk {m.handle}: the mutation did not finish "
                                         f"within {self.round_bound} s") from None
        return reply

    async def _mutate(self, m: ClientMutation) -> Reply:
        if m.data is None:  # a truncate: appends continue from the new length
            self._append_end.pop(m.handle, None)
        await self._admit(m.handle, m.version, m.token)
        book = await self._book(m.handle, m.version, m.token, m.secondaries)
        if isinstance(book, Finished):
            return book
        serial = book.assign()
        self._inflight[m.handle] = self._inflight.get(m.handle, 0) + 1
        try:
            return await self._round(book, m, serial)
        finally:
            book.finish(serial)
            self._inflight[m.handle] -= 1
            self._progress.notify(m.handle)

    async def append(self, m: ClientMutation) -> Appended:
        """GFS record append: pick the offset here, then run a normal round there.

        The offset is the furthest of the committed data (after settling what
        earlier leases left undecided: `_book`) and every offset this lease
        already handed out, so appends running concurrently never overlap.  An
        aborted round leaves its range unused (zeros): records are at least
        once and framed by their writers, as in GFS."""
        assert m.data is not None
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self.round_bound):
                    await self._admit(m.handle, m.version, m.token)
                    book = await self._book(m.handle, m.version, m.token, m.secondaries)
                    if isinstance(book, Finished):
                        return Appended(0, False, book)
                    offset = await self._place(m.handle, m.token, len(m.data))
            except trio.TooSlowError:
                raise RemoteError(p.EIO, f"chunk {m.handle}: no offset for the append "
                                         f"within {self.round_bound} s") from None
        if offset is None:
            end = self._append_end[m.handle][1]
            return Appended(end, True, Finished(0, (), committed=True))
        return Appended(offset, False, await self.mutate(replace(m, offset=offset)))

    async def _place(self, handle: ChunkHandle, token: FencingToken, size: int) -> int | None:
        """Claim `size` bytes at the chunk's append end; None if they do not fit
        (the chunk is then closed to appends under `token`)."""
        async with self._placing.hold(handle):
            st = self._run.store.state(handle)
            end = st.length if st is not None else 0
            claimed = self._append_end.get(handle)
            if claimed is not None and claimed[0] == token:
                end = max(end, claimed[1])
            if end + size > CHUNK_SIZE:
                self._append_end[handle] = (token, CHUNK_SIZE)
                return None
            self._append_end[handle] = (token, end + size)
            return end

    async def begin(self, req: p.ChunkBegin) -> p.BeginReply:
        """Settle, then raise every replica to the lease's version."""
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self.round_bound):
                    reply = await self._begin(req)
            except trio.TooSlowError:
                raise RemoteError(p.EIO, f"chunk {req.handle}: settling did not finish "
                                         f"within {self.round_bound} s") from None
        return reply

    async def _begin(self, req: p.ChunkBegin) -> p.BeginReply:
        handle = req.handle
        await self._admit(handle, req.version, req.token)
        book = await self._book(handle, req.version, req.token, req.secondaries)
        if isinstance(book, Finished):
            return p.BeginReply(req.version, list(book.failed), 0)
        request = p.ChunkSetVersion(handle, req.version, req.token)
        targets = [a for a in req.secondaries if a not in book.broken and a != self.address]
        outcomes = await self._everyone(targets, request, lambda: self._set_version(request))
        stale = next((o for o in outcomes if o.code in (p.STALE_VERSION, p.STALE_TOKEN)), None)
        if stale is not None:
            raise RemoteError(stale.code or p.STALE_VERSION, stale.message)
        # A full disk is not a lost replica: it is not reported for that.
        failed = {o.address for o in outcomes if o.code not in (None, p.ENOSPC)}
        st = self._run.store.state(handle)
        return p.BeginReply(st.version if st else req.version,
                            [a for a in req.secondaries if a in failed | book.broken],
                            self._settled.get(handle, 0))

    def forget(self, handle: ChunkHandle) -> None:
        """The replica was deleted here: the next mutation settles afresh."""
        book = self._books.get(handle)
        if book is not None:
            book.stale = True
        self._append_end.pop(handle, None)

    # -- admission and the book -------------------------------------------------

    async def _admit(self, handle: ChunkHandle, version: ChunkVersion,
                     token: FencingToken) -> None:
        async with self._run.locks.hold(handle):
            d = self._gate.primary(self._run.store.state(handle), handle, version, token)
        if isinstance(d, Reject):
            raise reject(d)

    async def _book(self, handle: ChunkHandle, version: ChunkVersion, token: FencingToken,
                    secondaries: Sequence[str]) -> Book | Finished:
        """The numbering for `token`, settling earlier mutations first if needed."""
        async with self._resolving.hold(handle):
            book = self._books.get(handle)
            if book is not None and book.token == token and not book.stale:
                return book
            if book is not None and book.token > token:
                raise RemoteError(p.STALE_TOKEN, f"chunk {handle}: token {token} < "
                                                 f"{book.token}")
            while self._inflight.get(handle, 0):  # bounded by round_bound
                changed = self._progress.changed(handle)
                await changed.wait()
            replicas = [self.address, *dict.fromkeys(a for a in secondaries
                                                     if a != self.address)]
            reports = await self._inquire(handle, token, replicas)
            plan = plan_resolution(token, reports, replicas)
            if isinstance(plan, Refuse):
                raise RemoteError(plan.code, plan.message)
            failed = set(plan.failed) | await self._settle(handle, token, version, plan.steps)
            if failed:
                log.warning("chunk %d: cannot settle on %s; reporting them", handle,
                            sorted(failed))
                return Finished(0, tuple(a for a in replicas if a in failed), committed=False)
            if plan.settled:
                log.info("chunk %d: settled %d undecided mutation(s) under token %d", handle,
                         plan.settled, token)
            book = Book(token, next_serial=plan.next_serial, decided=plan.next_serial - 1)
            self._books[handle] = book
            self._settled[handle] = plan.settled
            return book

    async def _inquire(self, handle: ChunkHandle, token: FencingToken,
                       replicas: Sequence[str]) -> dict[str, p.IntentsReply | None]:
        request = p.ChunkIntents(handle, token)
        reports: dict[str, p.IntentsReply | None] = dict.fromkeys(replicas)

        async def one(address: str) -> None:
            try:
                report: p.IntentsReply
                if address == self.address:
                    report = await self._local.inquire(request)
                else:
                    report = await self._call(address, request)
                reports[address] = report
            except RemoteError as exc:
                if exc.code == p.STALE_TOKEN:
                    raise
                log.info("inquiry of chunk %d at %s: %s", handle, address, exc)
            except RpcError as exc:
                log.info("inquiry of chunk %d at %s: %s", handle, address, exc)

        async with trio.open_nursery() as nursery:
            for address in replicas:
                nursery.start_soon(one, address)
        return reports

    async def _settle(self, handle: ChunkHandle, token: FencingToken, version: ChunkVersion,
                      steps: Mapping[str, tuple[Step, ...]]) -> set[str]:
        """Send each replica its decisions, in order; the replicas that failed."""
        failed: set[str] = set()

        async def one(address: str, mine: tuple[Step, ...]) -> None:
            for step in mine:
                request = p.ChunkDecide(handle, step.token, step.serial,
                                        step.decision is Decision.COMMIT, token, version)
                outcome = await self._decide_one(address, request)
                if outcome.code == p.STALE_TOKEN:
                    raise RemoteError(p.STALE_TOKEN, outcome.message)
                if outcome.code is not None:
                    log.warning("chunk %d: %s could not take %s: %s", handle, address, step,
                                outcome.message or outcome.code)
                    failed.add(address)
                    return

        async with trio.open_nursery() as nursery:
            for address, mine in steps.items():
                nursery.start_soon(one, address, mine)
        return failed

    # -- one round ----------------------------------------------------------------

    async def _round(self, book: Book, m: ClientMutation, serial: int) -> Reply:
        rnd = Round((m.token, serial), self.address,
                    [a for a in m.secondaries if a != self.address], book.broken)
        clean = False
        try:
            votes = await self._prepare_all(rnd, m, serial)
            decision = rnd.voted(votes)
            while not book.ready_to_decide(serial):  # bounded: earlier rounds end
                changed = self._progress.changed(m.handle)
                await changed.wait()
            request = p.ChunkDecide(m.handle, m.token, serial, decision is Decision.COMMIT,
                                    m.token, m.version)
            acks = await _gather([self._decide_one(a, request) for a in rnd.deciders])
            missed = rnd.failed_to_hear(acks) - {self.address}
            book.broken |= missed
            reply = rnd.acknowledged(acks)
            clean = self.address not in rnd.failed_to_hear(acks)
            return reply
        finally:
            if not clean:  # our own copy may hold it undecided: settle before going on
                book.stale = True

    async def _prepare_all(self, rnd: Round, m: ClientMutation, serial: int) -> list[Outcome]:
        truncate = m.data is None
        request = p.ChunkPrepare(m.handle, m.version, m.token, serial, m.data_id, m.offset,
                                 m.origin, truncate)

        async def local() -> Outcome:
            try:
                await self._local.prepare(request, m.data, primary=True)
            except RemoteError as exc:
                return Outcome(self.address, exc.code, exc.message)
            return Outcome(self.address)

        calls = [local() if a == self.address else self._remote(a, request)
                 for a in rnd.voters]
        return await _gather(calls)

    async def _decide_one(self, address: str, request: p.ChunkDecide) -> Outcome:
        if address != self.address:
            return await self._remote(address, request)
        try:
            await self._local.decide(request, trio.current_time() + self._timeout)
        except RemoteError as exc:
            return Outcome(address, exc.code, exc.message)
        return Outcome(address)

    async def _remote(self, address: str, request: Request[Any]) -> Outcome:
        try:
            await self._call(address, request)
        except RemoteError as exc:
            return Outcome(address, exc.code, exc.message)
        except RpcError as exc:
            log.info("%s to %s: %s", type(request).__name__, address, exc)
            return Outcome(address, UNREACHABLE, str(exc))
        return Outcome(address)

    async def _call(self, address: str, request: Request[R]) -> R:
        return await self._peers.call(address, request,
                                      deadline=trio.current_time() + self._timeout)

    async def _everyone(self, secondaries: Sequence[str], request: Request[Any],
                        local: Callable[[], Awaitable[object]]) -> list[Outcome]:
        """`request` to every secondary and `local()` here, concurrently."""

        async def here() -> Outcome:
            try:
                await local()
            except RemoteError as exc:
                return Outcome(self.address, exc.code, exc.message)
            return Outcome(self.address)

        return await _gather([here(), *(self._remote(a, request) for a in secondaries)])


async def _gather(calls: Sequence[Awaitable[Outcome]]) -> list[Outcome]:
    """Run the calls concurrently; their outcomes in order (they never raise
    for a replica's failure)."""
    out: list[Outcome | None] = [None] * len(calls)

    async def one(k: int, call: Awaitable[Outcome]) -> None:
        out[k] = await call

    async with trio.open_nursery() as nursery:
        for k, call in enumerate(calls):
            nursery.start_soon(one, k, call)
    return [o for o in out if o is not None]
