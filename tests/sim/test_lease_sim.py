"""Seeded simulations of leases with drifting clocks, pauses, lossy links, crashes, suspicions.

A small discrete-event world, self-contained because its point is *clocks*:
true (global, simulated) time `t` orders events; every node reads its own
clock `rate * t + offset` with `rate` in [1-rho, 1+rho] (half the nodes at
an extreme, to make the worst case common).  The cores run unmodified:
one `LeaseGrantor` (node G, with a failure detector on holder heartbeats),
three holder nodes with a `LeaseHolder` per resource, and a storage node S
whose two resources are protected by a `FencingGuard`.  Per run the seed also
picks the detector (timeout or phi), whether G persists its lease table, the
token block size, and whether holders ask for varying terms.

Each run injects >= 3 faults drawn from:

* PAUSE     a holder freezes (GC, SIGSTOP) for 1.2-3 lease terms; a write it
            had decided on just before freezing goes out when it wakes;
* NETWORK   for a window, messages (all, or one holder's) are dropped or
            delayed by up to 2.5 terms: grants, renewals, releases, writes;
* CRASH     G crashes; it restarts on a fresh clock from its persisted
            token high-water mark (and, in half the runs, its lease table,
            persisted before each answer as Raft would);
* SUSPECT   one live holder's heartbeats are lost: G's detector falsely
            suspects it and G revokes its leases (stops renewing them).

Checked after every event, in true time:

* overlap   no two holders consider themselves holders of an unexpired
            lease on the same resource at that instant (validity only
            *starts* at events, so checking at events sees every overlap);
* fencing   S never accepts a write with a token lower than one it accepted;
* tokens    each new grant's token exceeds every earlier one on its resource,
            across grantor restarts.

The negative tests show each check can fail: epsilon = 0 while clocks drift
breaks `overlap`; storage without the guard breaks `fencing`; a grantor that
does not persist its token high-water mark breaks `tokens`.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from coord.failure import (
    FailureDetector,
    PeerId,
    PhiAccrualDetector,
    PhiConfig,
    Suspect,
    TimeoutConfig,
    TimeoutDetector,
)
from coord.lease import (
    NO_TOKEN,
    Denied,
    FenceAccepted,
    FencingGuard,
    FencingToken,
    Granted,
    HolderId,
    LeaseConfig,
    LeaseGrantor,
    LeaseHolder,
    LeaseRecord,
    LeaseRelease,
    LeaseRequest,
    RequestId,
    ResourceId,
)

Handler = Callable[[Any], None]  # an event handler; its payload type is its own business

RESOURCES = (ResourceId("chunk/1"), ResourceId("chunk/2"))
N_HOLDERS = 3
G = N_HOLDERS  # node index of the grantor
S = N_HOLDERS + 1  # node index of the storage
TERM = 1.0  # max_duration, and the term holders ask for (or up to, when terms vary)
TICK_H = 0.05  # holder's polling period (its clock)
TICK_G = 0.05  # grantor's polling period (its clock)
RETRY = 0.1  # holder resends an unanswered request after this (its clock)
WRITE_EVERY = 0.1  # holder writes this often while its lease is valid
HEARTBEAT = 0.2  # holder -> grantor heartbeat period
BASE_DELAY = (0.0005, 0.01)  # normal one-way delay
BASE_DROP = 0.01  # normal loss rate


def config(rho: float, epsilon: float | None = None) -> LeaseConfig:
    """The nodes' configuration; epsilon defaults to the safe minimum rho * max_duration."""
    eps = rho * TERM if epsilon is None else epsilon
    return LeaseConfig(duration=TERM, max_duration=TERM, drift_bound=rho, epsilon=eps)


@dataclass(frozen=True)
class Scenario:
    rho_true: float  # how far clocks really drift
    cfg: LeaseConfig  # what the nodes are configured with
    horizon: float = 12.0  # simulated seconds per run
    guard: bool = True  # False: storage accepts every write (fencing disabled)
    persist_tokens: bool = True  # False: G "forgets" to store the token high-water mark


class FaultKind(enum.Enum):
    PAUSE = "pause"
    NETWORK = "network"
    CRASH = "crash"
    SUSPECT = "suspect"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    start: float  # true time
    length: float
    target: int  # holder index, or -1 for "every link"
    drop: float = 0.0  # NETWORK: loss probability in the window
    extra: float = 0.0  # NETWORK: up to this much added delay


