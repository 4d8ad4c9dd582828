"""A deterministic simulator for 2PC: seeded faults, a faithful driver, and
safety checks on every durable decision.

One seed fixes everything: the workload (which participants each
transaction touches, which ones will vote ABORT, contention on a shared key),
the network's drops, duplicates and delays (`coord.sim.network.SimNetwork`),
and the fault plan: crashes of the coordinator or a participant at a random
effect boundary (so between any two steps: after logging but before
sending, between two sends, ...), restarts from the durable log, isolation
of a node, and outages of the decision store.

The simulated driver runs each core's effects in order — persist (the
`MemoryLog` keeps only synced records across a crash) → send → ask the store
→ checkpoint — exactly as the real driver does.  The decision store is a
node of its own ("kv", a `MemoryDecisionStore` behind the same lossy
network) so that reaching it can fail like reaching any peer.

After the faulty phase everything heals (no drops, every node up, the store
reachable) and the run must converge: every transaction ended at the
coordinator, decided at every participant, no participant left prepared.

Invariants: the same `SimParams` always produce the same run and report;
`TwoPcChecker` checks agreement and validity on every decision written and
termination and data atomicity at the end (see sim_checks.py).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from coord.clock.lamport import LamportClock
from coord.sim.network import NetConfig, SimNetwork
from coord.trace import TraceRecorder
from coord.twopc.coordinator import Coordinator
from coord.twopc.decision import MemoryDecisionStore
from coord.twopc.log import MemoryLog
from coord.twopc.messages import Message, label_of
from coord.twopc.participant import Participant
from coord.twopc.records import (
    BeginRecord,
    Checkpoint,
    Effect,
    Persist,
    ResolveDecision,
    Send,
    persist_note,
)
from coord.twopc.sim_checks import SafetyViolation, TwoPcChecker, TxnPlan
from coord.twopc.types import Decision, NodeName, Step, TwoPcConfig, TxId, Write, undecided

__all__ = ["SafetyViolation", "SimParams", "SimReport", "TwoPcSim", "run_twopc_sim"]

#: Timeouts in ticks; a message takes 1..max_delay ticks.
SIM_CONFIG = TwoPcConfig(vote_timeout=40, prepare_retry=6, ack_retry=6, decision_timeout=40,
                         query_retry=8, store_retry=10)
STORE = NodeName("kv")
COORD = NodeName("c")
HOT_KEY = "hot"  # shared by many transactions: lock conflicts make participants vote ABORT


@dataclass(frozen=True, slots=True)
class StoreAsk:
    txid: TxId
    proposal: Decision
    asker: NodeName


@dataclass(frozen=True, slots=True)
class StoreReply:
    txid: TxId
    decision: Decision


@dataclass(frozen=True, slots=True)
class Envelope:
    stamp: int  # the sender's Lamport time for the send
    body: Message | StoreAsk | StoreReply


@dataclass(frozen=True, slots=True)
class SimParams:
    seed: int
    participants: int = 3
    transactions: int = 4
    use_store: bool = True
    ticks: int = 160  # the faulty phase
    min_faults: int = 3
    max_faults: int = 5
    convergence_ticks: int = 800  # bound on the healed phase
    config: TwoPcConfig = SIM_CONFIG


@dataclass(slots=True)
class SimReport:
    seed: int
    faults: list[str] = field(default_factory=list)
    crashes: int = 0
    committed: int = 0
    aborted: int = 0
    messages: int = 0
    store_asks: int = 0
    learned_from_store: int = 0  # participants whose outcome came from the store
    learned_from_peers: int = 0  # ... from another participant (termination)
    ticks: int = 0


@dataclass(slots=True)
class _Node:
    name: NodeName
    log: MemoryLog = field(default_factory=MemoryLog)
    clock: LamportClock = field(default_factory=LamportClock)
    core: Coordinator | Participant | None = None  # None while crashed
    restart_at: int = 0
    crash_after: int | None = None  # armed: crash after this many more effects
    crash_step: Step | None = None  # armed: crash at this named checkpoint
    crash_limit: int = 0  # an armed node idle until this tick crashes anyway
    down_for: int = 0  # armed: ticks between the crash and the restart


@dataclass(slots=True)
class _Fault:
    at: int
    kind: str  # "crash", "isolate", "store-down"
    node: NodeName
    duration: int
    skip: int = 0  # crash: effects to run before crashing


class TwoPcSim:
    def __init__(self, params: SimParams, *, tracer: TraceRecorder | None = None,
                 participant_factory: type[Participant] = Participant,
                 net: NetConfig | None = None) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.tracer = tracer
        self._factory = participant_factory
        self.config = dataclasses.replace(params.config, use_store=params.use_store)
        self.net: SimNetwork[NodeName, Envelope] = SimNetwork(
            random.Random(self.rng.getrandbits(64)), (net or self._draw_net()).validate())
        self.store = MemoryDecisionStore()
        self.store_down_until = -1
        self.store_clock = LamportClock()
        self.isolated: dict[NodeName, int] = {}  # node -> tick its isolation ends
        self.names = [NodeName(f"p{i}") for i in range(1, params.participants + 1)]
        self.nodes: dict[NodeName, _Node] = {n: _Node(n) for n in [COORD, *self.names]}
        self.plans = self._draw_workload()
        self.begin_at = {t: self.rng.randrange(0, max(1, params.ticks // 2)) for t in self.plans}
        self.begun: list[TxId] = []
        self.checker = TwoPcChecker(params.seed, self.plans)
        self.report = SimReport(params.seed)
        self.faults = self._draw_faults()
        self.now = 0
        self.healed = False
        self._start(COORD)
        for name in self.names:
            self._start(name)

    # ------------------------------------------------------------------ set-up

    def _draw_net(self) -> NetConfig:
        r = self.rng
        return NetConfig(drop=r.choice([0.0, 0.02, 0.05, 0.1, 0.15]),
                         duplicate=r.choice([0.0, 0.03, 0.08]),
                         min_delay=1, max_delay=r.choice([1, 2, 4, 6]))

    def _draw_workload(self) -> dict[TxId, TxnPlan]:
        plans: dict[TxId, TxnPlan] = {}
        self.work: dict[TxId, dict[NodeName, tuple[Write, ...]]] = {}
        for i in range(1, self.params.transactions + 1):
            txid = TxId(f"t{i}")
            k = self.rng.randint(min(2, len(self.names)), len(self.names))
            members = sorted(self.rng.sample(self.names, k))
            marker, value = f"marker/{txid}", txid.encode()
            work: dict[NodeName, tuple[Write, ...]] = {}
            for p in members:
                writes = [Write(marker, value)]
                if self.rng.random() < 0.3:
                    writes.append(Write(HOT_KEY, value))
                if self.rng.random() < 0.08:  # a business rule that fails here: vote ABORT
                    writes.append(Write("balance", b"x", expect=b"enough", check=True))
                work[p] = tuple(writes)
            plans[txid] = TxnPlan(txid, tuple(members), marker, value)
            self.work[txid] = work
        return plans

    def _draw_faults(self) -> list[_Fault]:
        r, p = self.rng, self.params
        faults: list[_Fault] = []
        for _ in range(r.randint(p.min_faults, p.max_faults)):
            kind = r.choices(["crash", "isolate", "store-down"], [6, 2, 1 if p.use_store else 0])[0]
            node = r.choice([COORD, COORD, *self.names])
            faults.append(_Fault(r.randrange(0, p.ticks - 10), kind, node, r.randint(3, 40),
                                 r.randrange(0, 8)))
        faults.sort(key=lambda f: f.at)
        self.report.faults = [f"{f.kind} {f.node if f.kind != 'store-down' else STORE} "
                              f"@{f.at} for {f.duration}" for f in faults]
        return faults

    # ------------------------------------------------------------------ running

    def run(self) -> SimReport:
        """The faulty phase, then heal and converge; check everything at the end."""
        self.advance(self.params.ticks - self.now)
        return self.heal_and_converge()

    def advance(self, ticks: int) -> None:
        """Run `ticks` ticks with the current faults (scripted tests call this directly)."""
        for _ in range(max(0, ticks)):
            self._step()
            self.now += 1

    def heal_and_converge(self) -> SimReport:
        self._heal()
        for _ in range(self.params.convergence_ticks):
            self._step()
            self.now += 1
            if self._converged():
                break
        else:
            raise self.checker.fail(f"no convergence within {self.params.convergence_ticks} "
                                    f"healed ticks: {self._stuck()}")
        self.report.ticks = self.now
        self._final()
        return self.report

    def _step(self) -> None:
        now = self.now
        while self.faults and self.faults[0].at <= now:
            self._inject(self.faults.pop(0))
        for name, node in self.nodes.items():
            if node.core is None and now >= node.restart_at:
                self._start(name)
            elif node.core is not None and node.crash_after is not None and now >= node.crash_limit:
                self._crash(node, "crash (idle)")
        self._begin_due()
        for src, dst, env in self.net.due(now):
            self._deliver(src, dst, env)
        for node in self.nodes.values():
            if node.core is not None and node.core.next_wakeup() <= now:
                self._run(node, node.core.tick(now))

    def _begin_due(self) -> None:
        coord = self.nodes[COORD]
        for txid, at in list(self.begin_at.items()):
            if at > self.now or not isinstance(coord.core, Coordinator):
                continue
            self._run(coord, coord.core.begin(txid, self.work[txid], self.now))
            # Begun once BEGIN is durable; else (crashed first) the client asks again.
            if any(isinstance(r, BeginRecord) and r.txid == txid
                   for r in coord.log.durable_records()):
                del self.begin_at[txid]
                self.begun.append(txid)

    def _deliver(self, src: NodeName, dst: NodeName, env: Envelope) -> None:
        body = env.body
        if dst == STORE:
            if self.now < self.store_down_until or not isinstance(body, StoreAsk):
                return
            clock = self.store_clock
            if self.tracer is not None:
                self.tracer.receive(STORE, src, _store_label(body), clock.observe(env.stamp),
                                    ref=env.stamp)
            decision = self.store.decide_now(body.txid, body.proposal)
            self.checker.on_decision(body.txid, decision, "the decision store", self._logs())
            stamp = clock.tick()
            if self.tracer is not None:
                self.tracer.send(STORE, src, f"{decision.name} {body.txid}", stamp, reply=True)
            self._net_send(STORE, body.asker, Envelope(stamp, StoreReply(body.txid, decision)))
            return
        node = self.nodes[dst]
        if node.core is None or self._cut(src, dst):
            return
        stamp = node.clock.observe(env.stamp)
        core = node.core
        was_undecided = isinstance(core, Participant) and _undecided(core, body.txid)
        if isinstance(body, StoreReply):
            self._trace_receive(node, src, f"{body.decision.name} {body.txid}", stamp, env.stamp)
            self._run(node, core.store_answer(body.txid, body.decision, self.now))
        elif not isinstance(body, StoreAsk):
            self._trace_receive(node, src, label_of(body), stamp, env.stamp)
            self._run(node, core.receive(body, self.now))
        if was_undecided and isinstance(node.core, Participant) and node.core.decision(body.txid):
            if isinstance(body, StoreReply):
                self.report.learned_from_store += 1
            elif src != COORD:
                self.report.learned_from_peers += 1

    def _run(self, node: _Node, effects: list[Effect]) -> None:
        for eff in effects:
            if node.crash_after is not None:
                if node.crash_after == 0:
                    self._crash(node, "crash")
                    return
                node.crash_after -= 1
            if isinstance(eff, Checkpoint):
                if node.crash_step is eff.step:
                    self._crash(node, f"crash at {eff.step.value}")
                    return
                continue
            self._execute(node, eff)

    def _execute(self, node: _Node, eff: Effect) -> None:
        if isinstance(eff, Persist):
            node.log.append(eff.record, eff.writes, sync=eff.sync)
            self._trace_note(node, persist_note(eff))
            self.checker.on_persist(node.name, eff.record, self._logs())
        elif isinstance(eff, Send):
            stamp = node.clock.tick()
            self._trace_send(node, eff.to, label_of(eff.msg), stamp)
            self.report.messages += 1
            self._net_send(node.name, eff.to, Envelope(stamp, eff.msg))
        elif isinstance(eff, ResolveDecision):
            stamp = node.clock.tick()
            self.report.store_asks += 1
            ask = StoreAsk(eff.txid, eff.proposal, node.name)
            self._trace_send(node, STORE, _store_label(ask), stamp)
            self._net_send(node.name, STORE, Envelope(stamp, ask))

    def _net_send(self, src: NodeName, dst: NodeName, env: Envelope) -> None:
        if not self._cut(src, dst):
            self.net.send(self.now, src, dst, env)

    def _cut(self, src: NodeName, dst: NodeName) -> bool:
        return any(self.isolated.get(n, -1) > self.now for n in (src, dst))

    # ------------------------------------------------------------------ faults

    def _inject(self, fault: _Fault) -> None:
        self.checker.events.append(f"t={self.now} fault {fault.kind} {fault.node}")
        if fault.kind == "store-down":
            self.store_down_until = max(self.store_down_until, self.now + fault.duration)
        elif fault.kind == "isolate":
            self.isolated[fault.node] = max(self.isolated.get(fault.node, -1),
                                            self.now + fault.duration)
        else:
            node = self.nodes[fault.node]
            node.crash_after = fault.skip
            node.crash_limit = self.now + 15
            node.down_for = fault.duration

    def arm_crash_at_step(self, name: NodeName, step: Step, down_for: int) -> None:
        """Scripted fault: crash `name` when it reaches checkpoint `step` (once)."""
        node = self.nodes[name]
        node.crash_step = step
        node.down_for = down_for

    def _crash(self, node: _Node, why: str) -> None:
        self.report.crashes += 1
        self.checker.events.append(f"t={self.now} {why}: {node.name}")
        self._trace_note(node, f"CRASH ({why})")
        node.log.crash()
        node.core = None
        node.crash_after = None
        node.crash_step = None
        node.restart_at = self.now + max(1, node.down_for)
        if self.healed:
            node.restart_at = self.now + 1

    def _start(self, name: NodeName) -> None:
        node = self.nodes[name]
        records = node.log.records()
        core: Coordinator | Participant
        if name == COORD:
            core, effects = Coordinator.recover(name, self.config, records, self.now)
        else:
            core, effects = self._factory.recover(name, self.config, records,
                                                  node.log.data(), self.now)
        node.core = core
        if records:
            self._trace_note(node, f"RECOVER from {len(records)} log records")
            self.checker.events.append(f"t={self.now} restart {name}")
        self._run(node, effects)

    def _heal(self) -> None:
        self.healed = True
        self.net.config = NetConfig(min_delay=1, max_delay=2)
        self.net.heal()
        self.isolated.clear()
        self.store_down_until = -1
        for node in self.nodes.values():
            node.crash_after = None
            node.crash_step = None
            if node.core is None:
                node.restart_at = min(node.restart_at, self.now)
        for txid in self.begin_at:
            self.begin_at[txid] = min(self.begin_at[txid], self.now)

    # ------------------------------------------------------------------ the end

    def _converged(self) -> bool:
        coord = self.nodes[COORD].core
        if self.begin_at or not isinstance(coord, Coordinator):
            return False
        if coord.next_wakeup() != float("inf"):  # some transaction has not ENDED
            return False
        return all(isinstance(n.core, Participant) and not n.core.undecided()
                   for n in self.nodes.values() if n.name != COORD)

    def _stuck(self) -> str:
        parts = {n.name: n.core.undecided() for n in self.nodes.values()
                 if isinstance(n.core, Participant) and n.core.undecided()}
        coord = self.nodes[COORD].core
        open_txns = coord.transactions() if isinstance(coord, Coordinator) else "down"
        return f"not begun {sorted(self.begin_at)}; coordinator {open_txns}; undecided {parts}"

    def _final(self) -> None:
        coord = self.nodes[COORD].core
        assert isinstance(coord, Coordinator)
        parts = {n: c for n in self.names if isinstance(c := self.nodes[n].core, Participant)}
        self.checker.final(coord, parts, self._logs(), self.begun)
        for txid in self.begun:
            if coord.decision(txid) is Decision.COMMIT:
                self.report.committed += 1
            else:
                self.report.aborted += 1

    def _logs(self) -> dict[NodeName, MemoryLog]:
        return {name: node.log for name, node in self.nodes.items()}

    # ------------------------------------------------------------------ tracing

    def _trace_send(self, node: _Node, to: NodeName, label: str, stamp: int) -> None:
        self.checker.events.append(f"t={self.now} {node.name}->{to} {label}")
        if self.tracer is not None:
            self.tracer.send(node.name, to, label, stamp, reply=node.name != COORD)

    def _trace_receive(self, node: _Node, src: NodeName, label: str, stamp: int,
                       ref: int) -> None:
        if self.tracer is not None:
            self.tracer.receive(node.name, src, label, stamp, ref=ref)

    def _trace_note(self, node: _Node, text: str) -> None:
        self.checker.events.append(f"t={self.now} {node.name}: {text}")
        if self.tracer is not None:
            self.tracer.note(node.name, text, node.clock.tick())


def _store_label(ask: StoreAsk) -> str:
    return f"CAS {ask.txid} {ask.proposal.name} if empty"


def _undecided(core: Participant, txid: TxId) -> bool:
    state = core.state(txid)
    return state is not None and undecided(state)




def run_twopc_sim(seed: int, **kw: object) -> SimReport:
    """Run one seeded simulation (raises SafetyViolation naming the seed)."""
    return TwoPcSim(SimParams(seed, **kw)).run()  # type: ignore[arg-type]
