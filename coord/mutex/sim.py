"""Seeded simulations of the three mutual-exclusion algorithms under faults.

One run: n nodes each running one core for lock "L", a seeded `SimNetwork`
(delays 1..max_delay ticks, so messages reorder), a workload (every idle
node asks for the lock with some probability per tick, holds it a few ticks
and writes to the protected resource on every tick inside), and at least
three faults drawn from the run's seed:

* crash     the node stops for good (its messages are lost);
* pause     the node freezes (no ticks, messages held until it resumes) for
            longer than a lease: the others suspect it, falsely; on resuming
            a holder first makes one write *without* re-checking its lease
            (a process paused between its check and its write);
* suspect   one node's failure detector suspects a healthy peer for a while.

The failure detector is an oracle with the shape of a heartbeat detector: a
node suspects a peer that has not run for `fd_timeout` ticks (or during an
injected false suspicion) and trusts it again when it runs.  With `elect`,
each node also runs coord.election's Bully core (stepped with its messages
over the same network, its deadlines and the detector's transitions) and the
centralized coordinator / ring regenerator is whoever it names.

Checked on every tick (a breach raises `SafetyViolation` naming the seed):
* no two nodes (crashed ones excepted) hold unexpired grants at once;
* fencing works: the resource (a `FencingGuard`) never accepts a write of
  an entry once a later entry has written (so grant tokens must grow in
  entry order; a stale holder's write is refused);
* token ring: at most one node holds a token of the newest epoch.
After the faults a quiet period checks liveness: no live node is still
waiting at the end for a request made LIVENESS_WAIT ticks before (and since
the faults stop at least that long before the end, some or all of its wait
was fault-free), and (ring) every token seen is of one epoch.

Invariant: one seed gives one run, step for step (all randomness comes from
one `random.Random(seed)`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coord.election import BullyNode, ElectionConfig, LeaderChanged
from coord.election import NodeId as ElectionId
from coord.lease.fencing import FenceAccepted, FencingGuard
from coord.lease.types import FencingToken, ResourceId
from coord.mutex.centralized import Centralized
from coord.mutex.elected import (
    ElectedLeader,
    bully_for,
    election_effects,
    is_bully,
    message_label,
)
from coord.mutex.messages import RingToken
from coord.mutex.ricart import RicartAgrawala
from coord.mutex.ring import TokenRing
from coord.mutex.types import (
    Effect,
    Enter,
    LeaderView,
    LockName,
    MutexConfig,
    MutexCore,
    NodeId,
    Send,
)
from coord.sim.network import NetConfig, SimNetwork

ALGORITHMS = ("centralized", "ricart-agrawala", "token-ring")
LIVENESS_WAIT = 150  # ticks a live node may wait after the faults (the quiet period's length)
LOCK = LockName("L")
RESOURCE = ResourceId("resource")
SIM_ELECTION = ElectionConfig(ok_timeout=8.0, coordinator_timeout=20.0, ring_timeout=40.0)
SIM_CONFIG = MutexConfig(lease=40.0, epsilon=1.0, max_delay=3.0, loss_timeout=60.0,
                         idle_pass=2.0, request_retry=80.0, pause_gap=1.5)

CoreFactory = Callable[[NodeId, Sequence[NodeId], MutexConfig], MutexCore]


class SafetyViolation(AssertionError):
    """A run broke mutual exclusion or fencing; the message names the seed."""


def make_core(algo: str, me: NodeId, nodes: Sequence[NodeId], config: MutexConfig,
              now: float = 0.0, view: LeaderView | None = None) -> MutexCore:
    if algo == "centralized":
        return Centralized(me, nodes, LOCK, config, view)
    if algo == "ricart-agrawala":
        return RicartAgrawala(me, nodes, LOCK, config)
    if algo == "token-ring":
        return TokenRing(me, nodes, LOCK, config, view, now=now)
    raise ValueError(f"unknown algorithm {algo!r} (one of {', '.join(ALGORITHMS)})")


@dataclass(frozen=True, slots=True)
class SimParams:
    nodes: int = 5
    ticks: int = 700
    fault_window: float = 0.45  # faults start within this fraction of the run
    faults: tuple[int, int] = (3, 5)
    want_chance: float = 0.25
    hold: tuple[int, int] = (1, 4)
    fd_timeout: int = 8
    elect: bool = False  # the coordinator / regenerator from a Bully election (coord.election)
    config: MutexConfig = SIM_CONFIG
    net: NetConfig = field(default_factory=lambda: NetConfig(min_delay=1, max_delay=3))


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # "crash", "pause", "suspect"
    at: int
    node: NodeId
    length: int = 0  # pause / suspicion ticks
    peer: NodeId | None = None  # suspect: whom `node` suspects


@dataclass(slots=True)
class SimReport:
    seed: int
    algo: str
    faults: list[Fault]
    entries: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    rejected_writes: int = 0  # stale writes the resource refused (fencing at work)
    fenced_out: int = 0  # writes of the latest entrant refused (costs liveness only)
    late_entries: dict[NodeId, int] = field(default_factory=dict)  # entries after the faults


@dataclass(slots=True)
class _Node:
    core: MutexCore
    election: BullyNode | None = None
    crashed: bool = False
    paused_until: int = -1
    last_ran: int = 0
    backlog: list[object] = field(default_factory=list)
    release_at: int | None = None
    asked_at: int = -1  # when it last asked for the lock
    entered_at: int = -1  # when it last got in
    entry: int = 0  # the global number of this node's latest entry

    def running(self, now: int) -> bool:
        return not self.crashed and now >= self.paused_until


class MutexSim:
    def __init__(self, seed: int, algo: str, params: SimParams = SimParams(), *,
                 factory: CoreFactory | None = None) -> None:
        self.seed, self.algo, self.p = seed, algo, params
        self.rng = random.Random(seed)
        self.ids = [NodeId(i) for i in range(1, params.nodes + 1)]
        self.nodes = {i: self._make_node(i, factory) for i in self.ids}
        self.net: SimNetwork[NodeId, object] = SimNetwork(random.Random(seed ^ 0x5EED),
                                                          params.net.validate())
        self.guard = FencingGuard()
        self.entries_made = 0  # entries so far; each entry's number is its index
        self.newest_written = 0  # the latest entry whose write the resource accepted
        self.opinion: set[tuple[NodeId, NodeId]] = set()  # (observer, suspected)
        self.false: dict[tuple[NodeId, NodeId], int] = {}  # injected suspicion until
        self.report = SimReport(seed, algo, self._draw_faults())
        self.quiet_from = max((f.at + f.length for f in self.report.faults), default=0) + 60
        self.late_epochs: set[object] = set()

    def _make_node(self, i: NodeId, factory: CoreFactory | None) -> _Node:
        if factory is not None:
            return _Node(factory(i, self.ids, self.p.config))
        if not self.p.elect:
            return _Node(make_core(self.algo, i, self.ids, self.p.config))
        election = bully_for(i, self.ids, SIM_ELECTION)
        view = ElectedLeader(election, max(self.ids))
        return _Node(make_core(self.algo, i, self.ids, self.p.config, view=view), election)

    def _elect(self, i: NodeId, effects: Sequence[object], now: int) -> None:
        self._run(i, election_effects(effects), now)
        if any(isinstance(e, LeaderChanged) for e in effects):
            self._run(i, self.nodes[i].core.tick(now), now)

    # ------------------------------------------------------------------ faults

    def _draw_faults(self) -> list[Fault]:
        p, rng = self.p, self.rng
        count = rng.randint(*p.faults)
        last = int(p.ticks * p.fault_window)
        crashes_left = max(1, (p.nodes - 1) // 2)  # keep a majority of the nodes alive
        out: list[Fault] = []
        kinds = ["pause", "suspect", "crash"]  # every run gets at least one false suspicion
        for i in range(count):
            kind = kinds[i] if i < len(kinds) else rng.choice(kinds)
            if kind == "crash":
                if crashes_left == 0:
                    kind = "pause"
                crashes_left -= kind == "crash"
            node = NodeId(rng.randint(1, p.nodes))
            at = rng.randint(10, last)
            if kind == "pause":
                out.append(Fault("pause", at, node, rng.randint(30, 120)))
            elif kind == "suspect":
                peer = NodeId(rng.choice([n for n in range(1, p.nodes + 1) if n != node]))
                out.append(Fault("suspect", at, node, rng.randint(15, 90), peer))
            else:
                out.append(Fault("crash", at, node))
        return sorted(out, key=lambda f: f.at)

    def _apply_faults(self, now: int) -> None:
        for f in self.report.faults:
            if f.at != now:
                continue
            node = self.nodes[f.node]
            if f.kind == "crash":
                node.crashed = True
            elif f.kind == "pause" and node.running(now):
                node.paused_until = now + f.length
            elif f.kind == "suspect" and f.peer is not None:
                self.false[(f.node, f.peer)] = now + f.length

    # ------------------------------------------------------------------ failure detector

    def _detector(self, now: int) -> None:
        for i in self.ids:
            me = self.nodes[i]
            if not me.running(now):
                continue
            for j in self.ids:
                if j == i:
                    continue
                peer = self.nodes[j]
                silent = now - peer.last_ran > self.p.fd_timeout
                want = silent or self.false.get((i, j), -1) > now
                has = (i, j) in self.opinion
                if want and not has:
                    self.opinion.add((i, j))
                    if me.election is not None:
                        self._elect(i, me.election.suspect(ElectionId(j), now), now)
                    self._run(i, me.core.suspect(j, now), now)
                elif has and not want:
                    self.opinion.discard((i, j))
                    if me.election is not None:
                        self._elect(i, me.election.recover(ElectionId(j), now), now)
                    self._run(i, me.core.recover(j, now), now)

    # ------------------------------------------------------------------ the loop

    def run(self) -> SimReport:
        for i, node in self.nodes.items():
            if node.election is not None:
                self._elect(i, node.election.start_election(0), 0)
        for now in range(self.p.ticks):
            self._apply_faults(now)
            self._deliver(now)
            self._detector(now)
            for i in self.ids:
                self._step_node(i, now)
            self._check(now)
        self._check_liveness()
        return self.report

    def _deliver(self, now: int) -> None:
        for _src, dst, msg in self.net.due(now):
            node = self.nodes[dst]
            if node.crashed:
                continue
            if not node.running(now):
                node.backlog.append(msg)
                continue
            self._receive(dst, msg, now)

    def _receive(self, i: NodeId, msg: object, now: int) -> None:
        if isinstance(msg, RingToken) and now >= self.quiet_from + 100:
            self.late_epochs.add(msg.epoch)
        node = self.nodes[i]
        if is_bully(msg):
            if node.election is not None:
                self._elect(i, node.election.step(msg, now), now)
            return
        self._run(i, node.core.receive(msg, now), now)

    def _step_node(self, i: NodeId, now: int) -> None:
        node = self.nodes[i]
        if not node.running(now):
            return
        if node.paused_until == now:  # just resumed
            self._resumed(i, now)
        node.last_ran = now
        if node.election is not None:
            due = node.election.next_deadline()
            if due is not None and due <= now:
                self._elect(i, node.election.tick(now), now)
        core = node.core
        self._run(i, core.tick(now), now)
        grant = core.held
        if grant is not None:
            if node.release_at is not None and now >= node.release_at:
                node.release_at = None
                self._run(i, core.release(now), now)
            elif now < grant.expires_at:  # a correct holder checks its lease first
                self._write(i, grant.token, now)
        elif not core.wanting and self.rng.random() < self.p.want_chance:
            node.asked_at = now
            self._run(i, core.want(now), now)

    def _resumed(self, i: NodeId, now: int) -> None:
        node = self.nodes[i]
        grant = node.core.held
        if grant is not None:
            self._write(i, grant.token, now)  # paused between its lease check and this write
        backlog, node.backlog = node.backlog, []
        for msg in backlog:
            self._receive(i, msg, now)

    def _run(self, i: NodeId, effects: list[Effect], now: int) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                kind = message_label(eff.msg).split(" ", 1)[0]
                self.report.messages[kind] = self.report.messages.get(kind, 0) + 1
                self.net.send(now, i, eff.to, eff.msg)
            elif isinstance(eff, Enter):
                self.report.entries += 1
                if now >= self.quiet_from:
                    self.report.late_entries[i] = self.report.late_entries.get(i, 0) + 1
                self.entries_made += 1
                self.nodes[i].entry = self.entries_made
                self.nodes[i].entered_at = now
                self.nodes[i].release_at = now + self.rng.randint(*self.p.hold)

    # ------------------------------------------------------------------ checks

    def _fail(self, now: int, what: str) -> None:
        raise SafetyViolation(f"{self.algo} seed {self.seed} tick {now}: {what}; "
                              f"faults {self.report.faults}")

    def _write(self, i: NodeId, token: FencingToken, now: int) -> None:
        """A write by node i; it is stale if a later entrant already wrote."""
        entry = self.nodes[i].entry
        verdict = self.guard.check(RESOURCE, token)
        if isinstance(verdict, FenceAccepted):
            if entry < self.newest_written:
                self._fail(now, f"resource accepted token {token} of entry {entry} from "
                                f"node {i} after entry {self.newest_written} wrote")
            self.newest_written = entry
        elif entry == self.entries_made:
            self.report.fenced_out += 1  # the newest holder refused: a liveness cost only
        else:
            self.report.rejected_writes += 1

    def _check(self, now: int) -> None:
        holders = [i for i, n in self.nodes.items()
                   if not n.crashed and n.core.held is not None
                   and now < n.core.held.expires_at]
        if len(holders) > 1:
            self._fail(now, f"two unexpired holders {holders}")
        if isinstance(self.nodes[self.ids[0]].core, TokenRing):
            self._check_tokens(now)

    def _check_tokens(self, now: int) -> None:
        rings = [n.core for n in self.nodes.values() if isinstance(n.core, TokenRing)]
        newest = max(r.epoch for r in rings)
        holding = [r.me for r in rings if r.has_token and r.epoch == newest
                   and not self.nodes[r.me].crashed]
        if len(holding) > 1:
            self._fail(now, f"{len(holding)} tokens of epoch {newest}: {holding}")

    def _check_liveness(self) -> None:
        end = self.p.ticks - 1
        for i, n in self.nodes.items():
            # Waiting through LIVENESS_WAIT ticks, all or partly after the faults.
            stuck = n.core.wanting and n.entered_at < n.asked_at <= end - LIVENESS_WAIT
            if not n.crashed and stuck:
                self._fail(end, f"node {i} asked at tick {n.asked_at} and never got in")
        if len(self.late_epochs) > 1:
            self._fail(end, f"tokens of several epochs after the faults: {self.late_epochs}")


def run_mutex_sim(seed: int, algo: str, params: SimParams = SimParams(), *,
                  factory: CoreFactory | None = None) -> SimReport:
    """One seeded run; raises `SafetyViolation` (naming the seed) on any breach."""
    sim = MutexSim(seed, algo, params, factory=factory)
    if sim.quiet_from + LIVENESS_WAIT > params.ticks:
        raise ValueError(f"run too short for its faults: {params}")
    return sim.run()