@dataclass(frozen=True)
class Clock:
    rate: float
    offset: float

    def read(self, t: float) -> float:
        return self.rate * t + self.offset


@dataclass
class HolderNode:
    name: HolderId
    cores: dict[ResourceId, LeaseHolder]
    want: ResourceId | None = None
    until: float = 0.0  # its clock: stop wanting (want set) or start wanting (want None)
    next_try: float = -math.inf  # its clock: no request before this (retry pacing)
    again: ResourceId | None = None  # want this resource next (a quick re-acquire)
    next_write: float = 0.0
    next_hb: float = 0.0
    paused_until: float = -math.inf  # true time
    pending_writes: list[tuple[ResourceId, FencingToken]] = field(default_factory=list)


@dataclass
class Outcome:
    """What one run (or a sweep, by `merge`) saw."""

    overlaps: list[str] = field(default_factory=list)
    stale_accepts: list[str] = field(default_factory=list)
    token_regressions: list[str] = field(default_factory=list)
    faults: Counter[FaultKind] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Outcome) -> None:
        self.overlaps += other.overlaps
        self.stale_accepts += other.stale_accepts
        self.token_regressions += other.token_regressions
        self.faults.update(other.faults)
        self.stats.update(other.stats)

    @property
    def safe(self) -> bool:
        return not (self.overlaps or self.stale_accepts or self.token_regressions)


