"""Shared messages, services and harness for the RPC tests (no tests here).

Everything runs over `MemoryNetwork`, so servers and clients need no sockets.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from coord.rpc import (
    CallContext,
    ClientConfig,
    MemoryNetwork,
    Notification,
    RemoteError,
    Request,
    RetryPolicy,
    Router,
    RpcClient,
    RpcServer,
    Semantics,
    ServerConfig,
    handles,
    notification,
    request,
)
from coord.rpc.auth import ClientHandshake, PeerInfo
from coord.wire.frame import NO_BUDGET, Frame, FrameDecoder, FrameKind, encode_frame

SECRET = b"test-cluster-secret"
ADDR = "server-1"


@dataclass(frozen=True, slots=True)
class EchoReply:
    data: bytes
    note: str


@request("test.echo", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Echo(Request[EchoReply]):
    data: bytes
    note: str = ""


@dataclass(frozen=True, slots=True)
class CountReply:
    executions: int  # how many times the handler has run for this key, including this one


@request("test.sleep", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Sleep(Request[CountReply]):
    seconds: float
    key: str = ""


@request("test.bump_maybe", semantics=Semantics.MAYBE)
@dataclass(frozen=True, slots=True)
class BumpMaybe(Request[CountReply]):
    key: str
    fail_first: int = 0  # raise OVERLOADED (transient) this many times first


@request("test.bump_alo", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class BumpAtLeastOnce(Request[CountReply]):
    key: str
    fail_first: int = 0


@request("test.bump_amo", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class BumpAtMostOnce(Request[CountReply]):
    key: str
    seconds: float = 0.0  # async handler sleeps this long before answering


@request("test.fail", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Fail(Request[None]):
    code: str
    message: str


@request("test.crash", semantics=Semantics.MAYBE)
@dataclass(frozen=True, slots=True)
class Crash(Request[None]):
    pass


@request("test.unhandled", semantics=Semantics.MAYBE)
@dataclass(frozen=True, slots=True)
class Unhandled(Request[None]):
    pass


@notification("test.note")
@dataclass(frozen=True, slots=True)
class Note(Notification):
    text: str
    seq: int


@dataclass
class Service:
    """Handlers that record what happened, for assertions."""

    executions: dict[str, int] = field(default_factory=dict)
    budgets: list[float | None] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    notes: list[tuple[str, int, int]] = field(default_factory=list)  # (text, seq, lamport)
    lamports: list[int] = field(default_factory=list)
    notes_arrived: trio.Event = field(default_factory=trio.Event)
    want_notes: int = 1

    def _bump(self, key: str) -> int:
        self.executions[key] = self.executions.get(key, 0) + 1
        return self.executions[key]

    @handles(Echo)
    def echo(self, req: Echo, ctx: CallContext) -> EchoReply:
        self.lamports.append(ctx.lamport)
        self.budgets.append(ctx.budget)
        return EchoReply(req.data, req.note or f"from {ctx.peer.node_id}")

    @handles(Sleep)
    async def sleep(self, req: Sleep, ctx: CallContext) -> CountReply:
        self.budgets.append(ctx.budget)
        try:
            await trio.sleep(req.seconds)
        except trio.Cancelled:
            self.cancelled.append(req.key)
            raise
        return CountReply(self._bump(req.key))

    @handles(BumpMaybe)
    def bump_maybe(self, req: BumpMaybe, ctx: CallContext) -> CountReply:
        count = self._bump(req.key)
        if count <= req.fail_first:
            raise RemoteError("OVERLOADED", "try again later")
        return CountReply(count)

    @handles(BumpAtLeastOnce)
    def bump_alo(self, req: BumpAtLeastOnce, ctx: CallContext) -> CountReply:
        count = self._bump(req.key)
        if count <= req.fail_first:
            raise RemoteError("OVERLOADED", "try again later")
        return CountReply(count)

    @handles(BumpAtMostOnce)
    async def bump_amo(self, req: BumpAtMostOnce, ctx: CallContext) -> CountReply:
        count = self._bump(req.key)
        if req.seconds:
            await trio.sleep(req.seconds)
        return CountReply(count)

    @handles(Fail)
    def fail(self, req: Fail, ctx: CallContext) -> None:
        raise RemoteError(req.code, req.message)

    @handles(Crash)
    def crash(self, req: Crash, ctx: CallContext) -> None:
        raise RuntimeError("handler bug")

    @handles(Note)
    def note(self, msg: Note, ctx: CallContext) -> None:
        self.notes.append((msg.text, msg.seq, ctx.lamport))
        if len(self.notes) >= self.want_notes:
            self.notes_arrived.set()


def server_config(**overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {"node_id": 1, "secret": SECRET, "role": "test-server"}
    values.update(overrides)
    return ServerConfig(**values)


def client_config(**overrides: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "node_id": 2,
        "secret": SECRET,
        "default_timeout": 10.0,
        "attempt_timeout": 1.0,
        "retry": RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.1),
    }
    values.update(overrides)
    return ClientConfig(**values)


@dataclass
class Cluster:
    net: MemoryNetwork
    server: RpcServer
    service: Service
    nursery: trio.Nursery

    def client(self, **overrides: Any) -> RpcClient:
        return RpcClient(client_config(**overrides), self.net)


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[Cluster]:
    """A server with `Service` listening at ADDR on a fresh memory network."""
    net = MemoryNetwork()
    service = Service()
    server = RpcServer(server_config(**overrides), Router().include(service))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [net.listen(ADDR)])
        try:
            yield Cluster(net, server, service, nursery)
        finally:
            with trio.move_on_after(5):
                await server.shutdown()
            nursery.cancel_scope.cancel()


class RawPeer:
    """A hand-driven client connection: authenticate, then send any bytes or frames."""

    def __init__(self, stream: trio.abc.Stream, node_id: int = 7) -> None:
        self.stream = stream
        self.node_id = node_id
        self.decoder = FrameDecoder()
        self.lamport = 0

    def frame(self, kind: FrameKind, rid: int, body: bytes, budget_us: int = NO_BUDGET) -> bytes:
        self.lamport += 1
        return encode_frame(kind, rid, sender=self.node_id, lamport=self.lamport,
                            budget_us=budget_us, body=body)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> Frame | None:
        """The next frame, or None once the server closed the connection."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self.decoder.feed(bytes(data))

    async def authenticate(self, secret: bytes = SECRET) -> None:
        hs = ClientHandshake(secret, PeerInfo(self.node_id, "raw"), secrets.token_bytes(32))
        await self.send(self.frame(FrameKind.HELLO, 0, hs.hello()))
        challenge = await self.receive()
        assert challenge is not None and challenge.kind == FrameKind.CHALLENGE
        await self.send(self.frame(FrameKind.PROOF, 0, hs.on_challenge(challenge.body)))
        welcome = await self.receive()
        assert welcome is not None and welcome.kind == FrameKind.WELCOME

    async def call_raw(self, rid: int, body: bytes) -> Frame | None:
        await self.send(self.frame(FrameKind.REQUEST, rid, body))
        return await self.receive()


def request_body(method: str, fields: Any, session: list[int] | None = None) -> bytes:
    packed: bytes = msgpack.packb([method, session, fields])
    return packed


def error_of(frame: Frame) -> tuple[str, str]:
    assert frame.kind == FrameKind.ERROR, frame
    code, message = msgpack.unpackb(frame.body)
    return code, message


@asynccontextmanager
async def raw_peer(cluster: Cluster, *, authenticate: bool = True) -> AsyncIterator[RawPeer]:
    stream = await cluster.net.connect(ADDR)
    peer = RawPeer(stream)
    try:
        if authenticate:
            await peer.authenticate()
        yield peer
    finally:
        await trio.aclose_forcefully(stream)
