"""The RPC client: connection pools, multiplexed calls, deadlines, retries,
at-most-once sessions, one-way notifications.

Reading is done by the callers themselves (leader/follower): a caller
waiting for its reply becomes the connection's reader if nobody else is
reading, delivers every reply it reads to its waiter, and hands the reader
role to another waiter when its own reply has arrived.  With one call in
flight per connection this costs no task switch at all, which is what makes
the per-call overhead close to a raw echo; with many it still multiplexes.

Invariants:
- Retries happen here and nowhere else, and only as the call's `Semantics`
  allow: MAYBE never; AT_LEAST_ONCE on transient errors (`is_transient`),
  with exponential backoff and full jitter; AT_MOST_ONCE retransmits under
  the same (client id, seq), so the server's reply cache runs it once.
- A call never outlives its deadline: every wait is bounded by it; the
  budget sent to the server is the time left for the attempt.
- A client-side session id is never reused: when a server forgets a
  session, fresh calls move to a new id, and a call that may already have
  been delivered under the old one fails with `ReplyExpired`.
- When a connection fails, every call waiting on it is woken with the error
  and the connection leaves its pool; the next call opens a new one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

import msgpack
import trio

from coord.clock.lamport import LamportClock
from coord.rpc.auth import ClientHandshake, PeerInfo
from coord.rpc.config import ClientConfig
from coord.rpc.messages import OpenSession
from coord.rpc.transport import Connector, FrameStream, receive_within
from coord.wire.errors import (
    AuthenticationError,
    ConnectionLost,
    ErrorCode,
    MalformedFrame,
    ProtocolError,
    RemoteError,
    ReplyExpired,
    RpcError,
    Timeout,
    Unavailable,
    error_from_reply,
    is_transient,
)
from coord.wire.frame import NO_BUDGET, Frame, FrameKind
from coord.wire.schema import (
    Converter,
    FieldTypeError,
    NotificationSpec,
    Request,
    RequestSpec,
    Semantics,
    codec,
    spec_of,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
_pack = msgpack.Packer().pack


def _unpack(body: bytes | memoryview, what: str) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"{what} from server is not valid msgpack ({exc!r})") from None


def _error_of(frame: Frame) -> RpcError:
    value = _unpack(frame.body, "ERROR")
    if type(value) is not list or len(value) != 2 or not all(type(v) is str for v in value):
        return ProtocolError("malformed ERROR frame from server")
    return error_from_reply(value[0], value[1])


class _Waiter:
    __slots__ = ("deadline", "error", "event", "frame")

    def __init__(self, deadline: float) -> None:
        self.frame: Frame | None = None  # the RESPONSE/ERROR for this call
        self.error: RpcError | None = None  # the connection died first, or the watchdog fired
        self.event: trio.Event | None = None  # set while parked (not reading)
        self.deadline = deadline  # for the watchdog; inf when a cancel scope enforces it


class _Connection:
    """One authenticated client connection, multiplexed by request id."""

    def __init__(self, fs: FrameStream, peer: PeerInfo, on_dead: Callable[[_Connection], None]):
        self.fs = fs
        self.peer = peer
        self.error: RpcError | None = None  # set once; the connection is then unusable
        self._on_dead = on_dead
        self._waiters: dict[int, _Waiter] = {}
        self._next_id = 1  # request id 0 means "no call"
        self._reading = False  # some waiter is inside receive()
        self.watched = False  # a watchdog enforces deadlines of unscoped calls

    async def exchange(self, body: bytes, budget_us: int, deadline: float, *,
                       cancel_on_timeout: bool, precise: bool) -> Frame:
        """Send one REQUEST and wait for its RESPONSE/ERROR frame until `deadline`.

        On a watched connection (`watched`, the client's watchdog runs) and
        unless `precise`, no cancel scope is used: the server answers TIMEOUT
        when the budget we sent runs out, and the watchdog fails the call
        `reply_grace` later if it does not (closing the connection if this
        call was reading it: the peer is unresponsive).  A cancel scope per
        call is the largest fixed cost of a call, so it is kept for the
        cases that need a client-side timer: retransmissions and unwatched
        clients.
        """
        if self.error is not None:
            raise self.error
        rid = self._next_id
        self._next_id = rid + 1
        scoped = precise or not self.watched
        waiter = _Waiter(math.inf if scoped else deadline)
        self._waiters[rid] = waiter
        fs = self.fs
        try:
            if not scoped:
                fs.queue_frame(FrameKind.REQUEST, rid, budget_us, body)
                await self.flush()
                try:
                    return await self._wait(waiter)
                except ConnectionLost:
                    if trio.current_time() < deadline:
                        raise
                    raise Timeout("no reply by the deadline (connection unresponsive)") from None
            with trio.move_on_at(deadline):
                fs.queue_frame(FrameKind.REQUEST, rid, budget_us, body)
                await self.flush()
                return await self._wait(waiter)
            raise Timeout("deadline passed before the reply arrived")
        except Timeout:
            if cancel_on_timeout:
                await self._send_cancel(rid)
            raise
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._send_cancel(rid)
            raise
        finally:
            del self._waiters[rid]

    def expire_overdue(self, now: float, grace: float) -> RpcError | None:
        """Watchdog: fail calls `grace` past their deadline.

        Returns an error if the overdue call is the one reading: it cannot be
        woken without closing the connection, which the caller then does.
        """
        kill: RpcError | None = None
        for waiter in self._waiters.values():
            if waiter.frame is None and waiter.error is None and now > waiter.deadline + grace:
                if waiter.event is not None:  # parked: wake it with the verdict
                    waiter.error = Timeout("no reply by the deadline")
                    waiter.event.set()
                else:  # reading, or stuck writing to a peer that does not read
                    kill = ConnectionLost(f"node {self.peer.node_id} did not answer within "
                                          f"{grace}s past a call's deadline")
        return kill

    async def flush(self) -> None:
        try:
            await self.fs.flush()
        except BaseException:
            await self._after_failed_flush()
            raise

    async def _after_failed_flush(self) -> None:
        # An interrupted or failed write leaves the byte stream unusable.
        broken = self.fs.broken
        if broken is not None and self.error is None:
            await self._die(broken)

    async def _send_cancel(self, rid: int) -> None:
        """Best effort: tell the server to stop working on `rid`."""
        if self.error is None:
            self.fs.queue_frame(FrameKind.CANCEL, rid, NO_BUDGET, b"")
            with trio.move_on_after(1.0), contextlib.suppress(RpcError):
                await self.flush()

    async def _wait(self, waiter: _Waiter) -> Frame:
        """Wait for `waiter`'s reply, reading the connection ourselves if nobody is."""
        fs = self.fs
        while waiter.frame is None:
            if waiter.error is not None:
                raise waiter.error
            if self._reading:
                event = waiter.event = trio.Event()
                await event.wait()
                waiter.event = None
                continue
            self._reading = True
            try:
                while waiter.frame is None and self.error is None:
                    try:
                        frame = await fs.receive()
                    except RpcError as exc:
                        await self._die(exc)
                        break
                    if frame is None:
                        await self._die(ConnectionLost(
                            f"node {self.peer.node_id} closed the connection"))
                        break
                    problem = self._dispatch(frame)
                    if problem is not None:
                        await self._die(problem)
            finally:
                self._reading = False
                for other in self._waiters.values():  # hand the reader role on
                    if other.event is not None and other.frame is None:
                        other.event.set()
                        break
        return waiter.frame

    def _dispatch(self, frame: Frame) -> RpcError | None:
        """Deliver a reply to its waiter; return an error that must end the connection."""
        if frame.kind is FrameKind.RESPONSE or frame.kind is FrameKind.ERROR:
            waiter = self._waiters.get(frame.request_id)
            if waiter is not None:
                waiter.frame = frame
                if waiter.event is not None:
                    waiter.event.set()
            elif frame.request_id == 0 and frame.kind is FrameKind.ERROR:
                return _error_of(frame)  # the server says why it closes
            # else: the reply to a call we gave up on; drop it.
            return None
        return ProtocolError(f"unexpected {frame.kind.name} frame from server")

    async def _die(self, exc: RpcError) -> None:
        if self.error is not None:
            return
        self.error = exc
        self._on_dead(self)
        for waiter in self._waiters.values():
            if waiter.frame is None:
                waiter.error = exc
                if waiter.event is not None:
                    waiter.event.set()
        await self.fs.aclose()


class _Pool:
    __slots__ = ("conns", "lock", "turn")

    def __init__(self) -> None:
        self.conns: list[_Connection] = []
        self.lock = trio.Lock()  # one connect at a time per address
        self.turn = 0  # round-robin position


class _Session:
    """An at-most-once session with one server."""

    __slots__ = ("client_id", "last_used", "next_seq", "outstanding", "ttl")

    def __init__(self, client_id: int, ttl: float, now: float) -> None:
        self.client_id = client_id
        self.ttl = ttl  # the server forgets us after this long idle
        self.last_used = now
        self.next_seq = 1
        self.outstanding: set[int] = set()  # seqs whose call has not finished

    def allocate(self) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        self.outstanding.add(seq)
        return seq

    def ack(self) -> int:
        """Low-water mark: every seq below it is finished and will never be asked again."""
        return min(self.outstanding) if self.outstanding else self.next_seq


class RpcClient:
    """Calls servers by address.  Use as `async with RpcClient(...) as client:`."""

    def __init__(
        self,
        config: ClientConfig,
        connector: Connector,
        *,
        clock: LamportClock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock if clock is not None else LamportClock()
        self._connector = connector
        self._rng = rng if rng is not None else random.Random()
        self._me = PeerInfo(config.node_id, config.role)
        self._pools: dict[str, _Pool] = {}
        self._sessions: dict[str, _Session] = {}
        self._session_locks: dict[str, trio.Lock] = {}
        self._closed = False
        self._stack = AsyncExitStack()
        self._watchdog_scope: trio.CancelScope | None = None  # set while the watchdog runs

    async def __aenter__(self) -> RpcClient:
        """Start the deadline watchdog (calls made outside `async with` still work,
        with a cancel scope per call instead)."""
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._watchdog_scope = nursery.cancel_scope
        nursery.start_soon(self._watchdog, name=f"rpc-client-{self.config.node_id}-watchdog")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose()
        finally:
            if self._watchdog_scope is not None:
                self._watchdog_scope.cancel()
                self._watchdog_scope = None
            # The body's exception is not handed to the watchdog's nursery: it
            # would come out wrapped in an ExceptionGroup, and callers catch
            # plain exceptions (KvError, RpcError, ...) around `async with`.
            await self._stack.__aexit__(None, None, None)

    async def _watchdog(self) -> None:
        """Fail calls whose reply is `reply_grace` overdue (the server normally
        answers TIMEOUT itself when the budget we sent runs out)."""
        grace = self.config.reply_grace
        tick = min(max(grace / 4, 0.01), 0.25)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for pool in list(self._pools.values()):
                for conn in list(pool.conns):
                    problem = conn.expire_overdue(now, grace)
                    if problem is not None:
                        await conn._die(problem)

    async def aclose(self) -> None:
        """Close every pooled connection; calls still waiting fail with ConnectionLost."""
        self._closed = True
        for pool in list(self._pools.values()):
            for conn in list(pool.conns):
                await conn._die(ConnectionLost("client closed"))
        self._pools.clear()

    # --- public calls --------------------------------------------------------

    async def call(
        self,
        address: str,
        request: Request[R],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> R:
        """Call `request`'s method at `address` and return its typed reply.

        `deadline` (trio clock) or `timeout` (seconds) bound the whole call,
        retries included; by default `config.default_timeout`.  Raises
        `Timeout`, `Unavailable`/`ConnectionLost`, `AuthenticationError`,
        `RemoteError` (with the server's code), `ReplyExpired`,
        `ProtocolError`.
        """
        info = _CALL_INFO.get(type(request))
        if info is None:
            info = _call_info(type(request))
        spec, encode, decode = info
        if deadline is None:
            deadline = trio.current_time() + (
                timeout if timeout is not None else self.config.default_timeout
            )
        fields = encode(request)
        if spec.semantics is Semantics.AT_MOST_ONCE:
            frame = await self._call_at_most_once(address, spec, fields, deadline)
        else:
            frame = await self._call_retrying(address, spec, fields, deadline)
        if frame.kind is FrameKind.ERROR:
            raise _error_of(frame)
        try:
            reply: R = decode(_unpack(frame.body, "RESPONSE"))
        except FieldTypeError as exc:
            raise ProtocolError(f"{spec.method} reply does not match its type: {exc}") from None
        return reply

    async def notify(self, address: str, message: object, *, timeout: float | None = None) -> None:
        """Send a one-way message: no reply, no retry.  Raises if it cannot be sent.

        Not a checkpoint when the frame goes out at once on a pooled
        connection: a loop of notifications must await something else too.
        """
        info = _NOTIFY_INFO.get(type(message))
        if info is None:
            info = _notify_info(type(message))
        method, encode = info
        body = _pack([method, encode(message)])
        # Fast path (Raft's batches): on a pooled connection whose socket takes
        # the frame at once, a notification needs no cancel scope and no await:
        # `bench rpc` notify phase, CPU ms per notification sender/receiver:
        # 0.015/0.012 -> 0.006/0.0065 (0.030/0.022 before direct syscalls).
        conn = self._pooled(address)
        if conn is not None:
            conn.fs.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, body)
            try:
                if conn.fs.flush_nowait():
                    return
            except ConnectionLost as exc:
                await conn._die(exc)
                raise
        deadline = trio.current_time() + (
            timeout if timeout is not None else self.config.default_timeout
        )
        with trio.move_on_at(deadline):
            if conn is None:
                conn = await self._connection(address, deadline)
                conn.fs.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, body)
            await conn.flush()  # the queued frame; the socket was full or not direct
            return
        raise Timeout(f"notify {method} to {address} timed out")

    def _pooled(self, address: str) -> _Connection | None:
        """A live pooled connection to `address` if the pool is full, else None."""
        pool = self._pools.get(address)
        if self._closed or pool is None or len(pool.conns) < self.config.pool_size:
            return None
        pool.turn += 1
        conn = pool.conns[pool.turn % len(pool.conns)]
        return conn if conn.error is None else None

    # --- retry loops ---------------------------------------------------------

    async def _call_retrying(
        self, address: str, spec: RequestSpec, fields: Any, deadline: float
    ) -> Frame:
        body = _pack([spec.method, None, fields])
        retry = spec.semantics is Semantics.AT_LEAST_ONCE
        attempts = self.config.retry.max_attempts if retry else 1
        try:
            first = await self._first_attempt(address, body, deadline, final=attempts == 1)
        except RpcError as exc:
            raise _explain(exc, spec, address, 1) from None
        if isinstance(first, Frame):
            return first
        attempt = 0
        if first is not None:  # the first attempt failed transiently: back off, go on
            attempt = 1
            await self._before_retry(first, spec, address, attempt, attempts=attempts,
                                     deadline=deadline)
        while True:
            attempt += 1
            try:
                return await self._attempt(address, body, deadline, final=attempt >= attempts)
            except RpcError as exc:
                await self._before_retry(exc, spec, address, attempt, attempts=attempts,
                                         deadline=deadline)

    async def _before_retry(
        self, exc: RpcError, spec: RequestSpec, address: str, attempt: int, *, attempts: int,
        deadline: float,
    ) -> None:
        """Re-raise `exc` unless another attempt is allowed and may help; then back off."""
        if attempt >= attempts or not is_transient(exc):
            raise _explain(exc, spec, address, attempt)
        delay = self._rng.uniform(0, self.config.retry.backoff_cap(attempt))
        if trio.current_time() + delay >= deadline:
            raise _explain(exc, spec, address, attempt)
        log.debug("%s to %s: attempt %d failed (%s); retrying", spec.method, address,
                  attempt, exc)
        await trio.sleep(delay)

    async def _first_attempt(
        self, address: str, body: bytes, deadline: float, *, final: bool
    ) -> Frame | RpcError | None:
        """The common case without the retry machinery: a pooled connection and an
        answer.  Returns None when it does not apply (nothing was sent), and a
        transient error (this attempt counts) for the retry loop to handle."""
        pool = self._pools.get(address)
        if pool is None or len(pool.conns) < self.config.pool_size:
            return None
        now = trio.current_time()
        end = deadline if final else min(deadline, now + self.config.attempt_timeout)
        if end <= now:
            return None
        pool.turn += 1
        conn = pool.conns[pool.turn % len(pool.conns)]
        try:
            frame = await conn.exchange(body, int((end - now) * 1_000_000), end,
                                        cancel_on_timeout=end >= deadline, precise=False)
        except RpcError as exc:
            if final or not is_transient(exc):
                raise
            return exc
        if frame.kind is FrameKind.ERROR and not final:
            error = _error_of(frame)
            if is_transient(error):
                return error
            raise error
        return frame

    async def _attempt(
        self, address: str, body: bytes, deadline: float, *, final: bool,
        at_most_once: bool = False, on_sent: Callable[[], None] | None = None,
    ) -> Frame:
        now = trio.current_time()
        if now >= deadline:
            raise Timeout("deadline passed")
        end = deadline if final else min(deadline, now + self.config.attempt_timeout)
        conn = await self._connection(address, end)
        # An at-most-once execution gets the whole remaining budget: a retransmission
        # only re-asks for its result, so cutting it at the attempt timeout would just
        # cache a TIMEOUT.  A retried at-least-once attempt runs anew, so the old one
        # is cut at the attempt's end rather than left running beside it.
        budget_end = deadline if at_most_once else end
        # Connecting may have used the whole budget: the frame cannot carry a
        # negative one, and nothing is sent that the server could not finish.
        budget_us = int((budget_end - trio.current_time()) * 1_000_000)
        if budget_us <= 0:
            raise Timeout("the attempt's time ran out while connecting")
        if on_sent is not None:
            on_sent()
        frame = await conn.exchange(
            body, budget_us, end,
            cancel_on_timeout=end >= deadline,
            # The server does not end an at-most-once attempt early (it has the whole
            # budget), so retransmitting needs a timer of our own.
            precise=budget_end > end,
        )
        if frame.kind == FrameKind.ERROR:
            raise _error_of(frame)
        return frame

    async def _call_at_most_once(
        self, address: str, spec: RequestSpec, fields: Any, deadline: float
    ) -> Frame:
        session = await self._session(address, deadline)
        seq = session.allocate()
        delivered = False  # an earlier attempt may have reached the server
        attempts = self.config.retry.max_attempts
        attempt = 0

        def mark_sent() -> None:
            nonlocal delivered
            delivered = True

        try:
            while True:
                attempt += 1
                body = _pack([spec.method, [session.client_id, seq, session.ack()], fields])
                was_delivered = delivered
                try:
                    return await self._attempt(address, body, deadline,
                                               final=attempt >= attempts, at_most_once=True,
                                               on_sent=mark_sent)
                except RemoteError as exc:
                    if exc.code != ErrorCode.SESSION_UNKNOWN:
                        await self._before_retry(exc, spec, address, attempt,
                                                 attempts=attempts, deadline=deadline)
                        continue
                    if was_delivered:
                        raise ReplyExpired(
                            f"{spec.method} to {address}: the server forgot session "
                            f"{session.client_id:#x} after an earlier attempt was sent; the call "
                            "may have executed and will not be executed again"
                        ) from None
                    # Never delivered under the old id: safe to move to a fresh session.
                    session.outstanding.discard(seq)
                    self._forget_session(address, session)
                    session = await self._session(address, deadline)
                    seq = session.allocate()
                    delivered = False
                except RpcError as exc:
                    await self._before_retry(exc, spec, address, attempt,
                                             attempts=attempts, deadline=deadline)
        finally:
            session.outstanding.discard(seq)
            session.last_used = trio.current_time()

    # --- sessions and connections ------------------------------------------

    def _forget_session(self, address: str, session: _Session) -> None:
        if self._sessions.get(address) is session:
            del self._sessions[address]

    async def _session(self, address: str, deadline: float) -> _Session:
        session = self._sessions.get(address)
        now = trio.current_time()
        # Leave a margin so we do not race the server's expiry.
        if session is not None and now - session.last_used < session.ttl * 0.8:
            session.last_used = now
            return session
        lock = self._session_locks.setdefault(address, trio.Lock())
        async with lock:
            current = self._sessions.get(address)
            if current is not None and current is not session:
                return current  # another task opened one while we waited
            client_id = self._rng.getrandbits(63) | 1
            opened = await self.call(address, OpenSession(client_id), deadline=deadline)
            fresh = _Session(client_id, opened.ttl, trio.current_time())
            self._sessions[address] = fresh
            return fresh

    async def _connection(self, address: str, deadline: float) -> _Connection:
        if self._closed:
            raise Unavailable("client is closed")
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _Pool()
        conns = pool.conns
        if len(conns) >= self.config.pool_size:
            pool.turn += 1
            return conns[pool.turn % len(conns)]
        async with pool.lock:
            if len(conns) >= self.config.pool_size:
                return conns[0]
            conn = await self._connect(address, deadline)
            conns.append(conn)
            return conn

    async def _connect(self, address: str, deadline: float) -> _Connection:
        end = min(deadline, trio.current_time() + self.config.connect_timeout)
        with trio.move_on_at(end):
            try:
                stream = await self._connector.connect(address)
            except OSError as exc:
                raise Unavailable(f"cannot connect to {address}: {exc}") from exc
            fs = FrameStream(stream, self.clock, self.config.node_id, self.config.max_frame_size)
            try:
                peer = await self._handshake(fs, address, end)
            except BaseException:
                await fs.aclose()
                raise
            pools = self._pools
            conn = _Connection(fs, peer, lambda c: _remove(pools, address, c))
            conn.watched = self._watchdog_scope is not None
            return conn
        raise Unavailable(f"connecting to {address} timed out")

    async def _handshake(self, fs: FrameStream, address: str, deadline: float) -> PeerInfo:
        hs = ClientHandshake(self.config.secret, self._me, secrets.token_bytes(32))
        what = f"handshake with {address}"
        fs.queue_frame(FrameKind.HELLO, 0, NO_BUDGET, hs.hello())
        await fs.flush()
        challenge = await receive_within(fs, deadline, what)
        if challenge.kind == FrameKind.ERROR:
            raise _error_of(challenge)
        if challenge.kind != FrameKind.CHALLENGE:
            raise ProtocolError(f"{what}: expected CHALLENGE, got {challenge.kind.name}")
        try:
            proof = hs.on_challenge(challenge.body)
        except AuthenticationError as exc:
            fs.queue_frame(FrameKind.ERROR, 0, NO_BUDGET,
                           _pack([ErrorCode.AUTH_FAILED, "server proof did not verify"]))
            with trio.move_on_after(1.0):
                await fs.flush()
            raise AuthenticationError(f"{address}: {exc}") from None
        except MalformedFrame as exc:
            raise ProtocolError(f"{what}: {exc}") from None
        fs.queue_frame(FrameKind.PROOF, 0, NO_BUDGET, proof)
        await fs.flush()
        welcome = await receive_within(fs, deadline, what)
        if welcome.kind == FrameKind.ERROR:
            error = _error_of(welcome)
            if isinstance(error, AuthenticationError):
                raise AuthenticationError(f"{address} refused us: {error}")
            raise error
        if welcome.kind != FrameKind.WELCOME:
            raise ProtocolError(f"{what}: expected WELCOME, got {welcome.kind.name}")
        assert hs.server is not None
        return hs.server


_CALL_INFO: dict[type, tuple[RequestSpec, Converter, Converter]] = {}


def _call_info(request_type: type) -> tuple[RequestSpec, Converter, Converter]:
    """Spec and codecs of a request type, looked up once (the call path is hot)."""
    spec = spec_of(request_type)
    if not isinstance(spec, RequestSpec):
        raise TypeError(f"{request_type.__qualname__} is a notification; use notify()")
    info = (spec, codec(spec.request_type).encode, codec(spec.reply_type).decode)
    _CALL_INFO[request_type] = info
    return info


_NOTIFY_INFO: dict[type, tuple[str, Converter]] = {}


def _notify_info(message_type: type) -> tuple[str, Converter]:
    """Method name and encoder of a notification type, looked up once."""
    spec = spec_of(message_type)
    if not isinstance(spec, NotificationSpec):
        raise TypeError(f"{message_type.__qualname__} is not a notification")
    info = (spec.method, codec(spec.notification_type).encode)
    _NOTIFY_INFO[message_type] = info
    return info


def _remove(pools: dict[str, _Pool], address: str, conn: _Connection) -> None:
    pool = pools.get(address)
    if pool is not None and conn in pool.conns:
        pool.conns.remove(conn)


def _explain(exc: RpcError, spec: RequestSpec, address: str, attempts: int) -> RpcError:
    """Name the call in a Timeout (the attempt only knew its deadline passed)."""
    if isinstance(exc, Timeout) and not exc.message.startswith(spec.method):
        return Timeout(f"{spec.method} to {address} timed out ({attempts} attempt(s)): "
                       f"{exc.message}")
    return exc
