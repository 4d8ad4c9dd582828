"""A 2PC node: one coordinator or participant with its LMDB log, serving the
protocol's notifications and a few control requests over RPC.

    serve_node(config)   recover from the log, serve until cancelled

Control requests (for `ddfs coord run 2pc` and tests):
    2pc.ctl.begin   start a transaction (coordinator; repeating a txid is a no-op)
    2pc.ctl.arm     stop this process when it reaches a named step of a txid
    2pc.ctl.status  state and decision of a txid, message counts, Lamport time

Invariants:
* The node's Lamport clock is shared by its RPC server, its RPC client and
  its trace, and resumes after a restart from the highest stamp in its own
  trace file, so its stamps only grow across crashes.
* An armed step stops the whole process with SIGSTOP right at the step
  (after the effects before it, before the ones after it), having first
  traced the crash point; whoever armed it is expected to SIGKILL it.
  Arming is not persisted: a restarted node runs freely.
* The log is closed on every exit path (LMDB's own crash safety covers kills).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from coord.clock.lamport import LamportClock
from coord.kv.remote import KvClient
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
from coord.twopc.coordinator import Coordinator
from coord.twopc.driver import Core, TwoPcDriver
from coord.twopc.kv_decision import KvDecisionStore
from coord.twopc.lmdb_log import LmdbLog
from coord.twopc.messages import (
    Ack,
    DecisionMsg,
    DecisionQuery,
    Message,
    Prepare,
    QueryReply,
    VoteMsg,
)
from coord.twopc.participant import Participant
from coord.twopc.records import Effect, LogRecord
from coord.twopc.types import CoordState, NodeName, Step, TwoPcConfig, TxId, Write

log = logging.getLogger(__name__)

ROLES = ("coordinator", "participant")
PAUSED = "paused at"  # printed (then SIGSTOP) when an armed step is reached


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: NodeName
    role: str  # "coordinator" or "participant"
    node_id: int  # RPC node id (unique among the 2PC nodes)
    peers: Mapping[NodeName, str]  # every 2PC node, this one included -> "host:port"
    data_dir: Path  # the LMDB log and the trace file
    secret: bytes
    kv_endpoints: tuple[str, ...] = ()  # the decision store's members; () = textbook 2PC
    twopc: TwoPcConfig = field(default_factory=TwoPcConfig)

    def validate(self) -> NodeConfig:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if self.name not in self.peers:
            raise ValueError(f"{self.name} is not among the nodes {sorted(self.peers)}")
        for address in (*self.peers.values(), *self.kv_endpoints):
            parse_tcp_address(address)
        if self.twopc.use_store and not self.kv_endpoints:
            raise ValueError("the decision store needs --kv-endpoints (or use textbook mode)")
        self.twopc.validate()
        return self

    @property
    def address(self) -> str:
        return self.peers[self.name]


# ----------------------------------------------------------------------------- control


@dataclass(frozen=True, slots=True)
class CtlReply:
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class StatusReply:
    name: str
    role: str
    state: str  # the txid's state ("" if unknown here)
    decision: str  # "commit", "abort" or ""
    undecided: list[str]  # every txid this node is prepared for without an outcome
    sent: dict[str, int]  # messages sent by kind since this process started
    dropped: int  # messages the transport could not deliver
    lamport: int


@request("2pc.ctl.begin", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class BeginTxn(Request[CtlReply]):
    txid: str
    work: dict[str, list[Write]]  # participant -> its writes


@request("2pc.ctl.arm", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ArmStep(Request[CtlReply]):
    txid: str
    step: str  # a CoordStep or PartStep value


@request("2pc.ctl.status", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class TxnStatus(Request[StatusReply]):
    txid: str


class RpcTransport:
    """2PC messages as RPC notifications (one-way; the cores retransmit)."""

    def __init__(self, rpc: RpcClient, peers: Mapping[NodeName, str], timeout: float) -> None:
        self._rpc = rpc
        self._peers = peers
        self._timeout = timeout

    async def send(self, to: NodeName, msg: Message) -> None:
        await self._rpc.notify(self._peers[to], msg, timeout=self._timeout)


class NodeService:
    """RPC handlers: protocol messages go to the driver, control requests to the core."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.driver: TwoPcDriver | None = None  # set before serving starts
        self._armed: set[tuple[str, str]] = set()  # (txid, step value)

    def router(self) -> Router:
        router = Router()
        for kind in (Prepare, VoteMsg, DecisionMsg, Ack, DecisionQuery, QueryReply):
            router.add(kind, self._on_message)
        router.add(BeginTxn, self._begin).add(ArmStep, self._arm).add(TxnStatus, self._status)
        return router

    def _driver(self) -> TwoPcDriver:
        if self.driver is None:
            raise RemoteError("SHUTTING_DOWN", "not serving yet")
        return self.driver

    async def _on_message(self, msg: Message, ctx: CallContext) -> None:
        await self._driver().deliver(msg, ctx.lamport)

    async def _begin(self, req: BeginTxn, ctx: CallContext) -> CtlReply:
        driver = self._driver()
        if not isinstance(driver.core, Coordinator):
            raise RemoteError("NOT_COORDINATOR", f"{self.config.name} is a participant")
        work = {NodeName(p): tuple(ws) for p, ws in req.work.items()}
        try:
            await driver.begin(TxId(req.txid), work)
        except ValueError as exc:
            raise RemoteError("BAD_TRANSACTION", str(exc)) from None
        return CtlReply(True)

    def _arm(self, req: ArmStep, ctx: CallContext) -> CtlReply:
        self._armed.add((req.txid, req.step))
        return CtlReply(True, f"{self.config.name} will stop at {req.step} of {req.txid}")

    def _status(self, req: TxnStatus, ctx: CallContext) -> StatusReply:
        driver = self._driver()
        core, txid = driver.core, TxId(req.txid)
        state = core.state(txid)
        decision = core.decision(txid)
        return StatusReply(self.config.name, self.config.role,
                           "" if state is None else state.value,
                           "" if decision is None else decision.value,
                           list(_open_txns(core)), dict(driver.sent), driver.dropped,
                           driver.clock.time)

    # The driver's StepHook: stop at an armed step.
    def armed(self, step: Step, txid: TxId) -> bool:
        return (txid, step.value) in self._armed

    async def reached(self, step: Step, txid: TxId) -> None:
        if not self.armed(step, txid):
            return
        self._armed.discard((txid, step.value))
        driver = self._driver()
        driver.note(f"CRASH at {step.value} {txid} (killed)")
        print(f"ddfs 2pc {self.config.name}: {PAUSED} {step.value} {txid}", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen right here until killed (or SIGCONT)
        driver.note(f"resumed after {step.value} {txid}")


def _open_txns(core: Core) -> list[TxId]:
    if isinstance(core, Participant):
        return core.undecided()
    return sorted(t for t, s in core.transactions().items() if s is not CoordState.ENDED)


# ----------------------------------------------------------------------------- serving


def _recover(config: NodeConfig, records: list[LogRecord],
             data: dict[str, bytes], now: float) -> tuple[Core, list[Effect]]:
    if config.role == "coordinator":
        return Coordinator.recover(config.name, config.twopc, records, now)
    return Participant.recover(config.name, config.twopc, records, data, now)


def _recovery_notes(driver: TwoPcDriver, records: list[LogRecord]) -> None:
    if not records:
        return
    driver.note(f"RECOVER from {len(records)} log records")
    core = driver.core
    for txid in _open_txns(core):
        logged = [type(r).__name__.removesuffix("Record").upper()
                  for r in records if r.txid == txid]
        state = core.state(txid)
        assert state is not None
        driver.note(f"RECOVER {txid}: log has {'+'.join(logged)}, now {state.name}")


async def serve_node(config: NodeConfig, *,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    trace_path = config.data_dir / "trace.jsonl"
    clock = LamportClock(max_lamport(read_jsonl(trace_path), config.name))
    tracer = TraceRecorder(sink=lambda ev: append_jsonl(trace_path, ev))
    log_store = await trio.to_thread.run_sync(LmdbLog, config.data_dir / "log")
    try:
        records = await trio.to_thread.run_sync(log_store.records)
        data = await trio.to_thread.run_sync(log_store.data)
        core, effects = _recover(config, records, data, trio.current_time())
        await _serve(config, core, effects, records, log_store, clock, tracer, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(log_store.close)


async def _serve(config: NodeConfig, core: Core, effects: list[Effect],
                 records: list[LogRecord], log_store: LmdbLog, clock: LamportClock,
                 tracer: TraceRecorder, task_status: trio.TaskStatus[str]) -> None:
    client_cfg = ClientConfig(node_id=config.node_id, secret=config.secret, role="2pc",
                              connect_timeout=1.0, default_timeout=3.0, attempt_timeout=1.0)
    service = NodeService(config)
    server = RpcServer(ServerConfig(node_id=config.node_id, secret=config.secret, role="2pc"),
                       service.router(), clock=clock)
    async with RpcClient(client_cfg, TcpConnector(), clock=clock) as rpc:
        store = None
        if config.twopc.use_store:
            store = KvDecisionStore(KvClient(rpc, list(config.kv_endpoints), timeout=3.0,
                                             attempt_timeout=1.0))
        driver = TwoPcDriver(core, log_store, RpcTransport(rpc, config.peers, 1.5),
                             store=store, clock=clock, tracer=tracer, on_step=service)
        service.driver = driver
        _recovery_notes(driver, records)
        host, port = parse_tcp_address(config.address)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_tcp, host, port)
            await nursery.start(driver.run, effects)
            task_status.started(config.address)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await server.shutdown()
                nursery.cancel_scope.cancel()
