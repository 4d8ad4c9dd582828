"""The RPC server: authenticates connections and dispatches their calls.

One task per connection reads frames and dispatches them; `def` handlers run
inline in that task, `async def` handlers in their own task in the
connection's handler nursery, so many calls per connection run concurrently
and their replies may leave out of order (matched by request id).

Invariants:
- No request is decoded or served before the peer proved the cluster secret
  (`coord.rpc.auth`), and the handshake has a deadline.
- A peer's bad input never crashes the server: a body that does not decode,
  an unknown method or a field of the wrong type gets an error reply on the
  same connection; broken framing (bad version, oversized or truncated
  frame, unknown kind) gets an ERROR frame with request id 0 and the
  connection is closed.  Other connections are unaffected.
- A handler's deadline is derived from the caller's *remaining budget* on our
  own clock at arrival, so clock skew between hosts does not matter; when it
  passes, the handler is cancelled and the reply is TIMEOUT.
- At-most-once calls go through the `ReplyCache`: executed at most once per
  (client id, seq); a concurrent retry waits for the first execution's reply.
- Shutdown stops accepting and reading, lets running handlers finish for up
  to `drain_timeout`, then closes every connection.
- Deferred calls (`Router.add_deferred`) have no task: the handler starts
  the work and the work calls `_Deferred.reply` later.  Each is answered
  exactly once (the first of: its reply, TIMEOUT from the connection's
  deadline sweeper, CANCELLED on a CANCEL frame); what comes after is
  dropped.  When the connection ends they get the same drain time as async
  handlers, then are dropped (their stop hook called), never leaked.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import trio

from coord.clock.lamport import LamportClock
from coord.rpc.auth import PeerInfo, ServerHandshake
from coord.rpc.config import ServerConfig
from coord.rpc.messages import OpenSession, SessionOpened
from coord.rpc.replycache import ClientId, Execute, Refuse, Replay, ReplyCache, Seq, Wait
from coord.rpc.router import CallContext, Route, Router
from coord.rpc.transport import FrameStream, receive_within
from coord.wire.errors import (
    AuthenticationError,
    ConnectionLost,
    ErrorCode,
    MalformedFrame,
    ProtocolError,
    RemoteError,
    RpcError,
)
from coord.wire.frame import NO_BUDGET, Frame, FrameKind
from coord.wire.schema import FieldTypeError, Semantics

log = logging.getLogger(__name__)

Reply = tuple[FrameKind, bytes]  # what a call produced, as it is sent (and cached)
AmoKey = tuple[ClientId, Seq]
_pack = msgpack.Packer().pack


def unpack_body(body: bytes | memoryview, what: str) -> Any:
    """msgpack-decode a frame body; garbage raises MalformedFrame."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedFrame(f"{what} body is not valid msgpack ({type(exc).__name__})") from None


def error_reply(code: str, message: str) -> Reply:
    return FrameKind.ERROR, _pack([code, message])


# Built once: packing it per call was 2 % of the server's CPU in `bench rpc`.
_CANCELLED = error_reply(ErrorCode.CANCELLED, "cancelled by the caller")
_TICKETS = itertools.count()  # tie-breaker in the deadline heaps


def _parse_request(body: bytes | memoryview) -> tuple[str, list[Any] | None, Any]:
    value = unpack_body(body, "REQUEST")
    if type(value) is not list or len(value) != 3 or type(value[0]) is not str:
        raise MalformedFrame("REQUEST body must be [method, session, fields]")
    session = value[1]
    if session is not None and (
        type(session) is not list
        or len(session) != 3
        or any(type(x) is not int or x < 0 for x in session)
    ):
        raise MalformedFrame("REQUEST session must be nil or [client id, seq, ack]")
    return value[0], session, value[2]


class _Deferred:
    """One deferred call waiting for its reply; `reply` is handed to the handler."""

    __slots__ = ("conn", "done", "request_id", "route", "server", "stop")

    def __init__(self, server: RpcServer, conn: _Conn, route: Route, request_id: int) -> None:
        self.server = server
        self.conn = conn
        self.route = route
        self.request_id = request_id
        self.done = False  # answered (or dropped): later replies are ignored
        self.stop: Callable[[], None] | None = None  # the handler's "nobody waits" hook

    def reply(self, outcome: Any) -> None:
        """The handler's answer: the reply dataclass or a RemoteError."""
        if self.done:
            return  # timed out, cancelled or the connection ended first
        if isinstance(outcome, RemoteError):
            answer = error_reply(outcome.code, outcome.message)
        else:
            answer = self.server._encode_reply(self.route, outcome)
        self.stop = None  # the work is done: nothing to stop
        self.server._answer(self, answer, flush=True)