class World:
    """One seeded run.  Events are (true time, seq, node, handler, payload)."""

    def __init__(self, seed: int, sc: Scenario) -> None:
        self.seed, self.sc, self.cfg = seed, sc, sc.cfg
        self.rng = random.Random(seed)
        self.t = 0.0
        self.out = Outcome()
        self._q: list[tuple[float, int, int, Handler, object]] = []
        self._seq = 0
        self.clocks = [self._new_clock() for _ in range(N_HOLDERS + 2)]
        self.holders = [
            HolderNode(HolderId(f"h{i}"), {r: LeaseHolder(self.cfg, r, HolderId(f"h{i}"))
                                           for r in RESOURCES})
            for i in range(N_HOLDERS)
        ]
        self.persist_table = self.rng.random() < 0.5
        self.use_phi = self.rng.random() < 0.5
        self.vary_terms = self.rng.random() < 0.5  # holders ask for terms in [0.3, 1] * TERM
        self.token_block = self.rng.choice((1, 3))
        self.disk_high_water = NO_TOKEN  # G's stable storage
        self.disk_table: tuple[LeaseRecord, ...] = ()
        self.g_epoch = 0  # incarnation; stale timers of a crashed G are dropped
        self.g_down = False
        self.grantor = LeaseGrantor(self.cfg, token_block=self.token_block)
        self.detector = self._new_detector()
        self.guard = FencingGuard()
        self.max_accepted: dict[ResourceId, int] = {}  # independent of the guard
        self.max_issued: dict[ResourceId, int] = {}
        self._n_faults = self.rng.randint(3, 5)
        self.faults = self._draw_faults()

    # ------------------------------------------------------------------ setup

    def _new_clock(self) -> Clock:
        rho = self.sc.rho_true
        pos = self.rng.choice((-1.0, 1.0)) if self.rng.random() < 0.5 else self.rng.uniform(-1, 1)
        return Clock(1.0 + rho * pos, self.rng.uniform(0.0, 1e4))

    def _new_detector(self) -> FailureDetector:
        det: FailureDetector
        if self.use_phi:
            det = PhiAccrualDetector(PhiConfig(threshold=8.0, min_std=0.05, acceptable_pause=0.1,
                                               first_interval=HEARTBEAT))
        else:
            det = TimeoutDetector(TimeoutConfig(timeout=0.6))
        now = self.now(G)
        for h in self.holders:
            det.monitor(PeerId(h.name), now)
        return det

    def _draw_faults(self) -> list[Fault]:
        """3-5 faults; two of the same kind on the same target never overlap (each one counts)."""
        faults: list[Fault] = []
        while len(faults) < self._n_faults:
            fault = self._draw_fault()
            if not any(f.kind is fault.kind and f.target == fault.target
                       and f.start < fault.start + fault.length and fault.start < f.start + f.length
                       for f in faults):
                faults.append(fault)
                self.out.faults[fault.kind] += 1
        return faults

    def _draw_fault(self) -> Fault:
        rng = self.rng
        kind = rng.choice(list(FaultKind))
        start, who = rng.uniform(1.0, self.sc.horizon - 3.0), rng.randrange(N_HOLDERS)
        if kind is FaultKind.PAUSE:
            return Fault(kind, start, rng.uniform(1.2, 3.0) * TERM, who)
        if kind is FaultKind.NETWORK:
            return Fault(kind, start, rng.uniform(0.5, 3.0), -1 if rng.random() < 0.5 else who,
                         drop=rng.uniform(0.0, 0.6), extra=rng.uniform(0.2, 2.5) * TERM)
        if kind is FaultKind.CRASH:
            return Fault(kind, start, rng.uniform(0.05, 1.5), -1)
        return Fault(kind, start, rng.uniform(0.8, 2.5), who)

    # ------------------------------------------------------------------ event loop

    def now(self, node: int) -> float:
        return self.clocks[node].read(self.t)

    def at(self, t: float, node: int, fn: Handler, payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, node, fn, payload))

    def after_local(self, node: int, dt: float, fn: Handler, payload: object = None
                    ) -> None:
        """Schedule `fn` when `node`'s clock has advanced by `dt`."""
        self.at(self.t + dt / self.clocks[node].rate, node, fn, payload)

    def run(self) -> Outcome:
        for i in range(N_HOLDERS):
            self.at(self.rng.uniform(0, TICK_H), i, self.holder_tick, i)
        self.at(0.0, G, self.grantor_tick, self.g_epoch)
        for f in self.faults:
            handler = {FaultKind.PAUSE: self.pause, FaultKind.CRASH: self.crash}.get(f.kind)
            if handler is not None:
                self.at(f.start, -1, handler, f)
        steps = 0
        while self._q and steps < 200_000:  # bounded: a run has ~1.5 * 10^3 events
            t, _, node, fn, payload = heapq.heappop(self._q)
            if t > self.sc.horizon:
                break
            steps += 1
            if 0 <= node < N_HOLDERS and self.holders[node].paused_until > t:
                self.at(self.holders[node].paused_until, node, fn, payload)  # frozen: defer
                continue
            if node == G and self.g_down:
                continue  # a crashed process receives nothing and its timers are gone
            self.t = t
            fn(payload)
            self.check_overlap()
        self.out.stats["events"] += steps
        # Count the faults that took effect (a pause of a frozen holder or a crash
        # of a crashed grantor would not); windowed faults act on every send.
        st = self.out.stats
        windows = sum(f.kind in (FaultKind.NETWORK, FaultKind.SUSPECT) for f in self.faults)
        if st["pauses"] + st["crashes"] + windows < 3:
            st["underfaulted_runs"] += 1
        return self.out

    # ------------------------------------------------------------------ network

    def send(self, src: int, dst: int, fn: Handler, payload: object,
             heartbeat: bool = False) -> None:
        rng = self.rng
        if rng.random() < BASE_DROP:
            return
        delay = rng.uniform(*BASE_DELAY)
        for f in self.faults:
            if not f.start <= self.t < f.start + f.length:
                continue
            if f.kind is FaultKind.SUSPECT and heartbeat and src == f.target:
                return
            if f.kind is FaultKind.NETWORK and f.target in (-1, src, dst):
                if rng.random() < f.drop:
                    return
                delay += rng.uniform(0.0, f.extra)
        self.at(self.t + delay, dst, fn, payload)

    # ------------------------------------------------------------------ invariants

    def check_overlap(self) -> None:
        t, clocks = self.t, self.clocks
        for r in RESOURCES:
            # Read each holder's own clock at this true instant; a frozen holder's
            # clock runs on, and its view is judged by it.
            valid = [i for i, h in enumerate(self.holders)
                     if h.cores[r].token != NO_TOKEN and h.cores[r].valid(clocks[i].read(t))]
            if len(valid) > 1 and len(self.out.overlaps) < 5:
                tokens = [self.holders[i].cores[r].token for i in valid]
                self.out.overlaps.append(
                    f"seed {self.seed} t={self.t:.6f}: holders {valid} all valid on {r} "
                    f"(tokens {tokens})"
                )

    # ------------------------------------------------------------------ faults

    def pause(self, fault: Fault) -> None:
        i, h = fault.target, self.holders[fault.target]
        if h.paused_until > self.t:
            return  # already frozen; overlapping pauses are one pause
        self.out.stats["pauses"] += 1
        h.paused_until = self.t + fault.length
        # It had checked its lease and decided to write just before freezing.
        h.pending_writes = [(r, c.token) for r, c in h.cores.items() if c.valid(self.now(i))]
        self.at(h.paused_until, i, self.resume, i)

    def resume(self, i: int) -> None:
        h = self.holders[i]
        for r, token in h.pending_writes:  # sent without re-checking: the GC-pause hazard
            self.out.stats["writes_after_pause"] += 1
            self.send(i, S, self.storage_write, (i, r, token))
        h.pending_writes = []

    def crash(self, fault: Fault) -> None:
        if self.g_down:
            return
        self.g_down, self.g_epoch = True, self.g_epoch + 1
        self.out.stats["crashes"] += 1
        self.at(self.t + fault.length, -1, self.restart, None)

    def restart(self, _: None) -> None:
        old = self.clocks[G]
        # A reboot: the monotonic clock starts from an unrelated origin.
        self.clocks[G] = Clock(old.rate, self.rng.uniform(0.0, 1e4))
        self.g_down = False
        # (A table with tokens above the stored mark would be refused by recover().)
        holders = self.disk_table if self.persist_table and self.sc.persist_tokens else ()
        self.grantor = LeaseGrantor.recover(self.cfg, self.disk_high_water, self.now(G), holders,
                                            token_block=self.token_block)
        self.detector = self._new_detector()
        self.at(self.t, G, self.grantor_tick, self.g_epoch)

    # ------------------------------------------------------------------ grantor node

    def grantor_tick(self, epoch: int) -> None:
        if epoch != self.g_epoch:
            return
        now = self.now(G)
        self.out.stats["expired"] += len(self.grantor.expire_due(now))
        for ev in self.detector.check(now):
            if not isinstance(ev, Suspect):
                continue
            i = int(ev.peer[1:])
            live = self.holders[i].paused_until <= self.t
            self.out.stats["false_suspicions" if live else "true_suspicions"] += 1
            for r in RESOURCES:
                rec = self.grantor.holder_of(r, now)
                if rec is None or rec.holder != HolderId(ev.peer):
                    continue
                if self.grantor.revoke(r, now) is not None:
                    self.out.stats["revocations"] += 1
        self.after_local(G, TICK_G, self.grantor_tick, self.g_epoch)

    def grantor_heartbeat(self, name: HolderId) -> None:
        self.detector.heartbeat(PeerId(name), self.now(G))

    def grantor_receive(self, payload: tuple[int, LeaseRequest | LeaseRelease]) -> None:
        i, msg = payload
        if isinstance(msg, LeaseRelease):
            self.grantor.handle(msg, self.now(G))
            self._persist()
            return
        reply = self.grantor.handle(msg, self.now(G))
        if isinstance(reply, Granted):
            if reply.persist_high_water is not None and self.sc.persist_tokens:
                self.disk_high_water = reply.persist_high_water  # before the reply leaves
            self._persist()
            self._check_token(reply)
        self.out.stats[type(reply).__name__] += 1
        self.send(G, i, self.holder_reply, (msg.request_id, reply))

    def _persist(self) -> None:
        if self.persist_table:
            self.disk_table = self.grantor.leases()

    def _check_token(self, reply: Granted) -> None:
        if reply.renewal:
            self.out.stats["renewals"] += 1
            return
        self.out.stats["new_grants"] += 1
        last = self.max_issued.get(reply.resource, 0)
        if reply.token <= last:
            self.out.token_regressions.append(
                f"seed {self.seed} t={self.t:.6f}: token {reply.token} <= {last} "
                f"on {reply.resource}"
            )
        self.max_issued[reply.resource] = max(last, reply.token)

    # ------------------------------------------------------------------ storage node

    def storage_write(self, payload: tuple[int, ResourceId, FencingToken]) -> None:
        i, r, token = payload
        highest = self.max_accepted.get(r, 0)
        if token < highest:
            self.out.stats["stale_writes_arriving"] += 1
        accepted = not self.sc.guard or isinstance(self.guard.check(r, token), FenceAccepted)
        if not accepted:
            self.out.stats["guard_rejections"] += 1
            return
        self.out.stats["writes_accepted"] += 1
        if token < highest and len(self.out.stale_accepts) < 5:
            self.out.stale_accepts.append(
                f"seed {self.seed} t={self.t:.6f}: h{i} wrote {r} with token {token} "
                f"after {highest}"
            )
        self.max_accepted[r] = max(highest, token)

    # ------------------------------------------------------------------ holder nodes

    def holder_tick(self, i: int) -> None:
        h, now = self.holders[i], self.now(i)
        self.after_local(i, TICK_H, self.holder_tick, i)
        if now >= h.next_hb:
            h.next_hb = now + HEARTBEAT
            self.send(i, G, self.grantor_heartbeat, h.name, heartbeat=True)
        self._holder_intent(i, h, now)
        if h.want is None:
            return
        core = h.cores[h.want]
        self._maybe_request(i, h, h.want, now)
        if core.valid(now) and now >= h.next_write:  # the check before every protected action
            h.next_write = now + WRITE_EVERY
            self.send(i, S, self.storage_write, (i, h.want, core.token))

    def _holder_intent(self, i: int, h: HolderNode, now: float) -> None:
        """Workload: want a resource for 0.3-4 s, release it, idle up to 1.5 s.

        A third of the releases are followed at once by a new request for the
        same resource (a primary that hands a chunk back and needs it again),
        so releases and re-acquires race in the network.
        """
        rng = self.rng
        if h.want is not None and now >= h.until:
            release = h.cores[h.want].release(now)
            if release is not None:
                self.send(i, G, self.grantor_receive, (i, release))
            again = rng.random() < 1 / 3
            h.again = h.want if again else None
            h.want, h.until = None, now + rng.uniform(0.0, 0.1 if again else 1.5)
        elif h.want is None and now >= h.until:
            h.want = h.again or rng.choice(RESOURCES)
            h.until = now + rng.uniform(0.3, 4.0)
            h.next_try = now

    def holder_reply(self, payload: tuple[RequestId, Granted | Denied]) -> None:
        rid, reply = payload
        i = int(reply.holder[1:])
        outcome = self.holders[i].cores[reply.resource].on_reply(rid, reply, self.now(i))
        self.out.stats[f"reply_{outcome.value}"] += 1
        if isinstance(reply, Denied) and reply.retry_in > 0:
            # Come back exactly when the grantor said it might say yes: that
            # puts the next request at the grantor's late expiry, the tight spot.
            wait = reply.retry_in + self.rng.uniform(0.0, 0.005)
            h = self.holders[i]
            h.next_try = max(h.next_try, self.now(i) + wait)
            self.after_local(i, wait, self.holder_retry, (i, reply.resource))

    def holder_retry(self, payload: tuple[int, ResourceId]) -> None:
        i, r = payload
        self._maybe_request(i, self.holders[i], r, self.now(i))

    def _maybe_request(self, i: int, h: HolderNode, r: ResourceId, now: float) -> None:
        """Send an ACQUIRE or RENEW for `r` if one is due and the pacing allows it."""
        core = h.cores[r]
        if h.want != r or now < h.next_try:
            return
        if core.token == NO_TOKEN or core.renew_due(now):
            h.next_try = now + RETRY
            term = self.rng.uniform(0.3, 1.0) * TERM if self.vary_terms else TERM
            self.send(i, G, self.grantor_receive, (i, core.request(now, term)))


