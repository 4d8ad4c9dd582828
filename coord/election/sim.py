"""A deterministic simulator for the Bully and Ring elections under seeded faults.

One seed fixes everything: message delays (`coord.sim.network.SimNetwork`),
the failure detectors' lags, and the fault plan.  Faults:

* crash: a node stops; messages to it are lost (a sender to a node that is
  down at send time may be told so, as a refused connection would: the Ring
  core's `send_failed`);
* restart: a crashed node comes back as a fresh core that holds an election;
* pause: a node stops taking steps (a stopped process, a long GC): messages
  to it wait and are delivered when it resumes; the others suspect it;
* false suspicion: one node's detector suspects a live peer for a while;
* delay spike: for a while every message takes up to `spike` ticks (more
  than the cores' timeouts, so answers arrive after their senders gave up);
* message loss (`NetConfig.drop`: off in `SimParams()`, 5 % in `LOSSY`):
  every message, protocol or claim, is lost with that probability for the
  whole run, the checked stretch after the last fault included.

The sitting coordinator's re-announcement rides on the heartbeats a real
driver sends (`Heartbeat.coordinator`).  The detector is modelled by its
outcome, so plain heartbeats are not simulated, but the marked ones are:
every `claim_every` ticks each node whose core names itself leader sends a
claim to every other node over the same lossy, delaying network, and the
receiver's core gets `claim`.  Claims are counted apart (`claims`), never
in `messages`: on the wire they are heartbeats the detector sends anyway.
`claim_every=None` switches the repair off (the planted weakness).

The failure detector is modelled by its outcome: after a node goes down (or
comes back), each observer changes its opinion after its own random lag in
[det_min, det_max] ticks; false suspicions are laid on top.  A paused
observer catches up when it resumes; a restarted one starts trusting
everyone and learns who is down after its lag.

The property checked (`check`): from `last_fault + bound` to the end of the
run, every live node names the highest live id as leader.  `last_fault` is
the end of the last fault (a pause's resume, a suspicion's end, a spike's
end, or the instant of a crash/restart).  `settled_at` reports when
agreement really began, so tests measure how tight the bound is.

Invariants: the same (algo, seed, params) always produce the same report;
time is an integer tick; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from coord.clock.lamport import LamportClock
from coord.election.bully import BullyNode
from coord.election.messages import (
    ElectionMessage,
    Heartbeat,
    RingCoordinator,
    RingElection,
    label,
)
from coord.election.ring import RingNode
from coord.election.types import ElectionConfig, LeaderChanged, NodeId, Send
from coord.sim.network import NetConfig, SimNetwork
from coord.trace import TraceRecorder

Core = BullyNode | RingNode
Wire = ElectionMessage | Heartbeat  # a protocol message, or a heartbeat carrying a claim
CoreFactory = Callable[[NodeId, list[NodeId], ElectionConfig, int], Core]

#: Timeouts in ticks; a message normally takes 1..3 ticks.
SIM_CONFIG = ElectionConfig(ok_timeout=10, coordinator_timeout=30, ring_timeout=40)
NORMAL_NET = NetConfig(min_delay=1, max_delay=3)
LOSSY_NET = NetConfig(min_delay=1, max_delay=3, drop=0.05)


def bully_factory(me: NodeId, ids: list[NodeId], cfg: ElectionConfig, first: int) -> Core:
    return BullyNode(me, ids, cfg, first_round=first)


def ring_factory(me: NodeId, ids: list[NodeId], cfg: ElectionConfig, first: int) -> Core:
    return RingNode(me, ids, cfg, first_round=first)


FACTORIES: dict[str, CoreFactory] = {"bully": bully_factory, "ring": ring_factory}


@dataclass(frozen=True, slots=True)
class SimParams:
    nodes: int = 5
    min_faults: int = 3
    max_faults: int = 6
    fault_window: int = 300  # faults start in [10, fault_window]
    det_min: int = 3  # failure detector lag, ticks
    det_max: int = 20
    spike: int = 40  # max delay during a delay spike
    # Ticks after the last fault by which all live nodes must agree: detectors
    # settle (det_max), messages delayed by a spike land (spike), then at most
    # two timed-out attempts (2 x the longest wait) and one election of 2n
    # hops at 3 ticks (docs/election.md derives it).  170 with the defaults.
    bound: int = 170
    tail: int = 60  # ticks checked after the bound (agreement must hold throughout)
    config: ElectionConfig = SIM_CONFIG
    net: NetConfig = NORMAL_NET  # delays (outside delay spikes) and loss
    # A self-named leader's heartbeat claim, every this many ticks (a real
    # driver's heartbeat_every is 0.2 s against an ok_timeout of 0.5 s: 4
    # ticks; 10 is slower, so the bound is not won by chatter).  None: off.
    claim_every: int | None = 10


#: The lossy sweep: the same faults, and 5 % of all messages (and claims) lost
#: for the whole run.  Loss never stops, so every election attempt may fail
#: and no bound is certain: a Ring election (2n hops) fails with
#: probability 1 - 0.95^10 = 0.4.  The budget is the reliable one plus two
#: more lost Ring attempts (2 x ring_timeout); docs/election.md has the figures.
LOSSY = SimParams(net=LOSSY_NET, bound=250)

FaultKind = Literal["crash", "restart", "pause", "suspect", "spike"]
TimerKind = Literal["detect", "fault", "resume", "unsuspect", "calm", "failed"]


@dataclass(frozen=True, slots=True)
class Fault:
    at: int
    kind: FaultKind
    node: NodeId
    peer: NodeId | None = None  # suspect: the falsely suspected peer
    length: int = 0  # pause / suspect / spike duration

    def end(self) -> int:
        return self.at + self.length


@dataclass(slots=True)
class SimReport:
    algo: str
    seed: int
    faults: list[Fault]
    last_fault: int
    settled_at: int | None  # first tick from which all live nodes agreed till the end
    violations: list[str]
    messages: int  # protocol messages sent
    leader_changes: int
    live: list[NodeId]
    leaders: dict[NodeId, NodeId | None]
    trace: TraceRecorder | None = None
    claims: int = 0  # heartbeat claims sent (not protocol messages)
    dropped: int = 0  # messages and claims lost by the network's drop probability

    def convergence(self) -> int | None:
        """Ticks from the last fault to lasting agreement (None: never agreed)."""
        return None if self.settled_at is None else max(0, self.settled_at - self.last_fault)


@dataclass(order=True, slots=True)
class _Timed:
    at: int
    seq: int
    what: TimerKind = field(compare=False)
    a: NodeId = field(compare=False)
    b: NodeId | None = field(compare=False, default=None)
    payload: object = field(compare=False, default=None)


class ElectionSim:
    """One simulated cluster running one algorithm; `run()` plays a fault plan."""

    def __init__(self, algo: str, seed: int, params: SimParams | None = None, *,
                 factory: CoreFactory | None = None, trace: bool = False) -> None:
        self.algo, self.seed = algo, seed
        self.p = params or SimParams()
        self.rng = random.Random(seed)
        self.factory = factory or FACTORIES[algo]
        self.ids = [NodeId(i) for i in range(1, self.p.nodes + 1)]
        self.net: SimNetwork[NodeId, tuple[int, Wire]] = SimNetwork(self.rng, self.p.net)
        self.now = 0
        self.cores: dict[NodeId, Core] = {}  # the live (possibly paused) nodes
        self.paused: dict[NodeId, list[tuple[int, Wire]]] = {}  # held inboxes
        self.incarnation: dict[NodeId, int] = dict.fromkeys(self.ids, 0)
        self.opinion: dict[NodeId, set[NodeId]] = {i: set() for i in self.ids}
        self.false: dict[NodeId, set[NodeId]] = {i: set() for i in self.ids}  # forced
        self.timers: list[_Timed] = []
        self._seq = 0
        self.messages = 0  # protocol messages sent (claims are not among them)
        self.claims = 0  # heartbeat claims sent by self-named leaders
        self.leader_changes = 0
        self.clocks = {i: LamportClock() for i in self.ids}
        self.recorder = TraceRecorder() if trace else None

    # ------------------------------------------------------------------ plumbing

    def _at(self, at: int, what: TimerKind, a: NodeId, b: NodeId | None = None,
            payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self.timers, _Timed(at, self._seq, what, a, b, payload))

    def down(self, node: NodeId) -> bool:
        return node not in self.cores or node in self.paused

    def _lag(self) -> int:
        return self.rng.randint(self.p.det_min, self.p.det_max)

    def _apply(self, node: NodeId, effects: list[object]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self._send(node, eff.to, eff.msg)
            elif isinstance(eff, LeaderChanged):
                self.leader_changes += 1
                self._note(node, f"leader {eff.leader}")

    def _send(self, src: NodeId, dst: NodeId, msg: ElectionMessage) -> None:
        self.messages += 1
        stamp = self.clocks[src].tick()
        if self.recorder is not None:
            self.recorder.send(str(src), str(dst), label(msg), stamp)
        if dst not in self.cores and self.rng.random() < 0.5:
            # A refused connection: the sender learns at once that dst is down.
            self._at(self.now + 1, "failed", src, dst, msg)
        self.net.send(self.now, src, dst, (stamp, msg))

    def _claim(self) -> None:
        """Every node that names itself leader re-announces itself on its heartbeats."""
        for node, core in self.cores.items():
            if node in self.paused or core.leader != node:
                continue
            beat = Heartbeat(node, coordinator=True)
            for dst in self.ids:
                if dst != node:
                    self.claims += 1
                    # Heartbeats carry no Lamport stamp; 0 leaves the receiver's clock be.
                    self.net.send(self.now, node, dst, (0, beat))

    def _note(self, node: NodeId, text: str) -> None:
        if self.recorder is not None:
            self.recorder.note(str(node), text, self.clocks[node].tick())

    # ------------------------------------------------------------------ events

    def start(self, node: NodeId, *, elect: bool = True) -> None:
        """Bring `node` up as a fresh core; `elect`: hold an election at once (a restart does)."""
        self.incarnation[node] += 1
        core = self.factory(node, self.ids, self.p.config, self.incarnation[node] * 100_000)
        self.cores[node] = core
        self.opinion[node] = set()
        for peer in self.ids:
            if peer != node:
                self._at(self.now + self._lag(), "detect", node, peer)
        if elect:
            self._apply(node, list(core.start_election(self.now)))

    def elect(self, node: NodeId) -> None:
        """`node` holds an election now (as if it had just found the leader gone)."""
        self._apply(node, list(self.cores[node].start_election(self.now)))

    def deliver(self, dst: NodeId, stamp: int, msg: Wire) -> None:
        core = self.cores.get(dst)
        if core is None:
            return  # lost with the crashed node
        if dst in self.paused:
            self.paused[dst].append((stamp, msg))
            return
        if isinstance(msg, Heartbeat):
            effects: list[object] = list(core.claim(msg.sender, self.now))
            if effects:
                self._note(dst, f"coordinator claim from {msg.sender}")
            self._apply(dst, effects)
            return
        t = self.clocks[dst].observe(stamp)
        if self.recorder is not None:
            self.recorder.receive(str(dst), str(msg.sender), label(msg), t, ref=stamp)
        if isinstance(core, BullyNode):
            assert not isinstance(msg, RingElection | RingCoordinator)
            self._apply(dst, list(core.step(msg, self.now)))
        else:
            assert isinstance(msg, RingElection | RingCoordinator)
            self._apply(dst, list(core.step(msg, self.now)))

    def detect(self, observer: NodeId, peer: NodeId) -> None:
        """Bring `observer`'s opinion of `peer` in line with the truth (plus forced lies)."""
        core = self.cores.get(observer)
        if core is None:
            return
        if observer in self.paused:
            return  # resume() re-schedules every check
        want = self.down(peer) or peer in self.false[observer]
        have = peer in self.opinion[observer]
        if want and not have:
            self.opinion[observer].add(peer)
            self._note(observer, f"suspect {peer}")
            self._apply(observer, list(core.suspect(peer, self.now)))
        elif have and not want:
            self.opinion[observer].discard(peer)
            self._note(observer, f"trust {peer}")
            self._apply(observer, list(core.recover(peer, self.now)))

    def _transition(self, node: NodeId) -> None:
        """`node` went down or came up: every observer notices after its lag."""
        for o in self.ids:
            if o != node:
                self._at(self.now + self._lag(), "detect", o, node)

    def fault(self, f: Fault) -> None:
        n = f.node
        if f.kind == "crash" and n in self.cores:
            self._note(n, "crash")
            del self.cores[n]
            self.paused.pop(n, None)
            self._transition(n)
        elif f.kind == "restart" and n not in self.cores:
            self.start(n)
            self._note(n, "restart")
            self._transition(n)
        elif f.kind == "pause" and n in self.cores and n not in self.paused:
            self._note(n, "pause")
            self.paused[n] = []
            self._transition(n)
            self._at(f.end(), "resume", n)
        elif f.kind == "suspect" and f.peer is not None:
            self.false[n].add(f.peer)
            self._at(self.now, "detect", n, f.peer)
            self._at(f.end(), "unsuspect", n, f.peer)
        elif f.kind == "spike":
            self.net.config = replace(self.p.net, max_delay=self.p.spike)
            self._at(f.end(), "calm", n)

    def resume(self, node: NodeId) -> None:
        held = self.paused.pop(node, None)
        if held is None or node not in self.cores:
            return
        self._note(node, "resume")
        self._transition(node)
        for stamp, msg in held:
            self.deliver(node, stamp, msg)
        for peer in self.ids:
            if peer != node:
                self._at(self.now + self.rng.randint(0, self.p.det_min), "detect", node, peer)

    def _fire(self, t: _Timed) -> None:
        if t.what == "detect" and t.b is not None:
            self.detect(t.a, t.b)
        elif t.what == "fault":
            assert isinstance(t.payload, Fault)
            self.fault(t.payload)
        elif t.what == "resume":
            self.resume(t.a)
        elif t.what == "unsuspect" and t.b is not None:
            self.false[t.a].discard(t.b)
            self._at(self.now, "detect", t.a, t.b)
        elif t.what == "calm":
            self.net.config = self.p.net
        elif t.what == "failed" and t.b is not None:
            core = self.cores.get(t.a)
            msg = t.payload
            if isinstance(core, RingNode) and t.a not in self.paused and isinstance(
                    msg, RingElection | RingCoordinator):
                self._note(t.a, f"send to {t.b} failed")
                self._apply(t.a, list(core.send_failed(msg, t.b, self.now)))

    def step_tick(self) -> None:
        """Everything due at `self.now`: timers, deliveries, then core timeouts."""
        while self.timers and self.timers[0].at <= self.now:
            self._fire(heapq.heappop(self.timers))
        for _src, dst, (stamp, msg) in self.net.due(self.now):
            self.deliver(dst, stamp, msg)
        if self.p.claim_every is not None and self.now % self.p.claim_every == 0:
            self._claim()
        for node, core in list(self.cores.items()):
            deadline = core.next_deadline()
            if node not in self.paused and deadline is not None and deadline <= self.now:
                self._apply(node, list(core.tick(self.now)))

    # ------------------------------------------------------------------ plan + check

    def plan(self) -> list[Fault]:
        """3..6 faults; at least one node stays up (a crash never takes the last one)."""
        rng, p = self.rng, self.p
        k = rng.randint(p.min_faults, p.max_faults)
        times = sorted(rng.randint(10, p.fault_window) for _ in range(k))
        crashed: set[NodeId] = set()
        out: list[Fault] = []
        for at in times:
            up = [i for i in self.ids if i not in crashed]
            kinds: list[FaultKind] = ["pause", "suspect", "spike"]
            if len(up) > 1:
                kinds += ["crash", "crash"]
            if crashed:
                kinds += ["restart", "restart"]
            kind = rng.choice(kinds)
            if kind == "crash":
                # Half the time the highest live node: the coordinator, usually.
                n = max(up) if rng.random() < 0.5 else rng.choice(up)
                crashed.add(n)
                out.append(Fault(at, "crash", n))
            elif kind == "restart":
                n = max(crashed) if rng.random() < 0.5 else rng.choice(sorted(crashed))
                crashed.discard(n)
                out.append(Fault(at, "restart", n))
            elif kind == "suspect":
                a, b = rng.sample(self.ids, 2)
                out.append(Fault(at, "suspect", a, b, rng.randint(5, 80)))
            else:
                out.append(Fault(at, kind, rng.choice(self.ids), None, rng.randint(10, 80)))
        return out

    def agreed(self) -> bool:
        live = sorted(self.cores)
        top = max(live)
        return all(self.cores[n].leader == top for n in live) and not self.paused

    def begin(self, faults: list[Fault], starters: list[NodeId] | None = None) -> None:
        """Schedule `faults`, start every node; `starters` hold an election (default: all)."""
        for f in faults:
            self._at(f.at, "fault", f.node, None, f)
        for n in self.ids:
            self.start(n, elect=False)
        for n in self.ids:  # every node is listening before the first message
            if starters is None or n in starters:
                self.elect(n)

    def _next_tick(self, limit: int) -> int:
        """The next tick (at most `limit`) at which anything can happen.

        The ticks skipped would change nothing and draw no random number
        (no timer, delivery, core deadline or claim is due), so skipping
        them gives exactly the run that stepping every tick gives.
        """
        if self.net.in_flight():
            return self.now + 1  # SimNetwork does not say when its next message is due
        nxt = limit
        if self.timers:
            nxt = min(nxt, self.timers[0].at)
        for node, core in self.cores.items():
            deadline = core.next_deadline()
            if deadline is not None and node not in self.paused:
                nxt = min(nxt, math.ceil(deadline))
        if self.p.claim_every is not None:
            nxt = min(nxt, (self.now // self.p.claim_every + 1) * self.p.claim_every)
        return max(nxt, self.now + 1)

    def advance(self, until: int) -> None:
        """Run every tick up to and including `until`."""
        while self.now <= until:
            self.step_tick()
            self.now = self._next_tick(until + 1)

    def run(self, faults: list[Fault] | None = None,
            starters: list[NodeId] | None = None) -> SimReport:
        plan = self.plan() if faults is None else faults
        self.begin(plan, starters)
        last = max((f.end() for f in plan), default=0)
        horizon = last + self.p.bound + self.p.tail
        settled: int | None = None
        violations: list[str] = []
        deadline = last + self.p.bound  # agreement is required from here on
        while self.now <= horizon:
            self.step_tick()
            # The views hold still until the next tick with something to do;
            # stop at `last` and `deadline` too, where the checking changes.
            marks = [t for t in (last, deadline) if t > self.now]
            nxt = self._next_tick(min(marks, default=horizon + 1))
            if self.now >= last:
                ok = self.agreed()
                settled = (settled if settled is not None else self.now) if ok else None
                if not ok and nxt - 1 >= deadline:
                    violations.append(self._describe())
            self.now = nxt
        live = sorted(self.cores)
        return SimReport(self.algo, self.seed, plan, last, settled, violations[:3],
                         self.messages, self.leader_changes, live,
                         {n: self.cores[n].leader for n in live}, self.recorder,
                         self.claims, self.net.stats.dropped)

    def _describe(self) -> str:
        views = {n: self.cores[n].leader for n in sorted(self.cores)}
        return (f"{self.algo} seed {self.seed} t={self.now}: live nodes' leaders {views}, "
                f"highest live {max(self.cores)}")


def run_election_sim(algo: str, seed: int, params: SimParams | None = None, *,
                     factory: CoreFactory | None = None, trace: bool = False,
                     faults: list[Fault] | None = None,
                     starters: list[NodeId] | None = None) -> SimReport:
    """Replay one seeded run (`faults` overrides the seeded plan)."""
    return ElectionSim(algo, seed, params, factory=factory, trace=trace).run(faults, starters)
