"""The KV client: a session with the replicated store, leader discovery,
redirects and retries inside a bounded time.

Exactly-once across leader changes (thesis §6.3): the client registers a
session, builds each request once with its (client id, seq) and resends that
same value to whichever member it tries next; the state machine executes a
(client, seq) at most once and answers duplicates from its reply cache.  A
reply of SESSION_EXPIRED means the command was not executed (and never will
be): the client raises, it does not silently re-register and re-run.

Watches (`KvClient.watch`, docs/watch.md) need no session: they are reads
of the event log that any member serves; the iterator keeps the next index
to ask for and carries it to another member after a failure, so it yields
every event once, in log order.

Invariants: every public call finishes (result or error) within its
timeout (a watch iteration: one long poll plus that timeout); retries and
backoff live here and nowhere else on the client side.
"""

from __future__ import annotations

import collections
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Protocol, TypeVar

import msgpack
import trio

from coord.kv.client import ClientSession
from coord.kv.codec import CodecError
from coord.kv.commands import (
    Body,
    Cas,
    Command,
    Delete,
    Get,
    Put,
    Query,
    Range,
    RegisterClient,
    Txn,
    encode_body,
    query_wire,
    request_wire,
)
from coord.kv.events import decode_events
from coord.kv.results import (
    CasResult,
    DeleteResult,
    ErrorCode,
    ErrorResult,
    GetResult,
    KeepAliveResult,
    PutResult,
    RangeResult,
    RegisterResult,
    Result,
    TxnResult,
    decode_result,
)
from coord.kv.service import OK, KvRead, KvReply, KvSubmit
from coord.kv.types import KeyValue, WatchEvent
from coord.kv.watch import KvWatch, WatchReply
from coord.rpc import RemoteError, RpcClient, RpcError, is_transient

T = TypeVar("T")


class KvError(Exception):
    """A KV operation failed for good (not a transient condition)."""


class KvTimeout(KvError):
    """No member could complete the operation within the timeout; it may or may not
    have taken effect (a later read tells)."""


class SessionExpired(KvError):
    """The session expired: the command was not executed."""


class EventsCompacted(KvError):
    """COMPACTED: the events a watch asked for are gone (compacted behind a snapshot
    or past the retention bound).  Watch from `floor + 1` or later."""

    def __init__(self, floor: int) -> None:
        super().__init__(
            f"COMPACTED: the events up to index {floor} are gone (watch from {floor + 1})"
        )
        self.floor = floor


class Routed(Protocol):
    """A reply that follows the KV service's status convention."""

    @property
    def status(self) -> str: ...

    @property
    def leader(self) -> str: ...


RT = TypeVar("RT", bound=Routed)


class LeaderRouter:
    """Leader discovery, redirects and bounded retries for calls to the metadata
    members whose replies carry `status` and a `leader` hint (KV, FS, heartbeats).

    `call(attempt)` runs `attempt(address)` against the best-known leader (else
    the endpoints round-robin) until a reply has status OK, following fresh
    redirects at once and backing off (jittered, doubling to 0.5 s) otherwise.
    It raises `KvTimeout` after `timeout` seconds, `KvError` on a permanent RPC
    error.  Shared by every client of the metadata service so the retry policy
    lives in one place.
    """

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float, rng: random.Random | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self.leader: str | None = None  # best guess of the leader's address
        self._turn = 0  # round-robin position when no leader is known
        self.retries = 0  # attempts beyond the first, for tests and tools

    def _next_address(self) -> str:
        if self.leader is not None:
            return self.leader
        addr = self.endpoints[self._turn % len(self.endpoints)]
        self._turn += 1
        return addr

    async def call(
        self, attempt: Callable[[str], Awaitable[RT]], *, attempt_bound: float | None = None
    ) -> RT:
        """`attempt_bound`: the caller's promise that `attempt` ends (reply or
        error) within that many seconds on its own, e.g. an RPC with that
        timeout.  Then the first try at a known leader runs outside the
        cancel scope that enforces `timeout`: entering and leaving that scope
        was 14% of the KV client's CPU per call at 64 clients (trio keeps a
        deadline heap), and the scope is only needed once something failed."""
        deadline = trio.current_time() + self.timeout
        last = "no attempt finished"  # what went wrong last, for KvTimeout
        again_now = True  # no backoff before the next try
        # (The awaits are written out here rather than in a helper: every await
        # level is walked again on each of a call's suspensions and resumptions.)
        if attempt_bound is not None and attempt_bound <= self.timeout and self.leader:
            addr = self.leader
            try:
                reply = await attempt(addr)
            except RpcError as exc:
                last, again_now = self._failed(addr, exc), False
            else:
                if reply.status == OK:
                    return reply
                last, again_now = f"{addr}: {reply.status}", self._refused(addr, reply)
        backoff = 0.02
        with trio.move_on_at(deadline):
            while True:
                if not again_now:
                    await trio.sleep(self._rng.uniform(0, backoff))
                    backoff = min(backoff * 2, 0.5)
                addr = self._next_address()
                try:
                    reply = await attempt(addr)
                except RpcError as exc:
                    last, again_now = self._failed(addr, exc), False
                else:
                    if reply.status == OK:
                        self.leader = addr
                        return reply
                    last, again_now = f"{addr}: {reply.status}", self._refused(addr, reply)
        raise KvTimeout(f"no member answered within {self.timeout:g} s (last: {last})")

    def _failed(self, addr: str, exc: RpcError) -> str:
        """Account for an attempt that raised (the next one backs off first);
        returns what went wrong."""
        if not is_transient(exc) and not _retry_elsewhere(exc):
            raise KvError(f"{addr}: {exc}") from exc
        self.leader = None
        self.retries += 1
        return f"{addr}: {exc}"

    def _refused(self, addr: str, reply: Routed) -> bool:
        """Account for a reply other than OK; True when it is a fresh redirect
        (go there at once)."""
        self.leader = reply.leader or None
        self.retries += 1
        return bool(reply.leader) and reply.leader != addr