def run_world(seed: int, sc: Scenario) -> Outcome:
    return World(seed, sc).run()


def sweep(seeds: range, sc: Scenario) -> Outcome:
    total = Outcome()
    for seed in seeds:
        total.merge(run_world(seed, sc))
    return total


# ---------------------------------------------------------------------- tests

RHOS = (0.001, 0.01, 0.05)  # true drift bounds swept (and configured) in the safe runs


def safe_scenario(seed: int) -> Scenario:
    rho = RHOS[seed % len(RHOS)]
    return Scenario(rho_true=rho, cfg=config(rho))


def test_lease_safety_over_1000_seeded_runs_with_faults(soak: bool) -> None:
    runs = 5000 if soak else 1000
    started = time.perf_counter()
    total = Outcome()
    for seed in range(runs):
        total.merge(run_world(seed, safe_scenario(seed)))
    elapsed = time.perf_counter() - started
    print(f"\n{runs} runs in {elapsed:.1f} s; faults {dict(total.faults)}; {dict(total.stats)}")
    assert total.overlaps == [], total.overlaps
    assert total.stale_accepts == [], total.stale_accepts
    assert total.token_regressions == [], total.token_regressions
    # The runs did exercise what they claim to (each would be a vacuous pass otherwise).
    st = total.stats
    assert st["underfaulted_runs"] == 0
    assert min(total.faults.values()) >= runs // 2  # every kind of fault, often
    assert st["pauses"] == total.faults[FaultKind.PAUSE]
    assert st["crashes"] == total.faults[FaultKind.CRASH]
    assert st["false_suspicions"] >= runs // 2
    assert st["revocations"] >= runs // 2
    assert st["writes_after_pause"] >= runs // 10
    assert st["guard_rejections"] >= runs // 10  # stale writes really arrived, and were fenced
    assert st["new_grants"] >= 5 * runs
    assert st["renewals"] >= 10 * runs
    for outcome in ("late", "deferred", "lost", "ignored", "refused"):
        assert st[f"reply_{outcome}"] > 0, outcome


