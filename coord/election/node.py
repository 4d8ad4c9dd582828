"""An election node: one Bully or Ring core with its driver, serving over RPC.

    serve_node(config)   run until cancelled

Protocol messages and heartbeats are RPC notifications (coord/election/
messages.py); control requests serve `ddfs coord run election` and tests:

    election.ctl.status  leader, messages sent by kind, elections started, Lamport time
    election.ctl.elect   hold an election now

Invariants:
* The node's Lamport clock is shared by its RPC server, RPC client and
  trace, and resumes after a restart from the highest stamp in its own trace
  file, so its stamps only grow across restarts.
* The trace is appended event by event to `<data>/trace.jsonl` (a node killed
  mid-write tears at most the last line, which readers skip).
* A restarted node's first round is above every round it used before: an
  incarnation counter in `<data>/incarnation` is bumped at every start and
  rounds start at incarnation x ROUNDS_PER_LIFE, so its old OKs and
  circulating messages are recognisably stale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from coord.clock.lamport import LamportClock
from coord.election.bully import BullyNode
from coord.election.driver import Core, DriverTiming, ElectionDriver
from coord.election.messages import (
    BullyCoordinator,
    BullyElection,
    BullyOk,
    ElectionMessage,
    Heartbeat,
    RingCoordinator,
    RingElection,
)
from coord.election.ring import RingNode
from coord.election.types import ElectionConfig, NodeId
from coord.failure import TimeoutConfig, TimeoutDetector
from coord.rpc import (
    CallContext,
    ClientConfig,
    RemoteError,
    Request,
    Router,
    RpcClient,
    RpcServer,
    Semantics,
    ServerConfig,
    TcpConnector,
    request,
)
from coord.rpc.transport import parse_tcp_address
from coord.trace import TraceRecorder, append_jsonl, max_lamport, read_jsonl

log = logging.getLogger(__name__)

ALGOS = ("bully", "ring")
RPC_ID_BASE = 7000  # RPC node ids of election nodes: base + election id
ROUNDS_PER_LIFE = 1000  # rounds of one life (an overlap after more only delays: stale-looking)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeId
    algo: str  # "bully" or "ring"
    peers: Mapping[NodeId, str]  # every node, this one included -> "host:port" (ring order)
    data_dir: Path  # the trace file
    secret: bytes
    election: ElectionConfig = field(default_factory=ElectionConfig)
    timing: DriverTiming = field(default_factory=DriverTiming)
    suspect_after: float = 1.0  # heartbeat silence (s) before the detector suspects a peer
    start_election: bool = True  # False: wait for election.ctl.elect (demos, tests)
    # Start the Lamport clock at least here: a launcher that restarts a node
    # after watching the others passes their highest stamp, so the restart
    # is ordered after what the launcher saw (a causal link through it).
    clock_floor: int = 0

    def validate(self) -> NodeConfig:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, not {self.algo!r}")
        if self.node not in self.peers:
            raise ValueError(f"node {self.node} is not among {sorted(self.peers)}")
        for address in self.peers.values():
            parse_tcp_address(address)
        self.election.validate()
        self.timing.validate()
        if self.suspect_after <= self.timing.heartbeat_every:
            raise ValueError("suspect_after must exceed heartbeat_every")
        return self


@dataclass(frozen=True, slots=True)
class StatusReply:
    node: int
    algo: str
    leader: int  # 0: none
    sent: dict[str, int]  # protocol messages sent by kind since this process started
    elections: int  # elections this process started
    leader_changes: int
    dropped: int
    lamport: int


@dataclass(frozen=True, slots=True)
class ElectReply:
    ok: bool


@request("election.ctl.status", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ElectionStatus(Request[StatusReply]):
    pass


@request("election.ctl.elect", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class StartElection(Request[ElectReply]):
    pass


class RpcTransport:
    """Election messages as RPC notifications (one-way; the cores cope with loss)."""

    def __init__(self, rpc: RpcClient, peers: Mapping[NodeId, str], timeout: float) -> None:
        self._rpc = rpc
        self._peers = peers
        self._timeout = timeout

    async def send(self, to: NodeId, msg: ElectionMessage | Heartbeat) -> None:
        await self._rpc.notify(self._peers[to], msg, timeout=self._timeout)


class NodeService:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.driver: ElectionDriver | None = None  # set before serving starts

    def router(self) -> Router:
        router = Router()
        for kind in (BullyElection, BullyOk, BullyCoordinator, RingElection, RingCoordinator):
            router.add(kind, self._on_message)
        router.add(Heartbeat, self._on_heartbeat)
        router.add(ElectionStatus, self._status).add(StartElection, self._elect)
        return router

    def _driver(self) -> ElectionDriver:
        if self.driver is None:
            raise RemoteError("SHUTTING_DOWN", "not serving yet")
        return self.driver

    async def _on_message(self, msg: ElectionMessage, ctx: CallContext) -> None:
        await self._driver().deliver(msg, ctx.lamport)

    def _on_heartbeat(self, msg: Heartbeat, ctx: CallContext) -> None:
        self._driver().heard(msg.sender, msg.coordinator)

    def _status(self, req: ElectionStatus, ctx: CallContext) -> StatusReply:
        d = self._driver()
        return StatusReply(int(d.id), self.config.algo, int(d.leader or 0), dict(d.sent),
                           d.elections, d.leader_changes, d.dropped, d.clock.time)

    def _elect(self, req: StartElection, ctx: CallContext) -> ElectReply:
        self._driver().elect()
        return ElectReply(True)


def make_core(config: NodeConfig, first_round: int) -> Core:
    ids = list(config.peers)
    if config.algo == "bully":
        return BullyNode(config.node, ids, config.election, first_round=first_round)
    return RingNode(config.node, ids, config.election, first_round=first_round)


def _next_incarnation(path: Path) -> int:
    try:
        life = int(path.read_text().strip() or 0) + 1
    except FileNotFoundError:
        life = 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{life}\n")
    tmp.replace(path)  # atomic: a kill leaves the old or the new count
    return life


async def serve_node(config: NodeConfig, *,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    trace_path = config.data_dir / "trace.jsonl"
    earlier = read_jsonl(trace_path)
    clock = LamportClock(max(config.clock_floor, max_lamport(earlier, str(config.node))))
    tracer = TraceRecorder(sink=lambda ev: append_jsonl(trace_path, ev))
    life = await trio.to_thread.run_sync(_next_incarnation, config.data_dir / "incarnation")
    core = make_core(config, first_round=life * ROUNDS_PER_LIFE)
    rpc_id = RPC_ID_BASE + int(config.node)
    client_cfg = ClientConfig(node_id=rpc_id, secret=config.secret, role="election",
                              connect_timeout=0.5, default_timeout=1.0, attempt_timeout=0.5)
    service = NodeService(config)
    server = RpcServer(ServerConfig(node_id=rpc_id, secret=config.secret, role="election"),
                       service.router(), clock=clock)
    detector = TimeoutDetector(TimeoutConfig(timeout=config.suspect_after))
    async with RpcClient(client_cfg, TcpConnector(), clock=clock) as rpc:
        transport = RpcTransport(rpc, config.peers, config.timing.send_timeout)
        driver = ElectionDriver(core, transport, detector, peers=config.peers, clock=clock,
                                tracer=tracer, timing=config.timing,
                                start_election=config.start_election)
        service.driver = driver
        if earlier:
            driver.note("restart")
        host, port = parse_tcp_address(config.peers[config.node])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_tcp, host, port)
            await nursery.start(driver.run)
            task_status.started(config.peers[config.node])
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await server.shutdown()
                nursery.cancel_scope.cancel()
