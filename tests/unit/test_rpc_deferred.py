"""Deferred routes (`Router.add_deferred`): a handler starts work and returns;
the work answers later through `reply`.  Checked over memory streams and
TCP: the answer arrives, exactly once; the caller's budget gives TIMEOUT and
CANCEL gives CANCELLED (both stop the work, a late reply is dropped);
handler errors become replies; shutdown drains or drops pending calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import trio

from coord.rpc import (
    CallContext,
    ErrorCode,
    MemoryNetwork,
    RemoteError,
    Request,
    Router,
    RpcClient,
    RpcServer,
    Semantics,
    TcpConnector,
    request,
)
from coord.rpc.router import ReplyFn
from coord.wire.frame import FrameKind
from tests.unit.test_rpc_common import (
    ADDR,
    BumpAtMostOnce,
    CountReply,
    Echo,
    RawPeer,
    client_config,
    error_of,
    request_body,
    server_config,
)


@request("test.later", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Later(Request[CountReply]):
    key: str
    mode: str = ""  # "now": answer while starting; "raise"/"crash"/"wrong": fail


@dataclass
class LaterService:
    """Keeps each call's `reply` until the test answers it; records stops."""

    pending: dict[str, ReplyFn] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    started: trio.Event = field(default_factory=trio.Event)

    def start(self, req: Later, ctx: CallContext, reply: ReplyFn) -> Callable[[], None] | None:
        if req.mode == "now":
            reply(CountReply(0))
            return None
        if req.mode == "raise":
            raise RemoteError("ENOENT", "nothing at " + req.key)
        if req.mode == "crash":
            raise RuntimeError("handler bug")
        if req.mode == "wrong":
            reply("not a CountReply")
            return None
        self.pending[req.key] = reply
        self.started.set()
        return lambda: self.stopped.append(req.key)

    async def wait_started(self, key: str) -> ReplyFn:
        with trio.fail_after(5):
            while key not in self.pending:
                self.started = trio.Event()
                await self.started.wait()
        return self.pending[key]


@dataclass
class Setup:
    net: MemoryNetwork
    server: RpcServer
    service: LaterService


@asynccontextmanager
async def later_server(**overrides: Any) -> AsyncIterator[Setup]:
    net = MemoryNetwork()
    service = LaterService()
    router = Router().add_deferred(Later, service.start)
    server = RpcServer(server_config(**overrides), router)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [net.listen(ADDR)])
        try:
            yield Setup(net, server, service)
        finally:
            with trio.move_on_after(5):
                await server.shutdown()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(setup: Setup) -> AsyncIterator[RawPeer]:
    stream = await setup.net.connect(ADDR)
    peer = RawPeer(stream)
    try:
        await peer.authenticate()
        yield peer
    finally:
        await trio.aclose_forcefully(stream)


def later_body(key: str, mode: str = "") -> bytes:
    return request_body("test.later", [key, mode])


async def test_the_work_answers_later_and_only_its_first_reply_is_sent() -> None:
    async with later_server() as setup, RpcClient(client_config(), setup.net) as client:
        async with trio.open_nursery() as nursery:
            got: list[CountReply] = []

            async def call() -> None:
                got.append(await client.call(ADDR, Later("a")))

            nursery.start_soon(call)
            reply = await setup.service.wait_started("a")
            assert got == []  # nothing until the work answers
            reply(CountReply(7))
            reply(CountReply(8))  # a second answer is dropped
        assert got == [CountReply(7)]
        assert setup.service.stopped == []  # answered by the work itself: nothing to stop


async def test_answers_given_while_starting_and_handler_errors() -> None:
    async with later_server() as setup, RpcClient(client_config(), setup.net) as client:
        assert await client.call(ADDR, Later("x", "now")) == CountReply(0)
        with pytest.raises(RemoteError) as info:
            await client.call(ADDR, Later("y", "raise"))
        assert (info.value.code, info.value.message) == ("ENOENT", "nothing at y")
        with pytest.raises(RemoteError) as info:
            await client.call(ADDR, Later("z", "crash"), timeout=1.0)
        assert info.value.code == ErrorCode.INTERNAL
        with pytest.raises(RemoteError) as info:
            await client.call(ADDR, Later("w", "wrong"), timeout=1.0)
        assert info.value.code == ErrorCode.INTERNAL


async def test_budget_expiry_answers_timeout_stops_the_work_and_drops_the_late_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with later_server() as setup, raw(setup) as peer:
        await peer.send(peer.frame(FrameKind.REQUEST, 5, later_body("slow"), budget_us=3_000_000))
        await peer.send(peer.frame(FrameKind.REQUEST, 6, later_body("slower"),
                                   budget_us=9_000_000))
        reply_slow = await setup.service.wait_started("slow")
        await setup.service.wait_started("slower")
        start = trio.current_time()
        frame = await peer.receive()
        assert frame is not None and frame.request_id == 5
        assert error_of(frame)[0] == ErrorCode.TIMEOUT
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.05)
        assert setup.service.stopped == ["slow"]
        reply_slow(CountReply(1))  # too late: dropped
        # A call with an earlier deadline than the one the sweeper sleeps for.
        await peer.send(peer.frame(FrameKind.REQUEST, 7, later_body("quick"), budget_us=500_000))
        frame = await peer.receive()
        assert frame is not None and frame.request_id == 7
        assert error_of(frame)[0] == ErrorCode.TIMEOUT
        assert trio.current_time() - start == pytest.approx(3.5, abs=0.05)
        frame = await peer.receive()
        assert frame is not None and frame.request_id == 6  # never a second reply to 5
        assert error_of(frame)[0] == ErrorCode.TIMEOUT
        assert setup.service.stopped == ["slow", "quick", "slower"]