def test_runs_are_reproducible_from_their_seed() -> None:
    first, again = run_world(11, safe_scenario(11)), run_world(11, safe_scenario(11))
    assert first.stats == again.stats
    assert first.faults == again.faults
    assert run_world(12, safe_scenario(11)).stats != first.stats


# Epsilon = 0 (the configuration claims no drift) while the clocks drift by 5%.
UNSAFE = Scenario(rho_true=0.05, cfg=config(0.0))
#: Seeds (found by the sweep below) whose run breaks the overlap invariant under UNSAFE.
UNSAFE_SEEDS = (37, 55, 62)


def test_epsilon_zero_with_drift_breaks_the_overlap_invariant() -> None:
    broken = [seed for seed in range(200) if run_world(seed, UNSAFE).overlaps]
    print(f"\nepsilon=0, drift 5%: {len(broken)}/200 runs overlap: {broken}")
    assert len(broken) >= 3
    for seed in UNSAFE_SEEDS:
        assert seed in broken
        # The same seed with the margin the drift requires is safe.
        assert run_world(seed, Scenario(rho_true=0.05, cfg=config(0.05))).safe
    # Half the required margin is not enough either (5 of seeds 0-999 break; one pinned).
    half = Scenario(rho_true=0.05, cfg=config(0.025))
    assert run_world(62, half).overlaps
    assert run_world(62, Scenario(rho_true=0.05, cfg=config(0.05))).safe


