"""A deterministic simulated Raft cluster: seeded faults, a faithful driver, and
safety checks after every step.

One seed fixes everything: the network's drops, duplicates and delays
(reordering), the fault plan (crashes, symmetric and asymmetric partitions,
leader isolation), the clients' proposals and reads, and each node's rng.

The simulated driver obeys persist → send → apply → advance.  Each node's
`SimDisk` keeps what the process sees and a separate durable copy that only
`fsync` (done when the Ready says `must_sync`) brings up to date; a crash
throws away everything written since the last fsync, and the restarted node
is built from the durable copy alone (its state machine is volatile and is
rebuilt from its durable snapshot, if any, and by re-applying committed entries).

Snapshots: at every multiple of `snapshot_every` a node snapshots its state
machine (`coord.sim.raft_snap`; as the real driver does, so nodes' snapshots
of one index are identical and transfers resume across leaders), tells the
core and compacts its log up to `keep_tail` entries behind; lagging
followers get InstallSnapshot in small chunks, and some runs crash a
receiver in the middle of a transfer so that it must resume from its
partial snapshot after restarting.

Invariants: every step (one delivery or one tick of one node, plus the
Readys it produced) is followed by `RaftChecker` checks; a violation raises
`SafetyViolation` whose message starts with the seed and ends with the last
events, so `RaftSim(SimParams(seed=...)).run()` reproduces it exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coord.raft.config import RaftConfig
from coord.raft.core import RaftNode
from coord.raft.membership import Membership
from coord.raft.memlog import MemLog
from coord.raft.messages import InstallSnapshot, Message, ReadCtx
from coord.raft.readindex import ReadState
from coord.raft.ready import Overloaded, Proposed, Ready, Role
from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term
from coord.sim.network import NetConfig, SimNetwork
from coord.sim.raft_checks import RaftChecker, SafetyViolation
from coord.sim.raft_snap import SnapFiles, decode_state, encode_state

#: Timing in ticks: an election timeout spans several heartbeats and round trips.
SIM_RAFT_CONFIG = RaftConfig(
    election_timeout_min=10.0,
    election_timeout_max=20.0,
    heartbeat_interval=2.0,
    max_append_entries=32,
    max_append_bytes=4096,
    max_inflight=4,
    max_inflight_bytes=16384,
    max_uncommitted_bytes=512,  # ~24 small commands: an isolated leader hits it
    max_apply_bytes=8192,
    snapshot_every=16,  # often enough that lagging followers need InstallSnapshot
    keep_tail=4,
    snapshot_chunk_bytes=512,  # a snapshot spans several chunks: transfers get interrupted
)


@dataclass(frozen=True, slots=True)
class SimParams:
    seed: int
    nodes: int = 3
    ticks: int = 300  # the faulty phase; convergence ticks come on top
    # A schedule so harsh that fewer client commands were acknowledged goes on
    # (random drops and delays, no new faults) until it has, up to max_ticks:
    # every run then checks safety over at least this many commits.
    min_commits: int = 50
    max_ticks: int = 1200
    min_faults: int = 3
    max_faults: int = 6
    fault_ticks: tuple[int, int] = (10, 60)  # bounds of one fault's duration
    convergence_ticks: int = 300  # bound on the healed phase before "no progress" fails
    raft: RaftConfig = SIM_RAFT_CONFIG


@dataclass(slots=True)
class SimReport:
    seed: int
    nodes: int
    ticks: int = 0
    faults: list[str] = field(default_factory=list)
    proposals: int = 0
    refused: int = 0  # proposals refused as Overloaded (uncommitted cap)
    commits: int = 0  # client commands acknowledged (applied somewhere) in the faulty phase
    reads: int = 0  # linearizable reads served
    leaders: int = 0  # distinct terms that had a leader
    crashes: int = 0
    messages: int = 0
    snapshots: int = 0  # snapshots taken
    installs: int = 0  # snapshots installed from a leader
    chunks_sent: int = 0  # InstallSnapshot messages sent
    chunks_delivered: int = 0  # ... and stepped by their receiver
    resumed: int = 0  # restarts with a partial snapshot to resume


class SimDisk:
    """A node's storage: the visible state, and the durable copy that survives crashes."""

    __slots__ = ("durable_hard", "durable_log", "hard", "log", "pending", "snaps")

    def __init__(self) -> None:
        self.log = MemLog()  # what the running process reads (the core's LogView)
        self.hard = HardState()
        self.durable_log = MemLog()  # what an fsync made crash-proof
        self.durable_hard = HardState()
        self.pending: list[Sequence[Entry]] = []  # appends since the last fsync
        self.snaps = SnapFiles()  # snapshot files: durable when written

    def write(self, entries: Sequence[Entry], hard: HardState | None) -> None:
        if entries:
            self.log.append(entries)
            self.pending.append(entries)
        if hard is not None:
            self.hard = hard

    def fsync(self) -> None:
        for batch in self.pending:
            floor = self.durable_log.first_index()
            self.durable_log.append([e for e in batch if e.index >= floor])  # compacted since
        self.pending.clear()
        self.durable_hard = self.hard

    def compact(self, index: LogIndex, term: Term) -> None:
        """`truncate_prefix(index, term)`: a durable operation, like the store's."""
        self.log.truncate_prefix(index, term)
        self.durable_log.truncate_prefix(index, term)

    def crash(self) -> None:
        self.log = self.durable_log.copy()
        self.hard = self.durable_hard
        self.pending.clear()