async def test_a_spent_budget_is_refused_without_starting() -> None:
    async with later_server() as setup, raw(setup) as peer:
        await peer.send(peer.frame(FrameKind.REQUEST, 3, later_body("k"), budget_us=0))
        frame = await peer.receive()
        assert frame is not None and error_of(frame)[0] == ErrorCode.TIMEOUT
        assert "k" not in setup.service.pending


async def test_cancel_frame_answers_cancelled_and_stops_the_work() -> None:
    async with later_server() as setup, raw(setup) as peer:
        await peer.send(peer.frame(FrameKind.REQUEST, 9, later_body("c")))
        reply = await setup.service.wait_started("c")
        await peer.send(peer.frame(FrameKind.CANCEL, 9, b""))
        frame = await peer.receive()
        assert frame is not None and frame.request_id == 9
        assert error_of(frame)[0] == ErrorCode.CANCELLED
        assert setup.service.stopped == ["c"]
        reply(CountReply(1))  # dropped
        # The request id is free again and the link still works.
        await peer.send(peer.frame(FrameKind.REQUEST, 9, later_body("n", "now")))
        frame = await peer.receive()
        assert frame is not None and frame.kind == FrameKind.RESPONSE and frame.request_id == 9
        assert msgpack.unpackb(frame.body) == [0]


async def test_a_duplicate_request_id_in_flight_is_refused() -> None:
    async with later_server(drain_timeout=0.1) as setup, raw(setup) as peer:
        await peer.send(peer.frame(FrameKind.REQUEST, 4, later_body("d")))
        await setup.service.wait_started("d")
        await peer.send(peer.frame(FrameKind.REQUEST, 4, later_body("e")))
        frame = await peer.receive()
        assert frame is not None and error_of(frame)[0] == ErrorCode.BAD_REQUEST
        assert "e" not in setup.service.pending


async def test_shutdown_waits_for_pending_calls_then_drops_the_rest(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with later_server(drain_timeout=2.0) as setup, raw(setup) as peer:
        await peer.send(peer.frame(FrameKind.REQUEST, 1, later_body("done")))
        await peer.send(peer.frame(FrameKind.REQUEST, 2, later_body("never")))
        reply_done = await setup.service.wait_started("done")
        await setup.service.wait_started("never")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(setup.server.shutdown)
            await trio.sleep(0.5)
            reply_done(CountReply(3))  # answered during the drain: still sent
            frame = await peer.receive()
            assert frame is not None and frame.request_id == 1
            assert msgpack.unpackb(frame.body) == [3]
            start = trio.current_time()
        assert trio.current_time() - start == pytest.approx(1.5, abs=0.05)  # drain deadline
        assert setup.server.connection_count == 0
        assert setup.service.stopped == ["never"]  # dropped, its work told
        assert await peer.receive() is None  # closed without a reply to 2
        setup.service.pending["never"](CountReply(0))  # harmless after the close


async def test_a_lost_connection_drops_pending_calls_after_the_drain_time() -> None:
    async with later_server(drain_timeout=0.2) as setup:
        async with raw(setup) as peer:
            await peer.send(peer.frame(FrameKind.REQUEST, 1, later_body("gone")))
            await setup.service.wait_started("gone")
        with trio.fail_after(5):
            while "gone" not in setup.service.stopped:
                await trio.sleep(0.01)
        setup.service.pending["gone"](CountReply(0))  # dropped, no error


def test_only_plain_functions_for_at_least_once_requests() -> None:
    service = LaterService()

    async def coroutine(req: Any, ctx: CallContext, reply: ReplyFn) -> None:
        return None

    with pytest.raises(ValueError, match="at-least-once"):
        Router().add_deferred(BumpAtMostOnce, service.start)
    with pytest.raises(TypeError, match="plain def"):
        Router().add_deferred(Later, coroutine)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already has a handler"):
        Router().add_deferred(Later, service.start).add(Later, lambda r, c: None)


async def test_many_deferred_calls_over_tcp_answered_from_another_task() -> None:
    service = LaterService()
    router = Router().add_deferred(Later, service.start)
    router.add(Echo, lambda req, ctx: None)  # unused; a mixed router
    server = RpcServer(server_config(), router)
    results: dict[str, CountReply] = {}
    async with trio.open_nursery() as nursery:
        ((host, port), *_) = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        address = f"{host}:{port}"
        async with RpcClient(client_config(), TcpConnector()) as client:

            async def call(key: str) -> None:
                results[key] = await client.call(address, Later(key), timeout=10.0)

            with trio.fail_after(20):
                async with trio.open_nursery() as calls:
                    keys = [str(i) for i in range(50)]
                    for key in keys:
                        calls.start_soon(call, key)
                    for i in range(len(keys)):  # answered out of order, from here
                        (await service.wait_started(keys[-1 - i]))(CountReply(i))
        assert results == {keys[-1 - i]: CountReply(i) for i in range(50)}
        await server.shutdown()
        assert server.connection_count == 0
        nursery.cancel_scope.cancel()


async def test_answered_calls_with_distant_deadlines_do_not_hold_a_closed_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with later_server(drain_timeout=50.0) as setup:
        async with raw(setup) as peer:
            await peer.send(peer.frame(FrameKind.REQUEST, 1, later_body("a"),
                                       budget_us=100_000_000))
            (await setup.service.wait_started("a"))(CountReply(1))
            frame = await peer.receive()
            assert frame is not None and frame.kind == FrameKind.RESPONSE
            start = trio.current_time()
        with trio.fail_after(60):
            while setup.server.connection_count:
                await trio.sleep(0.01)
        # The sweeper slept until the answered call's deadline; the drain woke it.
        assert trio.current_time() - start < 1.0