class _Conn:
    """One authenticated connection."""

    __slots__ = (
        "closed", "deadlines", "deferred", "flushing", "fs", "handlers", "idle", "inflight",
        "peer", "read_scope", "starting", "sweep_wake", "sweeping",
    )

    def __init__(self, fs: FrameStream, peer: PeerInfo, handlers: trio.Nursery) -> None:
        self.fs = fs
        self.peer = peer
        self.handlers = handlers  # runs this connection's async handlers
        self.inflight: dict[int, trio.CancelScope] = {}  # async calls by request id
        self.read_scope = trio.CancelScope()  # cancelled to stop reading (shutdown)
        self.deferred: dict[int, _Deferred] = {}  # deferred calls by request id
        # (deadline, ticket, call) of deferred calls with a budget; answered ones
        # are popped lazily by the sweeper task (running while `sweeping`).
        self.deadlines: list[tuple[float, int, _Deferred]] = []
        self.sweeping = False
        self.sweep_wake: trio.Event | None = None  # set: an earlier deadline arrived
        self.starting: _Deferred | None = None  # being started by the read loop
        self.flushing = False  # a task is flushing replies the socket did not take
        self.idle: trio.Event | None = None  # set when draining and no deferred call is left
        self.closed = False  # the connection ended: nothing more is sent