Action = Callable[[], None]


class RaftSim:
    """One simulated run; `run()` returns a report or raises SafetyViolation."""

    disk_cls: type[SimDisk] = SimDisk  # tests plant storage bugs by overriding it

    def __init__(self, params: SimParams, node_cls: type[RaftNode] = RaftNode) -> None:
        self.p = params
        self.node_cls = node_cls
        self.rng = random.Random(params.seed)
        self.ids = [NodeId(i) for i in range(1, params.nodes + 1)]  # grows when nodes join
        self.bootstrap_ids = tuple(self.ids)  # the initial voters
        net_cfg = NetConfig(
            drop=self.rng.choice([0.0, 0.01, 0.03, 0.08]),
            duplicate=self.rng.choice([0.0, 0.02, 0.05]),
            min_delay=1,
            max_delay=self.rng.choice([1, 2, 3, 4]),
        ).validate()
        self.net: SimNetwork[NodeId, Message] = SimNetwork(
            random.Random(self.rng.getrandbits(64)), net_cfg
        )
        self.disks = {i: self.disk_cls() for i in self.ids}
        self.cores: dict[NodeId, RaftNode | None] = dict.fromkeys(self.ids)
        self.applied: dict[NodeId, list[Entry]] = {i: [] for i in self.ids}
        self.checker = RaftChecker(self.ids)
        self.report = SimReport(params.seed, params.nodes)
        self.trace: deque[tuple[int, str, object]] = deque(maxlen=40)
        self.now = 0
        self.last_tick = 0  # the faulty phase's last tick, once it is over (0 until then)
        self.pending: dict[tuple[int, int], bytes] = {}  # (index, term) -> proposed command
        self.acked: dict[int, bytes] = {}  # index -> command acknowledged to its client
        self.acked_max = 0
        self.read_floor: dict[ReadCtx, int] = {}  # read -> highest acked index at issue
        self.link_faults: Counter[tuple[NodeId, NodeId]] = Counter()
        self.events: list[tuple[int, int, str, Action]] = []
        self._seq = 0
        self.slow_disk = self.rng.choice([0.0, 0.0, 0.1, 0.3])  # chance a Ready waits a tick
        # Crash a receiver in the middle of a transfer (up to this many times).
        self.interrupts = self.rng.choice([0, 1, 3])
        self.held: dict[NodeId, Ready] = {}  # Readys taken but not yet persisted (slow disk)
        self._durable_changed = False  # an fsync or crash since the durability check
        self._durable_checked = 0  # commit index at the last durability check
        self._plan_faults()
        for i in self.ids:
            self._start(i)

    # ------------------------------------------------------------------ running
    def run(self) -> SimReport:
        try:
            p, tick = self.p, 0
            while tick < p.ticks or (self.report.commits < p.min_commits and tick < p.max_ticks):
                tick += 1
                self._tick(tick, clients=True)
            self.report.ticks = self.last_tick = tick
            self._converge()
        except (AssertionError, RuntimeError, LookupError) as exc:
            raise SafetyViolation(self._describe(exc)) from exc
        self.report.leaders = len(self.checker.leaders)
        self.report.messages = self.net.stats.sent
        return self.report

    def faulty(self) -> bool:
        """In the faulty phase (clients, faults), not converging."""
        return self.last_tick == 0

    def _tick(self, tick: int, clients: bool) -> None:
        self.now = tick
        if self.held:
            self._release_held()  # the slow disk finished last tick's writes
        while self.events and self.events[0][0] <= tick:
            _, _, what, action = heapq.heappop(self.events)
            self.trace.append((tick, "fault", what))
            action()
        inbox: dict[NodeId, list[Message]] = {}
        for _src, dst, msg in self.net.due(tick):
            inbox.setdefault(dst, []).append(msg)
        for dst, msgs in inbox.items():
            core = self.cores[dst]
            if core is None:
                continue
            # Like a real driver, drain the inbox, then handle one Ready for the batch.
            for msg in msgs:
                self.trace.append((tick, "recv", msg))
                if isinstance(msg, InstallSnapshot):
                    self.report.chunks_delivered += 1
                core.step(msg, float(tick))
                self.checker.after_step(dst, core)
                self._check_durable()
            self._process(dst, core)
        for nid in self.ids:
            core = self.cores[nid]
            if core is not None:
                core.tick(float(tick))
                self._process(nid, core)
        if clients:
            self._clients()

    def _converge(self) -> None:
        """Heal everything, restart everyone, and require the cluster to catch up."""
        self.events.clear()
        self.link_faults.clear()
        self.net.heal()
        self.net.config = NetConfig(0.0, 0.0, 1, self.net.config.max_delay)
        for nid in self.ids:
            if self.cores[nid] is None:
                self._start(nid)
        for k in range(1, self.p.convergence_ticks + 1):
            self._tick(self.last_tick + k, clients=False)
            target = max(self.acked_max, self.checker.commit_index)
            members = self.checker.membership.members  # removed nodes need not catch up
            if all(len(self.applied[i]) >= target for i in members):
                break
        else:
            lag = {i: len(self.applied[i]) for i in members}
            raise SafetyViolation(f"no progress after healing: applied {lag}, target {target}")
        for nid in members:
            sm = self.applied[nid]
            for index, data in self.acked.items():
                if sm[index - 1].data != data:
                    raise SafetyViolation(
                        f"acknowledged command {data!r} at {index} lost on node {nid}"
                    )

    # ------------------------------------------------------------------ the driver
    def _start(self, nid: NodeId) -> None:
        disk = self.disks[nid]
        snap = disk.snaps.snapshot
        state = decode_state(snap[1]) if snap is not None else []
        hard = disk.hard
        # The snapshot's entries were committed, whatever commit index was persisted.
        hard = HardState(hard.term, hard.vote, max(hard.commit, LogIndex(len(state))))
        if disk.snaps.partial is not None:
            self.report.resumed += 1
        core = self.node_cls(
            nid,
            self.bootstrap_ids,
            self.p.raft,
            log=disk.log,
            hard_state=hard,
            rng=random.Random(self.p.seed * 1009 + nid * 7919 + self.now),
            now=float(self.now),
            membership=self._bootstrap_membership(nid),
            applied=LogIndex(len(state)),
            snapshot=snap[0] if snap is not None else None,
            snapshots=disk.snaps.reader,
            partial=disk.snaps.received(),
        )
        self.cores[nid] = core
        self.applied[nid] = state
        self.checker.restarted(nid, hard.commit)
        self.trace.append((self.now, "start", f"node {nid} {disk.hard}"))

    def _bootstrap_membership(self, nid: NodeId) -> Membership | None:
        """The configuration a node starts from before its log says otherwise
        (None: the original members; membership sims give joiners an empty one)."""
        return None

    def _process(self, nid: NodeId, core: RaftNode) -> None:
        """The driver loop for one node: persist → send → apply → advance.

        With a slow disk a Ready is held until the next tick: the core keeps
        stepping meanwhile, which exercises its "not yet persisted" paths.
        """
        self.checker.after_step(nid, core)
        for _ in range(8):
            if nid in self.held or not core.has_ready():
                break
            rd = core.ready()
            if self.rng.random() < self.slow_disk:
                self.held[nid] = rd
                self.trace.append((self.now, "hold", f"node {nid} Ready"))
                break
            self._handle_ready(nid, core, rd)
        self._check_durable()

    def _check_durable(self) -> None:
        if self._durable_changed or self.checker.commit_index != self._durable_checked:
            # Re-evaluated whenever an input changed (an fsync, a crash, a new commit).
            self.checker.durable_majority({i: d.durable_log for i, d in self.disks.items()})
            self._durable_changed, self._durable_checked = False, self.checker.commit_index

    def _release_held(self) -> None:
        for nid in sorted(self.held):
            rd = self.held.pop(nid)
            core = self.cores[nid]
            if core is not None:
                self._handle_ready(nid, core, rd)
                self._process(nid, core)

    def _handle_ready(self, nid: NodeId, core: RaftNode, rd: Ready) -> None:
        checker, disk = self.checker, self.disks[nid]
        disk.write(rd.entries, rd.hard_state)
        checker.appended(nid, disk.log, rd.entries)
        if rd.must_sync:
            disk.fsync()
            self._durable_changed = True
        complete: SnapshotMeta | None = None
        for chunk in rd.snapshot_chunks:
            disk.snaps.write(chunk)
            if chunk.last:
                complete = chunk.meta
            elif self.interrupts and self.faulty() and self.rng.random() < 0.2:
                self.interrupts -= 1
                self._at(self.now + 1, f"interrupt transfer to {nid}", self._crash_node(nid, 15))
        for m in rd.messages:
            self.report.chunks_sent += isinstance(m, InstallSnapshot)
            self.net.send(self.now, m.src, m.dst, m)
        pinned = None
        every = self.p.raft.snapshot_every
        for entry in rd.committed_entries:
            self._apply(nid, entry)
            if every and entry.index % every == 0:
                pinned = self._snapshot_of(self.applied[nid])
        if rd.read_states:
            self._serve_reads(nid, rd.read_states)
        core.advance(rd)
        checker.after_step(nid, core)
        if complete is not None:
            self._install(nid, core, complete)
        elif pinned is not None:
            self._keep_snapshot(nid, core, *pinned)

    def _snapshot_of(self, state: list[Entry]) -> tuple[SnapshotMeta, bytes]:
        # The configuration in force at the snapshot's index: its newest CONFIG entry.
        config = next(
            (Membership.decode(e.data) for e in reversed(state) if e.kind is EntryKind.CONFIG),
            Membership.of(self.bootstrap_ids),
        )
        meta, data = encode_state(state, sorted(config.voters))
        meta = dataclasses.replace(
            meta, learners=tuple(sorted(config.learners)), addresses=config.addresses
        )
        return meta, data

    def _install(self, nid: NodeId, core: RaftNode, meta: SnapshotMeta) -> None:
        """Step 6 of the driver order: verify, replace the state machine, compact, tell the core."""
        disk = self.disks[nid]
        done = disk.snaps.complete()
        if done is None:
            core.snapshot_corrupt(meta)
            return
        state = decode_state(done[1])
        self.checker.installed(nid, state)
        replace = meta.index > len(self.applied[nid])
        if replace:
            self.applied[nid] = state
        core.snapshot_installed(meta)  # before the store changes: it decides on the old log
        if replace:
            disk.compact(meta.index, meta.term)
            self._durable_changed = True
        self.report.installs += 1
        self.trace.append((self.now, "install", f"node {nid} snapshot at {meta.index}"))
        self.checker.after_step(nid, core)

    def _keep_snapshot(self, nid: NodeId, core: RaftNode, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot taken at a boundary, tell the core, compact keeping `keep_tail`."""
        cfg, disk = self.p.raft, self.disks[nid]
        if disk.snaps.snapshot is not None and disk.snaps.snapshot[0].index >= meta.index:
            return  # an install overtook it
        disk.snaps.keep(meta, data)
        core.snapshot_taken(meta)
        self.report.snapshots += 1
        floor = LogIndex(meta.index - cfg.keep_tail)
        if floor > core.log.first_index() - 1:
            disk.compact(floor, core.compact(floor))
            self._durable_changed = True

    def _apply(self, nid: NodeId, entry: Entry) -> None:
        sm = self.applied[nid]
        if entry.index != len(sm) + 1:
            raise SafetyViolation(f"node {nid} applied {entry.index} after {len(sm)}")
        self.checker.applied(nid, entry)
        sm.append(entry)
        data = self.pending.pop((entry.index, entry.term), None)
        if data is not None:
            self.acked[entry.index] = data
            self.acked_max = max(self.acked_max, entry.index)
            if self.faulty():
                self.report.commits += 1

    def _serve_reads(self, nid: NodeId, states: Sequence[ReadState]) -> None:
        applied = len(self.applied[nid])
        for rs in states:
            ctx, index = rs.ctx, rs.index
            floor = self.read_floor.pop(ctx, None)
            if floor is None:
                continue  # a duplicate answer to an already served read
            if index > applied:
                raise SafetyViolation(f"read {ctx!r} at {index} served on {nid} at {applied}")
            if index < floor:
                raise SafetyViolation(
                    f"stale read {ctx!r} on {nid}: index {index} < acknowledged write {floor}"
                )
            self.report.reads += 1

    # ------------------------------------------------------------------ clients
    def _clients(self) -> None:
        rng = self.rng
        if rng.random() < 0.8:
            leader = self._leader()
            if leader is not None:
                for _ in range(rng.randint(1, 4)):
                    self._propose(leader)
        if rng.random() < 0.3:
            nid = rng.choice(self.ids)
            core = self.cores[nid]
            if core is not None:
                ctx = ReadCtx(b"r%d" % self._next_seq())
                self.read_floor[ctx] = self.acked_max
                core.read_index(ctx, float(self.now))  # `now` matters with lease reads only
                self._process(nid, core)

    def _propose(self, leader: NodeId) -> None:
        core = self.cores[leader]
        assert core is not None
        data = b"c%d" % self._next_seq()
        result = core.propose(data)
        if isinstance(result, Proposed):
            self.pending[(result.index, result.term)] = data
            self.report.proposals += 1
        elif isinstance(result, Overloaded):
            self.report.refused += 1
        self._process(leader, core)

    def _leader(self) -> NodeId | None:
        """The client's guess: the up node that believes it leads the highest term."""
        best: tuple[int, NodeId] | None = None
        for nid, core in self.cores.items():
            if core is None or core.role is not Role.LEADER:
                continue
            if best is None or core.term > best[0]:
                best = (core.term, nid)
        return best[1] if best else None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------ faults
    def _plan_faults(self) -> None:
        rng, ticks = self.rng, self.p.ticks
        kinds = [self._crash, self._partition, self._isolate_leader, self._one_way]
        count = rng.randint(self.p.min_faults, self.p.max_faults)
        # One fault starts in each equal slot of the window: they may overlap, but
        # cannot all pile up at once and leave the cluster no time to make progress.
        lo, hi = ticks // 10, ticks - ticks // 5
        width = (hi - lo) // count
        for k in range(count):
            start = lo + k * width + rng.randrange(width)
            duration = rng.randint(*self.p.fault_ticks)
            self._at(start, "fault", rng.choice(kinds)(duration))

    def _at(self, tick: int, what: str, action: Action) -> None:
        self._seq += 1
        heapq.heappush(self.events, (tick, self._seq, what, action))

    def _crash(self, duration: int) -> Action:
        def start() -> None:
            leader = self._leader()
            up = [i for i in self.ids if self.cores[i] is not None]
            if not up:
                return
            nid = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(up)
            self._crash_node(nid, duration)()

        return start

    def _crash_node(self, nid: NodeId, duration: int) -> Action:
        def start() -> None:
            if self.cores[nid] is None:
                return
            self.cores[nid] = None
            self.held.pop(nid, None)  # a write in progress never happened
            self.disks[nid].crash()
            self._durable_changed = True
            self.report.crashes += 1
            self._fault(f"t={self.now} crash {nid} for {duration}")
            self._at(self.now + duration, f"restart {nid}", lambda: self._restart(nid))

        return start

    def _restart(self, nid: NodeId) -> None:
        if self.cores[nid] is None:
            self._start(nid)

    def _partition(self, duration: int) -> Action:
        def start() -> None:
            nodes = list(self.ids)
            self.rng.shuffle(nodes)
            cut = self.rng.randint(1, len(nodes) - 1)
            links = self._cross_links(nodes[:cut], nodes[cut:])
            self._block(links, duration, f"partition {nodes[:cut]} | {nodes[cut:]}")

        return start

    def _isolate_leader(self, duration: int) -> Action:
        def start() -> None:
            leader = self._leader() or self.rng.choice(self.ids)
            rest = [i for i in self.ids if i != leader]
            self._block(self._cross_links([leader], rest), duration, f"isolate {leader}")

        return start

    def _one_way(self, duration: int) -> Action:
        def start() -> None:
            nid = self._leader() or self.rng.choice(self.ids)
            rest = [i for i in self.ids if i != nid]
            if self.rng.random() < 0.5:
                links, what = [(nid, r) for r in rest], f"{nid} cannot send (asymmetric)"
            else:
                links, what = [(r, nid) for r in rest], f"{nid} cannot receive (asymmetric)"
            self._block(links, duration, what)

        return start

    @staticmethod
    def _cross_links(a: list[NodeId], b: list[NodeId]) -> list[tuple[NodeId, NodeId]]:
        return [link for x in a for y in b for link in ((x, y), (y, x))]

    def _block(self, links: list[tuple[NodeId, NodeId]], duration: int, what: str) -> None:
        self.link_faults.update(links)
        self._sync_links()
        self._fault(f"t={self.now} {what} for {duration}")

        def heal() -> None:
            self.link_faults.subtract(links)
            self._sync_links()

        self._at(self.now + duration, f"heal {what}", heal)

    def _sync_links(self) -> None:
        self.net.blocked = {link for link, n in self.link_faults.items() if n > 0}

    def _fault(self, what: str) -> None:
        self.report.faults.append(what)

    # ------------------------------------------------------------------ reporting
    def _describe(self, exc: BaseException) -> str:
        lines = [f"seed={self.p.seed} nodes={self.p.nodes} tick={self.now}: {exc}"]
        lines.append(f"faults: {self.report.faults}")
        for nid in self.ids:
            core = self.cores[nid]
            if core is None:
                lines.append(f"  node {nid}: down")
            else:
                lines.append(
                    f"  node {nid}: {core.role.value} term={core.term} commit={core.commit_index} "
                    f"last={core.log.last_index()} history={core.history()[-4:]}"
                )
        lines.append("last events:")
        lines.extend(f"  t={t} {kind} {detail}" for t, kind, detail in self.trace)
        return "\n".join(lines)


def run_raft_sim(seed: int, nodes: int = 3, node_cls: type[RaftNode] = RaftNode) -> SimReport:
    """Reproduce one simulated run (the entry point a failing test message names)."""
    return RaftSim(SimParams(seed=seed, nodes=nodes), node_cls).run()


__all__ = ["RaftSim", "SafetyViolation", "SimDisk", "SimParams", "SimReport", "run_raft_sim"]
