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

import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, TypeVar

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
    encode_query,
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
_Attempt = Callable[[str], Awaitable[KvReply]]


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
        super().__init__(f"COMPACTED: the events up to index {floor} are gone")
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

    async def call(self, attempt: Callable[[str], Awaitable[RT]]) -> RT:
        backoff = 0.02
        last = "no attempt finished"
        with trio.move_on_after(self.timeout):
            while True:
                addr = self._next_address()
                try:
                    reply = await attempt(addr)
                except RpcError as exc:
                    if not is_transient(exc) and not _retry_elsewhere(exc):
                        raise KvError(f"{addr}: {exc}") from exc
                    last = f"{addr}: {exc}"
                    self.leader = None
                else:
                    if reply.status == OK:
                        self.leader = addr
                        return reply
                    last = f"{addr}: {reply.status}"
                    self.leader = reply.leader or None
                    if reply.leader and reply.leader != addr:
                        self.retries += 1
                        continue  # a fresh redirect: go there at once
                self.retries += 1
                await trio.sleep(self._rng.uniform(0, backoff))
                backoff = min(backoff * 2, 0.5)
        raise KvTimeout(f"no member answered within {self.timeout:g} s (last: {last})")


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

    async def watch(
        self, prefix: bytes, from_index: int = 1, *, wait_s: float = 5.0, max_events: int = 256
    ) -> AsyncIterator[WatchEvent]:
        """Every change of a key under `prefix` from log index `from_index` on, in
        order, once each: `async for ev in kv.watch(b"app/", 1)`.  Runs until the
        caller stops; follows failures to other members (any member serves).
        Raises EventsCompacted, or KvTimeout when no member answers.  To resume
        later, watch from the last event's index and skip the (index, sub) pairs
        already seen (an entry's events come together, but a caller that stops
        in the middle of an entry has not seen the rest of it)."""
        if from_index < 1:
            raise ValueError("from_index must be >= 1")
        # its own router: a long poll needs a longer budget than other calls
        router = LeaderRouter(self._router.endpoints, timeout=self._router.timeout + wait_s)
        index = from_index
        while True:  # one long poll per round; the caller decides when to stop
            req = KvWatch(prefix, index, max_events, wait_s)
            reply = await router.call(functools.partial(self._watch_once, req))
            if reply.compacted:
                raise EventsCompacted(reply.compacted)
            try:
                events = decode_events(reply.events)
            except CodecError as exc:
                raise KvError(f"bad watch reply: {exc}") from None
            for ev in events:
                yield ev
            index = max(index, reply.next_index)  # never back: no event twice

    async def _watch_once(self, req: KvWatch, address: str) -> WatchReply:
        return await self._rpc.call(address, req, timeout=req.wait_s + self._attempt)

    # ------------------------------------------------------------------ machinery
    async def _command(self, command: Command) -> Result:
        if self._session is None:
            raise KvError("the client has no session: use `async with KvClient(...)`")
        req = self._session.request(command)  # built once: retries resend this value
        result = await self._submit(req)
        self._session.completed(req.seq)
        return result

    async def _submit(self, body: Body) -> Result:
        raw = encode_body(body)
        reply = await self._retrying(
            lambda addr: self._rpc.call(addr, KvSubmit(raw), timeout=self._attempt)
        )
        return _checked(decode_result(reply.result))

    async def _query(self, query: Query) -> Result:
        raw = encode_query(query)
        reply = await self._retrying(
            lambda addr: self._rpc.call(addr, KvRead(raw), timeout=self._attempt)
        )
        return _checked(decode_result(reply.result))

    async def _retrying(self, attempt: _Attempt) -> KvReply:
        return await self._router.call(attempt)


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