class RpcServer:
    def __init__(
        self, config: ServerConfig, router: Router, *, clock: LamportClock | None = None
    ) -> None:
        self.config = config
        self.clock = clock if clock is not None else LamportClock()
        self._routes: dict[str, Route] = dict(router.routes)
        own = Router().add(OpenSession, self._open_session)
        self._routes.update(own.routes)
        self._me = PeerInfo(config.node_id, config.role)
        self._cache: ReplyCache[Reply] = ReplyCache(
            config.session_ttl,
            max_sessions=config.max_sessions,
            max_entries_per_session=config.max_entries_per_session,
        )
        self._amo_running: dict[AmoKey, trio.Event] = {}  # set when the execution completes
        self._conns: set[_Conn] = set()
        self._accept_scopes: list[trio.CancelScope] = []
        self._active = 0  # connections being served (handshaking included)
        self._idle = trio.Event()  # set when _active drops to 0 after shutdown began
        self._closing = False

    @property
    def reply_cache(self) -> ReplyCache[Reply]:
        return self._cache

    @property
    def connection_count(self) -> int:
        return self._active

    # --- listening ---------------------------------------------------------

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `listeners` until `shutdown()`; reports readiness via task_status."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                scope = trio.CancelScope()
                self._accept_scopes.append(scope)
                nursery.start_soon(self._accept_loop, listener, scope, nursery)
            task_status.started()

    async def serve_tcp(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (port 0 picks one); started() gets the bound addresses."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = [listener.socket.getsockname()[:2] for listener in listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve, listeners)
            task_status.started(bound)

    async def _accept_loop(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        scope: trio.CancelScope,
        nursery: trio.Nursery,
    ) -> None:
        async with listener:
            with scope:
                if self._closing:
                    scope.cancel()
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                        log.warning("accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self.serve_stream, stream)

    async def shutdown(self) -> None:
        """Stop accepting and reading; wait until every connection has drained."""
        self._closing = True
        for scope in self._accept_scopes:
            scope.cancel()
        for conn in list(self._conns):
            conn.read_scope.cancel()
        if self._active:
            await self._idle.wait()

    # --- one connection ----------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it ends; always closes `stream`."""
        fs = FrameStream(stream, self.clock, self.config.node_id, self.config.max_frame_size)
        self._active += 1
        try:
            peer = await self._handshake_or_refuse(fs)
            if peer is not None:
                await self._serve_authenticated(fs, peer)
        except Exception:  # a bug of ours must not take the whole server down
            log.exception("internal error while serving a connection; closing it")
        finally:
            await fs.aclose()
            self._active -= 1
            if self._closing and not self._active:
                self._idle.set()

    async def _handshake_or_refuse(self, fs: FrameStream) -> PeerInfo | None:
        try:
            return await self._handshake(fs)
        except AuthenticationError as exc:
            log.warning("refused connection: %s", exc)
            await self._send_last_words(fs, ErrorCode.AUTH_FAILED, str(exc))
        except ProtocolError as exc:
            log.warning("bad handshake from peer: %s", exc)
            await self._send_last_words(fs, ErrorCode.PROTOCOL, str(exc))
        except RpcError as exc:  # timeout or connection lost
            log.info("handshake abandoned: %s", exc)
        return None

    async def _handshake(self, fs: FrameStream) -> PeerInfo:
        deadline = trio.current_time() + self.config.handshake_timeout
        hs = ServerHandshake(self.config.secret, self._me, secrets.token_bytes(32))
        hello = await receive_within(fs, deadline, "handshake")
        if hello.kind != FrameKind.HELLO:
            raise MalformedFrame(f"expected HELLO, got {hello.kind.name}")
        fs.queue_frame(FrameKind.CHALLENGE, 0, NO_BUDGET, hs.on_hello(hello.body))
        await fs.flush()
        proof = await receive_within(fs, deadline, "handshake")
        if proof.kind == FrameKind.ERROR:
            raise AuthenticationError(
                f"client refused our proof (cluster secret mismatch?): {_error_text(proof)}"
            )
        if proof.kind != FrameKind.PROOF:
            raise MalformedFrame(f"expected PROOF, got {proof.kind.name}")
        peer = hs.on_proof(proof.body)
        if hello.sender != peer.node_id or proof.sender != peer.node_id:
            raise MalformedFrame("frame sender does not match the HELLO's node id")
        fs.queue_frame(FrameKind.WELCOME, 0, NO_BUDGET, b"")
        await fs.flush()
        return peer

    async def _send_last_words(self, fs: FrameStream, code: ErrorCode, message: str) -> None:
        """Best effort: tell the peer why we are closing, without waiting long."""
        kind, body = error_reply(code, message)
        with trio.move_on_after(1.0):
            try:
                fs.queue_frame(kind, 0, NO_BUDGET, body)
                await fs.flush()
            except RpcError:
                pass

    async def _serve_authenticated(self, fs: FrameStream, peer: PeerInfo) -> None:
        conn: _Conn | None = None
        try:
            async with trio.open_nursery() as handlers:
                conn = _Conn(fs, peer, handlers)
                self._conns.add(conn)
                try:
                    with conn.read_scope:
                        if self._closing:
                            conn.read_scope.cancel()
                        await self._read_loop(conn)
                except ProtocolError as exc:
                    log.warning("protocol error from node %d: %s; closing", peer.node_id, exc)
                    await self._send_last_words(fs, ErrorCode.PROTOCOL, str(exc))
                except ConnectionLost as exc:
                    log.debug("connection to node %d lost: %s", peer.node_id, exc)
                finally:
                    self._conns.discard(conn)
                    drain = trio.current_time() + self.config.drain_timeout
                    handlers.cancel_scope.deadline = min(handlers.cancel_scope.deadline, drain)
                    conn.idle = trio.Event()  # marks the drain
                    if conn.deferred:
                        handlers.start_soon(self._drain_deferred, conn)
                    elif conn.sweep_wake is not None:
                        conn.sweep_wake.set()  # nothing to sweep for any more
        finally:
            if conn is not None:
                self._drop_deferred(conn)

    async def _read_loop(self, conn: _Conn) -> None:
        fs = conn.fs
        peer_id = conn.peer.node_id
        while True:
            frame = fs.poll()
            if frame is None:
                # Nothing more buffered: send the replies of inline handlers in one write.
                await fs.flush()
                frame = await fs.receive_more()
                if frame is None:
                    return
            if frame.sender != peer_id:
                raise MalformedFrame(f"frame from node {frame.sender} on node {peer_id}'s link")
            kind = frame.kind
            if kind == FrameKind.REQUEST:
                self._on_request(conn, frame)
            elif kind == FrameKind.NOTIFY:
                self._on_notify(conn, frame)
            elif kind == FrameKind.CANCEL:
                scope = conn.inflight.get(frame.request_id)
                if scope is not None:
                    scope.cancel()
                elif (call := conn.deferred.get(frame.request_id)) is not None:
                    self._answer(call, _CANCELLED, flush=False)  # the loop flushes
            else:
                raise MalformedFrame(f"unexpected {kind.name} frame from a client")

    # --- requests ----------------------------------------------------------

    def _on_request(self, conn: _Conn, frame: Frame) -> None:
        """Decode and start one call.  Sync: no checkpoint between decode and start."""
        rid = frame.request_id
        try:
            method, session, raw = _parse_request(frame.body)
            route = self._routes.get(method)
            if route is None or route.semantics is None:
                raise RemoteError(ErrorCode.UNKNOWN_METHOD, f"no method {method!r}")
            try:
                req = route.decode(raw)
            except FieldTypeError as exc:
                raise RemoteError(ErrorCode.BAD_REQUEST, f"{method}: {exc}") from None
            if rid in conn.inflight or rid in conn.deferred:
                raise RemoteError(ErrorCode.BAD_REQUEST, f"request id {rid} already in flight")
            if len(conn.inflight) + len(conn.deferred) >= self.config.max_inflight:
                raise RemoteError(ErrorCode.OVERLOADED, "too many calls in flight")
        except MalformedFrame as exc:
            self._queue(conn, rid, error_reply(ErrorCode.BAD_REQUEST, str(exc)))
            return
        except RemoteError as exc:
            self._queue(conn, rid, error_reply(exc.code, exc.message))
            return
        ctx = self._context(conn, frame, method)
        if route.start is not None:
            self._start_deferred(conn, route, req, ctx, frame.budget_us)
        elif route.semantics is Semantics.AT_MOST_ONCE:
            self._start_at_most_once(conn, route, req, ctx, session)
        elif route.is_async:
            conn.handlers.start_soon(self._run_async, conn, route, req, ctx, None)
        else:
            self._queue(conn, rid, self._run_inline(route, req, ctx, frame.budget_us))

    def _context(self, conn: _Conn, frame: Frame, method: str) -> CallContext:
        budget_us = frame.budget_us
        if budget_us == NO_BUDGET:
            budget, deadline = None, math.inf
        else:
            budget = budget_us / 1_000_000
            deadline = trio.current_time() + budget
        return CallContext(
            conn.peer, method, frame.request_id, self.clock.time, budget, deadline
        )

    def _queue(self, conn: _Conn, rid: int, reply: Reply) -> None:
        conn.fs.queue_frame(reply[0], rid, NO_BUDGET, reply[1])

    def _start_at_most_once(
        self, conn: _Conn, route: Route, req: Any, ctx: CallContext, session: list[Any] | None
    ) -> None:
        rid = ctx.request_id
        if session is None:
            self._queue(conn, rid, error_reply(ErrorCode.BAD_REQUEST, "at-most-once call "
                                               "without a session"))
            return
        key = (ClientId(session[0]), Seq(session[1]))
        decision = self._cache.begin(key[0], key[1], session[2], trio.current_time())
        if isinstance(decision, Execute):
            if route.is_async:
                self._amo_running[key] = trio.Event()
                conn.handlers.start_soon(self._run_async, conn, route, req, ctx, key)
            else:
                budget_us = NO_BUDGET if ctx.budget is None else int(ctx.budget * 1e6)
                reply = self._run_inline(route, req, ctx, budget_us)
                self._cache.complete(key[0], key[1], reply, trio.current_time())
                self._queue(conn, rid, reply)
        elif isinstance(decision, Wait):
            conn.handlers.start_soon(self._await_first_execution, conn, key, ctx)
        else:
            self._queue(conn, rid, _decided(decision))

    async def _await_first_execution(self, conn: _Conn, key: AmoKey, ctx: CallContext) -> None:
        event = self._amo_running.get(key)
        if event is not None:
            with trio.move_on_at(ctx.deadline):
                await event.wait()
        decision = self._cache.lookup(*key)
        if isinstance(decision, Wait):
            reply = error_reply(ErrorCode.TIMEOUT, "first execution still running")
        else:
            reply = _decided(decision)
        await self._send(conn, ctx.request_id, reply)

    def _run_inline(self, route: Route, req: Any, ctx: CallContext, budget_us: int) -> Reply:
        if budget_us == 0:
            return error_reply(ErrorCode.TIMEOUT, "the caller's budget was spent on arrival")
        try:
            result = route.fn(req, ctx)
        except RemoteError as exc:
            return error_reply(exc.code, exc.message)
        except Exception as exc:
            log.exception("handler of %s failed", route.method)
            return error_reply(ErrorCode.INTERNAL, f"{route.method} failed: {type(exc).__name__}")
        return self._encode_reply(route, result)

    async def _run_async(
        self, conn: _Conn, route: Route, req: Any, ctx: CallContext, key: AmoKey | None
    ) -> None:
        rid = ctx.request_id
        reply: Reply = _CANCELLED  # unless the handler finishes
        try:
            with trio.CancelScope(deadline=ctx.deadline) as scope:
                conn.inflight[rid] = scope
                try:
                    reply = self._encode_reply(route, await route.fn(req, ctx))
                except RemoteError as exc:
                    reply = error_reply(exc.code, exc.message)
                except Exception as exc:
                    log.exception("handler of %s failed", route.method)
                    reply = error_reply(
                        ErrorCode.INTERNAL, f"{route.method} failed: {type(exc).__name__}"
                    )
                finally:
                    del conn.inflight[rid]
            if scope.cancelled_caught and trio.current_time() >= ctx.deadline:
                reply = error_reply(ErrorCode.TIMEOUT, f"{route.method} exceeded the budget")
            if key is not None:
                self._cache.complete(key[0], key[1], reply, trio.current_time())
        finally:
            # Also on shutdown's cancellation, so retries waiting for us wake up.
            event = self._amo_running.pop(key, None) if key is not None else None
            if event is not None:
                event.set()
        await self._send(conn, rid, reply)

    def _encode_reply(self, route: Route, result: Any) -> Reply:
        if route.reply_type is None and result is None:
            return FrameKind.RESPONSE, _pack(None)
        if type(result) is not route.reply_type:
            log.error("handler of %s returned %s", route.method, type(result).__name__)
            return error_reply(ErrorCode.INTERNAL, f"{route.method} returned the wrong type")
        assert route.encode_reply is not None
        try:
            return FrameKind.RESPONSE, _pack(route.encode_reply(result))
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("reply of %s does not marshal: %s", route.method, exc)
            return error_reply(ErrorCode.INTERNAL, f"{route.method} reply does not marshal")

    async def _send(self, conn: _Conn, rid: int, reply: Reply) -> None:
        try:
            self._queue(conn, rid, reply)
            await conn.fs.flush()
        except ConnectionLost:
            pass  # the caller is gone; an at-most-once reply stays cached for its retry

    # --- deferred calls ------------------------------------------------------
    # Why: an async handler costs a task, a cancel scope and an awaited send per
    # call; serving kv.submit this way cut the leader's CPU per write by 13 %
    # (KvService.submit_deferred has the figures).

    def _start_deferred(
        self, conn: _Conn, route: Route, req: Any, ctx: CallContext, budget_us: int
    ) -> None:
        rid = ctx.request_id
        if budget_us == 0:
            self._queue(conn, rid, error_reply(ErrorCode.TIMEOUT, "the caller's budget was "
                                               "spent on arrival"))
            return
        call = _Deferred(self, conn, route, rid)
        conn.deferred[rid] = call
        if ctx.deadline != math.inf:
            self._arm(conn, call, ctx.deadline)
        assert route.start is not None
        conn.starting = call  # a reply given while starting waits for the loop's flush
        try:
            stop = route.start(req, ctx, call.reply)
        except RemoteError as exc:
            stop = None
            call.reply(exc)
        except Exception as exc:
            stop = None
            log.exception("handler of %s failed", route.method)
            call.reply(RemoteError(
                ErrorCode.INTERNAL, f"{route.method} failed: {type(exc).__name__}"))
        finally:
            conn.starting = None
        if call.done:
            return
        call.stop = stop

    def _answer(self, call: _Deferred, reply: Reply, *, flush: bool) -> None:
        """Send `call`'s one reply (unless already answered); stop the work if
        the reply is not the work's own (timeout, cancel)."""
        if call.done:
            return
        call.done = True
        conn = call.conn
        del conn.deferred[call.request_id]
        if call.stop is not None:
            stop, call.stop = call.stop, None
            stop()
        if conn.idle is not None and not conn.deferred:
            conn.idle.set()  # draining and nothing is left: let the connection close
            if conn.sweep_wake is not None:
                conn.sweep_wake.set()  # its heap holds only answered calls now
        if conn.closed:
            return
        self._queue(conn, call.request_id, reply)
        if flush and conn.starting is not call:
            self._flush_soon(conn)

    def _flush_soon(self, conn: _Conn) -> None:
        """Send queued replies now if the socket takes them, else in a task."""
        try:
            if conn.fs.flush_nowait():
                return
        except ConnectionLost:
            return  # the read loop notices and ends the connection
        if not conn.flushing:
            conn.flushing = True
            conn.handlers.start_soon(self._flush_task, conn)

    async def _flush_task(self, conn: _Conn) -> None:
        try:
            await conn.fs.flush()
        except ConnectionLost:
            pass
        finally:
            conn.flushing = False

    def _arm(self, conn: _Conn, call: _Deferred, deadline: float) -> None:
        heap = conn.deadlines
        earliest = heap[0][0] if heap else math.inf
        heapq.heappush(heap, (deadline, next(_TICKETS), call))
        if not conn.sweeping:
            conn.sweeping = True
            conn.handlers.start_soon(self._sweep, conn)
        elif deadline < earliest and conn.sweep_wake is not None:
            conn.sweep_wake.set()  # the sweeper sleeps until a later deadline

    async def _sweep(self, conn: _Conn) -> None:
        """Answer TIMEOUT to deferred calls whose deadline passed; one task per
        connection while it has deadlines armed (not a cancel scope per call)."""
        heap = conn.deadlines
        try:
            while heap:  # each turn pops an entry or sleeps until the earliest deadline
                if conn.idle is not None and not conn.deferred:
                    break  # draining with nothing left: the connection may close now
                deadline, _, call = heap[0]
                if call.done:
                    heapq.heappop(heap)
                elif trio.current_time() >= deadline:
                    heapq.heappop(heap)
                    self._answer(call, error_reply(
                        ErrorCode.TIMEOUT, f"{call.route.method} exceeded the budget"),
                        flush=True)
                else:
                    conn.sweep_wake = trio.Event()
                    with trio.move_on_at(deadline):
                        await conn.sweep_wake.wait()
        finally:
            conn.sweeping = False
            conn.sweep_wake = None

    async def _drain_deferred(self, conn: _Conn) -> None:
        """The connection stopped reading: wait for its deferred calls (bounded
        by the handlers' drain deadline)."""
        if conn.deferred and conn.idle is not None:
            await conn.idle.wait()

    def _drop_deferred(self, conn: _Conn) -> None:
        """The connection is gone: forget its unanswered deferred calls."""
        conn.closed = True
        for call in list(conn.deferred.values()):
            self._answer(call, _CANCELLED, flush=False)  # not sent: closed
        conn.deadlines.clear()

    def _open_session(self, req: OpenSession, ctx: CallContext) -> SessionOpened:
        self._cache.open_session(ClientId(req.client_id), trio.current_time())
        return SessionOpened(self._cache.ttl)

    # --- notifications -----------------------------------------------------

    def _on_notify(self, conn: _Conn, frame: Frame) -> None:
        try:
            value = unpack_body(frame.body, "NOTIFY")
            if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
                raise MalformedFrame("NOTIFY body must be [method, fields]")
            route = self._routes.get(value[0])
            if route is None or route.semantics is not None:
                raise MalformedFrame(f"no notification {value[0]!r}")
            message = route.decode(value[1])
        except (MalformedFrame, FieldTypeError) as exc:
            # Nobody waits for an answer; a bad notification is logged and dropped.
            log.warning("dropped notification from node %d: %s", conn.peer.node_id, exc)
            return
        ctx = CallContext(conn.peer, route.method, 0, self.clock.time, None, math.inf)
        if route.is_async:
            conn.handlers.start_soon(self._run_notification, route, message, ctx)
        else:
            try:
                route.fn(message, ctx)
            except Exception:
                log.exception("notification handler of %s failed", route.method)

    async def _run_notification(self, route: Route, message: Any, ctx: CallContext) -> None:
        try:
            await route.fn(message, ctx)
        except Exception:
            log.exception("notification handler of %s failed", route.method)


def _decided(decision: Replay[Reply] | Refuse | Execute | Wait) -> Reply:
    if isinstance(decision, Replay):
        return decision.reply
    if isinstance(decision, Refuse):
        return error_reply(decision.code, decision.message)
    raise AssertionError(f"not a final decision: {decision!r}")


def _error_text(frame: Frame) -> str:
    try:
        value = unpack_body(frame.body, "ERROR")
        return f"{value[0]}: {value[1]}"
    except (MalformedFrame, IndexError, TypeError, KeyError):
        return "(unreadable error)"