class KvClient:
    """Use as `async with KvClient(rpc, endpoints) as kv: await kv.put(b"k", b"v")`."""

    def __init__(
        self,
        rpc: RpcClient,
        endpoints: Sequence[str],
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._rpc = rpc
        self._router = LeaderRouter(endpoints, timeout=timeout, rng=rng)
        self._attempt = attempt_timeout
        self._session: ClientSession | None = None
        # A Packer of our own (a KvClient lives on one trio thread): msgpack.packb
        # builds a Packer per call, 0.8 us of a put's 1.1 us of packing.
        self._pack = msgpack.Packer(use_bin_type=True).pack
        # How long one attempt can take: the RPC's timeout, plus the grace after
        # which its watchdog fails a call that the server did not end itself.
        self._attempt_bound = attempt_timeout + rpc.config.reply_grace

    @property
    def retries(self) -> int:
        """Attempts beyond the first, for tests and tools."""
        return self._router.retries

    async def __aenter__(self) -> KvClient:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def open(self) -> None:
        """Register a session (one log entry)."""
        result = await self._submit(RegisterClient())
        if not isinstance(result, RegisterResult):
            raise KvError(f"registering a session failed: {result}")
        self._session = ClientSession(result.client_id)

    async def keep_alive(self) -> None:
        """Refresh the session (a log entry); long-lived clients call it well within
        the session TTL that `open` reported."""
        if self._session is None:
            raise KvError("the client has no session")
        _expect(await self._submit(self._session.keep_alive()), KeepAliveResult)

    # ------------------------------------------------------------------ operations
    async def put(self, key: bytes, value: bytes) -> PutResult:
        return _expect(await self._command(Put(key, value)), PutResult)

    async def delete(self, key: bytes) -> DeleteResult:
        return _expect(await self._command(Delete(key)), DeleteResult)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> CasResult:
        return _expect(await self._command(Cas(key, expected, new)), CasResult)

    async def txn(self, txn: Txn) -> TxnResult:
        return _expect(await self._command(txn), TxnResult)

    async def get(self, key: bytes) -> KeyValue | None:
        return _expect(await self._query(Get(key)), GetResult).kv

    async def range(self, start: bytes, end: bytes | None, limit: int = 0) -> RangeResult:
        return _expect(await self._query(Range(start, end, limit)), RangeResult)

    def watch(
        self, prefix: bytes, from_index: int = 0, *, wait_s: float = 5.0, max_events: int = 256
    ) -> Watch:
        """Every change of a key under `prefix` from log index `from_index` on, in
        order, once each: `async for ev in kv.watch(b"app/", 1)` (see `Watch`).
        `from_index` 0 means from now: after the applied index of the first member
        that answers (a lagging follower's "now" is a little in the past)."""
        # its own router: a long poll needs a longer budget than other calls
        router = LeaderRouter(self._router.endpoints, timeout=self._router.timeout + wait_s)
        return Watch(self._rpc, router, prefix, from_index, wait_s + self._attempt,
                     KvWatch(prefix, from_index, max_events, wait_s))

    # ------------------------------------------------------------------ machinery
    async def _command(self, command: Command) -> Result:
        session = self._session
        if session is None:
            raise KvError("the client has no session: use `async with KvClient(...)`")
        seq, acked = session.issue()
        # Encoded once, straight from the fields (no ClientRequest, packed by this
        # client's own Packer): retries resend these same bytes, so the state
        # machine sees one (client, seq) however often it arrives.
        request = KvSubmit(self._pack(request_wire(session.client_id, seq, acked, command)))
        reply = await self._router.call(self._attempt_of(request),
                                        attempt_bound=self._attempt_bound)
        session.completed(seq)
        return _checked(decode_result(reply.result))

    async def _submit(self, body: Body) -> Result:
        reply = await self._router.call(self._attempt_of(KvSubmit(encode_body(body))),
                                        attempt_bound=self._attempt_bound)
        return _checked(decode_result(reply.result))

    async def _query(self, query: Query) -> Result:
        reply = await self._router.call(self._attempt_of(KvRead(self._pack(query_wire(query)))),
                                        attempt_bound=self._attempt_bound)
        return _checked(decode_result(reply.result))

    def _attempt_of(self, request: KvSubmit | KvRead) -> Callable[[str], Awaitable[KvReply]]:
        # a partial, not a coroutine function: one await level fewer per call
        return functools.partial(self._rpc.call, request=request, timeout=self._attempt)


class Watch:
    """An async iterator over the events of one prefix (`KvClient.watch`).

    Runs until the caller stops (a plain iterator, not a generator: nothing to
    close); follows failures to other members, as any member serves watches.
    `__anext__` raises EventsCompacted, or KvTimeout when no member answers.
    To resume later, watch again from `next_index` once the batch in hand is
    consumed (`pending` == 0); a caller that stops in the middle of an entry
    resumes from that entry's index and skips the (index, sub) pairs it has.
    """

    def __init__(self, rpc: RpcClient, router: LeaderRouter, prefix: bytes, from_index: int,
                 attempt_timeout: float, request: KvWatch) -> None:
        if from_index < 0:
            raise ValueError("from_index must be >= 0")
        self._rpc = rpc
        self._router = router
        self._attempt = attempt_timeout
        self._request = request  # the next poll; from_index is where the stream stands
        self._batch: collections.deque[WatchEvent] = collections.deque()

    @property
    def next_index(self) -> int:
        """The index the next poll asks for (0 until the first reply when from now)."""
        return self._request.from_index

    @property
    def pending(self) -> int:
        """Events received but not yet handed out."""
        return len(self._batch)

    @property
    def member(self) -> str | None:
        """The address of the member the last poll was answered by."""
        return self._router.leader

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._batch:  # each round is one long poll; the caller bounds the wait
            await self._poll()
        return self._batch.popleft()

    async def _poll(self) -> None:
        req = self._request
        reply = await self._router.call(functools.partial(self._poll_at, req))
        if reply.compacted:
            raise EventsCompacted(reply.compacted)
        try:
            events = decode_events(reply.events)
        except CodecError as exc:
            raise KvError(f"bad watch reply: {exc}") from None
        self._batch.extend(events)
        # never back (a lagging member): no event twice
        self._request = replace(req, from_index=max(req.from_index, reply.next_index))

    async def _poll_at(self, req: KvWatch, address: str) -> WatchReply:
        return await self._rpc.call(address, req, timeout=self._attempt)


def _retry_elsewhere(exc: RpcError) -> bool:
    # A member that is shutting down or was cancelled mid-call: another may serve.
    return isinstance(exc, RemoteError) and exc.code in {"CANCELLED", "SHUTTING_DOWN"}


def _checked(result: Result) -> Result:
    if isinstance(result, ErrorResult):
        if result.code is ErrorCode.SESSION_EXPIRED:
            raise SessionExpired(result.message or "session expired; command not executed")
        raise KvError(f"{result.code.name}: {result.message}")
    return result


def _expect(result: Result, kind: type[T]) -> T:
    if not isinstance(result, kind):
        raise KvError(f"expected {kind.__name__}, got {type(result).__name__}")
    return result