def scripted_handover(rho: float, cfg: LeaseConfig) -> float:
    """The provable case: true seconds during which two holders are both valid.

    A (slowest clock) takes the lease at t=0 and then freezes; the grantor's
    clock is the fastest; B asks every millisecond; messages are instant.
    """
    r, step = RESOURCES[0], 0.001
    ca, cb, cg = Clock(1 - rho, 100.0), Clock(1 + rho, 200.0), Clock(1 + rho, 300.0)
    grantor = LeaseGrantor(cfg)
    a, b = LeaseHolder(cfg, r, HolderId("a")), LeaseHolder(cfg, r, HolderId("b"))
    req = a.request(ca.read(0.0))
    a.on_reply(req.request_id, grantor.handle(req, cg.read(0.0)), ca.read(0.0))
    assert a.valid(ca.read(0.0))
    overlap = 0.0
    for k in range(1, 3 * int(TERM / step)):  # 3 terms, bounded
        t = k * step
        if b.token == NO_TOKEN:
            req = b.request(cb.read(t))
            b.on_reply(req.request_id, grantor.handle(req, cg.read(t)), cb.read(t))
        if a.valid(ca.read(t)) and b.valid(cb.read(t)):
            overlap += step
    assert b.token != NO_TOKEN  # B did get the lease in the end
    return overlap


def test_scripted_handover_overlaps_exactly_when_epsilon_is_too_small() -> None:
    rho = 0.01
    # epsilon = 0: A's view ends at d/(1-rho), the grantor's at d/(1+rho).
    expected = TERM / (1 - rho) - TERM / (1 + rho)
    assert scripted_handover(rho, config(0.0)) == pytest.approx(expected, abs=0.0015)
    assert scripted_handover(rho, config(rho / 2)) > 0.0
    assert scripted_handover(rho, config(rho)) == 0.0


def test_without_the_fencing_guard_stale_writes_are_accepted() -> None:
    """Leases alone cannot stop a paused or slow holder's late write: the guard does."""
    unguarded = Scenario(rho_true=0.01, cfg=config(0.01), guard=False)
    total = Outcome()
    for seed in range(100):
        total.merge(run_world(seed, unguarded))
    assert total.overlaps == []  # lease timing still holds ...
    assert len(total.stale_accepts) >= 5  # ... yet storage took writes from superseded leases


def test_without_persisting_the_token_high_water_mark_tokens_repeat() -> None:
    forgetful = Scenario(rho_true=0.01, cfg=config(0.01), persist_tokens=False)
    total = Outcome()
    for seed in range(50):
        total.merge(run_world(seed, forgetful))
    assert total.stats["crashes"] > 0
    assert len(total.token_regressions) >= 5
