"""A mutual-exclusion node process: one `MutexService` served over RPC, plus a
workload and a status request for `ddfs coord run mutex` and tests.

    serve_mutex_node(config)   serve until cancelled

Control requests:
    mutex.ctl.work    enter the lock K times in a row (each time: resource enter,
                      hold, resource exit), starting now; answers at once
    mutex.ctl.status  entries done, whether the work is finished, messages sent

Invariants:
* The node's Lamport clock is shared by its RPC server, its RPC client and
  its trace (appended to `data_dir/trace.jsonl` as events happen, so a
  killed node's trace survives up to its last event).
* Work runs under the node's nursery: cancelled with the node, never leaked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from coord.clock.lamport import LamportClock
from coord.lease.types import FencingToken
from coord.mutex.centralized import Centralized
from coord.mutex.driver import MutexService, node_name
from coord.mutex.elected import ELECTION_MESSAGES, ElectedLeader, bully_for
from coord.mutex.messages import PROTOCOL_MESSAGES, Heartbeat
from coord.mutex.resource import ProtectedResource, ResEnter, ResExit, ResReply
from coord.mutex.ricart import RicartAgrawala
from coord.mutex.ring import TokenRing
from coord.mutex.types import LeaderView, LockName, MutexConfig, MutexCore, NodeId
from coord.rpc import (
    CallContext,
    ClientConfig,
    Router,
    RpcClient,
    RpcError,
    RpcServer,
    Semantics,
    ServerConfig,
    TcpConnector,
    request,
)
from coord.rpc.transport import parse_tcp_address
from coord.trace import TraceRecorder, append_jsonl
from coord.wire.schema import Request

log = logging.getLogger(__name__)

ALGORITHMS = ("centralized", "ricart-agrawala", "token-ring")
READY = "ready on"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    me: NodeId
    algo: str
    nodes: Mapping[NodeId, str]  # every node, this one included -> "host:port"
    data_dir: Path
    secret: bytes
    mutex: MutexConfig = field(default_factory=MutexConfig)
    locks: tuple[str, ...] = ("L",)
    heartbeat: float = 0.2
    suspect_after: float = 1.0
    startup_wait: float = 10.0  # the start-up barrier's bound (seconds)
    elect: bool = True  # centralized/ring: the coordinator comes from a Bully election

    def validate(self) -> NodeConfig:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {ALGORITHMS}, not {self.algo!r}")
        if self.me not in self.nodes:
            raise ValueError(f"node {self.me} is not among {sorted(self.nodes)}")
        for address in self.nodes.values():
            parse_tcp_address(address)
        if self.suspect_after <= 2 * self.heartbeat:
            raise ValueError("suspect_after must exceed two heartbeat periods")
        self.mutex.validate()
        return self


def build_core(config: NodeConfig, lock: LockName, now: float,
               view: LeaderView | None = None) -> MutexCore:
    ids = sorted(config.nodes)
    if config.algo == "centralized":
        return Centralized(config.me, ids, lock, config.mutex, view)
    if config.algo == "ricart-agrawala":
        return RicartAgrawala(config.me, ids, lock, config.mutex)
    return TokenRing(config.me, ids, lock, config.mutex, view, now=now)


# ----------------------------------------------------------------------------- control


@dataclass(frozen=True, slots=True)
class CtlReply:
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    entries: int  # workload entries completed
    done: bool  # the requested work is finished
    sent: dict[str, int]  # protocol messages sent, by kind
    dropped: int
    heartbeats: int
    stale: int  # resource enters refused (stale token)
    lamport: int


@request("mutex.ctl.work", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Work(Request[CtlReply]):
    entries: int
    resource: str  # host:port of the protected resource
    hold: float  # seconds inside each time
    lock: str = "L"


@request("mutex.ctl.status", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Status(Request[NodeStatus]):
    pass


class RpcTransport:
    """Protocol messages as RPC notifications (one-way)."""

    def __init__(self, rpc: RpcClient, nodes: Mapping[NodeId, str], timeout: float) -> None:
        self._rpc, self._nodes, self._timeout = rpc, nodes, timeout

    async def send(self, to: NodeId, msg: object) -> None:
        await self._rpc.notify(self._nodes[to], msg, timeout=self._timeout)


class NodeControl:
    def __init__(self, config: NodeConfig, service: MutexService, rpc: RpcClient,
                 nursery: trio.Nursery) -> None:
        self.config, self.service, self.rpc, self.nursery = config, service, rpc, nursery
        self.entries = 0
        self.stale = 0
        self.done = False
        self._working = False

    def work(self, req: Work, ctx: CallContext) -> CtlReply:
        if self._working:
            return CtlReply(False, "already working")
        self._working = True
        self.nursery.start_soon(self._work, req, name=f"mutex-n{self.config.me}-work")
        return CtlReply(True)

    async def _work(self, req: Work) -> None:
        me = node_name(self.config.me)
        for _ in range(req.entries):
            async with self.service.hold(req.lock) as grant:
                token = int(grant.token)
                if await self._resource(req.resource, ResEnter(me, token)):
                    await trio.sleep(req.hold)
                    await self._resource(req.resource, ResExit(me, token))
                else:
                    self.stale += 1
            self.entries += 1
        self.done = True
        self.service.note(f"DONE {self.entries} entries")

    async def _resource(self, address: str, req: ResEnter | ResExit) -> bool:
        try:
            reply = await self.rpc.call(address, req, timeout=2.0)
        except RpcError as exc:
            log.warning("resource unreachable: %s", exc)
            return False
        return reply.ok

    def status(self, req: Status, ctx: CallContext) -> NodeStatus:
        s = self.service
        return NodeStatus(s.name, self.entries, self.done, dict(s.sent), s.dropped,
                          s.heartbeats, self.stale, s.clock.time)


# ----------------------------------------------------------------------------- serving


async def serve_mutex_node(config: NodeConfig, *,
                           task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    trace_path = config.data_dir / "trace.jsonl"
    clock = LamportClock()
    tracer = TraceRecorder(sink=lambda ev: append_jsonl(trace_path, ev))
    client_cfg = ClientConfig(node_id=config.me, secret=config.secret, role="mutex",
                              connect_timeout=0.5, default_timeout=2.0, attempt_timeout=1.0)
    async with RpcClient(client_cfg, TcpConnector(), clock=clock) as rpc:
        now = trio.current_time()
        ids = sorted(config.nodes)
        election = None
        view: LeaderView | None = None
        if config.elect and config.algo != "ricart-agrawala":
            election = bully_for(config.me, ids)
            view = ElectedLeader(election, max(ids))
        cores = {LockName(k): build_core(config, LockName(k), now, view) for k in config.locks}
        service = MutexService(config.me, cores, RpcTransport(rpc, config.nodes, 1.0), ids,
                               clock=clock, tracer=tracer, heartbeat=config.heartbeat,
                               suspect_after=config.suspect_after, election=election)
        async with trio.open_nursery() as nursery:
            control = NodeControl(config, service, rpc, nursery)
            server = RpcServer(ServerConfig(node_id=config.me, secret=config.secret,
                                            role="mutex"), _router(service, control),
                               clock=clock)
            host, port = parse_tcp_address(config.nodes[config.me])
            await nursery.start(server.serve_tcp, host, port)
            await _wait_for_peers(rpc, config)
            await nursery.start(service.run)
            task_status.started(config.nodes[config.me])
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await server.shutdown()
                nursery.cancel_scope.cancel()


async def _wait_for_peers(rpc: RpcClient, config: NodeConfig) -> None:
    """Start-up barrier: begin the protocol once every peer answers (bounded).

    Without it the ring's first token would be passed to a process still
    starting, lost, and regenerated after `loss_timeout + recovery_wait`.
    """
    with trio.move_on_after(config.startup_wait):
        for node, address in sorted(config.nodes.items()):
            while node != config.me:
                try:
                    await rpc.call(address, Status(), timeout=0.5)
                    break
                except RpcError:
                    await trio.sleep(0.05)


def _router(service: MutexService, control: NodeControl) -> Router:
    async def on_message(msg: object, ctx: CallContext) -> None:
        await service.deliver(msg, ctx.lamport)

    router = Router()
    for kind in (*PROTOCOL_MESSAGES, *ELECTION_MESSAGES, Heartbeat):
        router.add(kind, on_message)
    router.add(Work, control.work).add(Status, control.status)
    return router


async def serve_resource(secret: bytes, resource: ProtectedResource, *,
                         task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Serve a `ProtectedResource` on 127.0.0.1 (an ephemeral port) until cancelled."""
    def enter(req: ResEnter, ctx: CallContext) -> ResReply:
        ok = resource.enter(req.holder, FencingToken(req.token))
        return ResReply(ok, "" if ok else "stale fencing token")

    def leave(req: ResExit, ctx: CallContext) -> ResReply:
        resource.exit(req.holder, FencingToken(req.token))
        return ResReply(True)

    server = RpcServer(ServerConfig(node_id=1 << 20, secret=secret, role="resource"),
                       Router().add(ResEnter, enter).add(ResExit, leave))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        task_status.started(f"127.0.0.1:{bound[0][1]}")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await server.shutdown()
            nursery.cancel_scope.cancel()
