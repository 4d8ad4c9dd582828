"""The metadata leader's soft state about chunk servers: failure detection, space, placement.

Sans-IO: every method takes `now` (seconds on the leader's monotonic clock)
and nothing here logs, sleeps or sends.  What happened is reported as
events (`Suspected`, `Recovered`, `Died`) that the driver drains with
`take_events()` and logs (fs/meta/service.py).  Nothing here is
replicated - a new leader starts empty and rebuilds it from heartbeats.
What the replicated state needs (address, capacity, free space, alive) the
leader writes with `ServerState` leader commands, computed by `updates()`
from the difference between this view and the recorded one.

Failure detection is `coord.failure` (φ-accrual by default, the fixed
timeout by config), fed by `meta.heartbeat` arrivals.  A server goes

    alive --(detector suspects)--> suspected --(silent >= dead_after)--> dead
      ^                                |                                  |
      +-------(a heartbeat: the detector recovers it)---------------------+

and a server recorded alive that this leader has not heard yet starts as
`waiting` (monitored as if it had sent a heartbeat when the leader took
over).

Invariants:

* during the first `grace` seconds of a leadership nobody is suspected: the
  leader has no history, and chunk servers need time to find it; and no
  chunk is placed nor lease granted (BUSY, the client retries) until every
  server recorded alive has been heard or the grace period is over, so a
  chunk allocated right after an election gets all its replicas;
* placement and lease grants (`live`) use only servers heard by this leader
  and not suspected: a suspicion stops *helping* a server at once;
* a server is recorded dead (`ServerState(alive=False)`) only once it is
  suspected *and* has been silent for `dead_after` seconds, never merely
  because it is suspected: a suspicion can be false (a slow or paused
  server), and the dead record is what allows its replicas to be given up.
  Safety never rests on either: a suspected primary's lease is only not
  renewed, and a stale replica is refused by its chunk version and the
  fencing token (docs/leases.md);
* a heartbeat from a suspected or dead server recovers it at once (event
  `Recovered`, `was_dead` when it had been declared dead), and `updates()`
  then records it alive again; when the detector had learned its rhythm
  (two intervals or more) its history restarts there (the outage is not
  one of its heartbeat intervals);
* every suspicion, recovery and death is reported exactly once, with the
  detector's reason;
* `placement(n)` returns at most n distinct live servers, most free space
  first (ties by id), and charges each one chunk of space so the next
  placements before the next heartbeat spread out;
* free-space updates to the replicated state are rate-limited
  (`free_interval`) unless a server's free space moved by more than
  `free_jump` of its capacity.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from coord.failure import (
    FailureDetector,
    PeerId,
    PhiAccrualDetector,
    PhiConfig,
    Recover,
    Suspect,
    TimeoutConfig,
    TimeoutDetector,
)
from fs.meta.commands import ServerState
from fs.meta.liveness_protocol import ServerView
from fs.meta.protocol import ChunkServerInfo, Heartbeat
from fs.meta.state import ServerRec
from fs.types import CHUNK_SIZE, ServerId

PHI = "phi"
TIMEOUT = "timeout"
DETECTORS = (PHI, TIMEOUT)


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """How the leader judges chunk servers (docs/fs-meta.md, "Failure detection")."""

    detector: str = PHI  # "phi" (adaptive) or "timeout" (fixed)
    phi_threshold: float = 8.0  # suspect when phi exceeds this (1e-8 odds of mere lateness)
    phi_window: int = 100  # heartbeat intervals remembered per server
    phi_min_std: float = 0.2  # seconds; floor of the interval std-dev (tiny jitter is no signal)
    phi_pause: float = 1.0  # seconds of extra silence always tolerated (GC, a busy disk)
    phi_first_interval: float = 1.0  # the interval assumed before a server has two
    suspect_after: float = 3.0  # seconds of silence, with the timeout detector
    dead_after: float = 15.0  # seconds of silence, while suspected, before a server is dead
    grace: float = 5.0  # seconds after taking over before this leader suspects anyone
    free_interval: float = 30.0  # seconds between free-space updates to the state
    free_jump: float = 0.05  # fraction of capacity that forces an earlier update

    def phi_config(self) -> PhiConfig:
        return PhiConfig(threshold=self.phi_threshold, window=self.phi_window,
                         min_std=self.phi_min_std, acceptable_pause=self.phi_pause,
                         first_interval=self.phi_first_interval)

    def timeout_config(self) -> TimeoutConfig:
        return TimeoutConfig(timeout=self.suspect_after)

    def earliest_suspicion(self) -> float:
        """A lower bound of the silence before any server can be suspected: the
        timeout, or phi's pause allowance (phi cannot cross the threshold sooner)."""
        return self.suspect_after if self.detector == TIMEOUT else self.phi_pause

    def validate(self) -> LivenessConfig:
        """Self, or ValueError naming the field (DetectorConfigError is a ValueError)."""
        if self.detector not in DETECTORS:
            raise ValueError(f"liveness detector {self.detector!r}: expected one of {DETECTORS}")
        self.phi_config().validate()
        self.timeout_config().validate()
        for name in ("dead_after", "free_interval"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"liveness {name} must be a finite number > 0, got {value}")
        if not math.isfinite(self.grace) or self.grace < 0:
            raise ValueError(f"liveness grace must be a finite number >= 0, got {self.grace}")
        if not 0 < self.free_jump <= 1:
            raise ValueError(f"liveness free_jump must be in (0, 1], got {self.free_jump}")
        if self.dead_after < self.earliest_suspicion():
            # A death is a suspicion that lasted: it cannot come before any suspicion can.
            raise ValueError(f"liveness dead_after {self.dead_after} s is shorter than the "
                             f"earliest possible suspicion ({self.earliest_suspicion()} s)")
        return self

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> LivenessConfig:
        """A validated config from a `[liveness]` table (tools/ parse the TOML);
        unknown keys and wrongly typed values are a ValueError."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"unknown liveness setting {key!r} (known: {sorted(known)})")
            kwargs[key] = _typed(key, str(known[key].type), value)
        return cls(**kwargs).validate()  # type: ignore[arg-type]


def _typed(key: str, kind: str, value: object) -> object:
    """`value` checked against the annotation `kind` ("str", "int" or "float")."""
    if isinstance(value, bool) or (kind == "str") != isinstance(value, str):
        raise ValueError(f"liveness {key}: expected {kind}, got {value!r}")
    if kind == "int" and not isinstance(value, int):
        raise ValueError(f"liveness {key}: expected an integer, got {value!r}")
    if kind == "float":
        if not isinstance(value, int | float):
            raise ValueError(f"liveness {key}: expected a number, got {value!r}")
        return float(value)
    return value


class ServerStatus(enum.Enum):
    ALIVE = "alive"  # heard by this leader, trusted by the detector
    WAITING = "waiting"  # recorded alive, not heard by this leader yet, not suspected yet
    SUSPECTED = "suspected"  # the detector suspects it; not placed on, lease not renewed
    DEAD = "dead"  # suspected and silent for dead_after: recorded dead


@dataclass(frozen=True, slots=True)
class Suspected:
    server: ServerId
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Recovered:
    server: ServerId
    at: float
    reason: str
    was_dead: bool  # it had been declared dead: `updates()` records it alive again


@dataclass(frozen=True, slots=True)
class Died:
    server: ServerId
    at: float
    reason: str


LivenessEvent = Suspected | Recovered | Died


@dataclass(slots=True)
class _Server:
    address: str
    capacity: int
    free: int  # last reported, minus the chunks placed since
    last_seen: float  # latest heartbeat; when this leader took over, if not heard yet
    heard: bool  # this leader got a heartbeat from it
    full_seen: bool  # this leader got a full replica report from it
    recorded_at: float = float("-inf")  # when its free space was last written to the state
    gap: float = 0.0  # the silence its latest heartbeat ended (for the recovery reason)
    intervals: int = 0  # heartbeat intervals the detector has seen since its history began
    suspected_at: float | None = None  # when the current suspicion began
    dead: bool = False  # declared dead (suspected, silent >= dead_after) and not heard since
    reason: str = ""  # the reason of the latest suspicion, recovery or death


def _peer(server: ServerId) -> PeerId:
    return PeerId(str(server))


class Liveness:
    def __init__(self, config: LivenessConfig | None = None) -> None:
        self.config = (config or LivenessConfig()).validate()
        self._servers: dict[ServerId, _Server] = {}
        self._leader_since: float | None = None  # None: not leading
        self._phi: PhiAccrualDetector | None = None  # the detector, when it is phi
        self._detector: FailureDetector = self._new_detector()
        self._events: list[LivenessEvent] = []  # reported, not yet taken by the driver

    def _new_detector(self) -> FailureDetector:
        if self.config.detector == PHI:
            self._phi = PhiAccrualDetector(self.config.phi_config())
            return self._phi
        self._phi = None
        return TimeoutDetector(self.config.timeout_config())

    # --- leadership -------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._leader_since is not None

    def lead(self, now: float) -> bool:
        """This member is the leader (idempotent); the view and the detector start empty.
        Returns whether this call started the leadership (and its grace period)."""
        if self._leader_since is not None:
            return False
        self._reset()
        self._leader_since = now
        return True

    def step_down(self) -> None:
        self._reset()
        self._leader_since = None

    def _reset(self) -> None:
        self._servers.clear()
        self._detector = self._new_detector()
        self._events.clear()

    def grace_left(self, now: float) -> float:
        """Seconds left of this leader's grace period (0 when over or not leading)."""
        if self._leader_since is None:
            return 0.0
        return max(0.0, self._leader_since + self.config.grace - now)

    def warming_up(self, now: float) -> bool:
        """Too early to place chunks or grant leases: within the grace period, no
        server heard yet (placement would wrongly say ENOSPC) or some server
        recorded alive not heard yet (placement would give a new chunk fewer
        replicas than the cluster has, and nothing re-replicates it later).
        Call `watch` with the recorded servers first so they are known."""
        if self._leader_since is None:
            return True
        if self.grace_left(now) <= 0:
            return False
        self.poll(now)
        return not self.live(now) or any(
            self.status(sid) is ServerStatus.WAITING for sid in self._servers)

    # --- heartbeats and detection -----------------------------------------------------------

    def heartbeat(self, now: float, hb: Heartbeat) -> bool:
        """Record a heartbeat; returns whether the leader still wants a full report."""
        old = self._servers.get(hb.server)
        if old is None:
            server = _Server(hb.address, hb.capacity, hb.free, now, True, hb.full)
            self._servers[hb.server] = server
        else:
            server = old
            server.gap = max(0.0, now - old.last_seen)
            server.address, server.capacity, server.free = hb.address, hb.capacity, hb.free
            server.last_seen = max(now, old.last_seen)
            server.heard = True
            server.full_seen = old.full_seen or hb.full
        was_suspected = server.suspected_at is not None
        learned = server.intervals >= 2  # the detector knew its rhythm before this gap
        if old is not None:
            server.intervals += 1  # the detector records the interval since its last word
        self._detector.heartbeat(_peer(hb.server), now)
        self.poll(now)  # a suspected server recovers at once, not at the next tick
        if was_suspected and server.suspected_at is None and learned:
            # The outage is not a sample of a known rhythm: kept in phi's window it
            # would make the detector patient for the next `phi_window` heartbeats (a
            # crash right after a 6 s pause took 11.7 s to suspect instead of 2.5 s).
            # Without a known rhythm the gap is kept: it is how a slow server's real
            # interval is learned, instead of being suspected at every heartbeat.
            self._detector.forget(_peer(hb.server))
            self._detector.monitor(_peer(hb.server), now)
            server.intervals = 0
        return not server.full_seen

    def poll(self, now: float) -> None:
        """Let the detector judge the silences up to `now`; declare the long-suspected dead."""
        if self._leader_since is None or self.grace_left(now) > 0:
            return
        for event in self._detector.check(now):
            self._on_detector(event)
        dead_after = self.config.dead_after
        for sid, s in self._servers.items():
            silence = now - s.last_seen
            if s.suspected_at is None or s.dead or silence < dead_after:
                continue
            s.dead = True
            s.reason = (f"suspected for {now - s.suspected_at:.1f} s, silent {silence:.1f} s "
                        f">= dead timeout {dead_after:.1f} s")
            self._events.append(Died(sid, now, s.reason))

    def _on_detector(self, event: Suspect | Recover) -> None:
        sid = ServerId(int(event.peer))
        s = self._servers.get(sid)
        if s is None:
            return  # not ours to judge (cannot happen: every watched peer is in the view)
        if isinstance(event, Suspect):
            s.suspected_at = event.at
            s.reason = event.reason if s.heard else (
                f"never heard by this leader; {event.reason}")
            self._events.append(Suspected(sid, event.at, s.reason))
            return
        was_dead = s.dead
        s.suspected_at, s.dead = None, False
        s.reason = f"heartbeat after {s.gap:.1f} s; {event.reason}"
        self._events.append(Recovered(sid, event.at, s.reason, was_dead))

    def take_events(self) -> list[LivenessEvent]:
        """The suspicions, recoveries and deaths since the last call, in order."""
        events, self._events = self._events, []
        return events

    def status(self, server: ServerId) -> ServerStatus | None:
        """The opinion as of the last `poll` (None: not in this leader's view)."""
        s = self._servers.get(server)
        if s is None:
            return None
        if s.dead:
            return ServerStatus.DEAD
        if s.suspected_at is not None:
            return ServerStatus.SUSPECTED
        return ServerStatus.ALIVE if s.heard else ServerStatus.WAITING

    def phi(self, now: float, server: ServerId) -> float:
        """The current phi of `server` (-1 with the timeout detector or when unknown)."""
        if self._phi is None or server not in self._servers:
            return -1.0
        return self._phi.phi(_peer(server), now)

    # --- placement ---------------------------------------------------------------------------

    def is_live(self, now: float, server: ServerId) -> bool:
        """Heard by this leader and not suspected (as of `now`)."""
        self.poll(now)
        return self.status(server) is ServerStatus.ALIVE

    def live(self, now: float) -> tuple[ServerId, ...]:
        """Live servers, most free space first (ties by id)."""
        self.poll(now)
        alive = [(sid, s) for sid, s in self._servers.items()
                 if self.status(sid) is ServerStatus.ALIVE]
        alive.sort(key=lambda item: (-item[1].free, item[0]))
        return tuple(sid for sid, _ in alive)

    def placement(self, now: float, n: int) -> tuple[ServerId, ...]:
        chosen = self.live(now)[:n]
        for sid in chosen:
            server = self._servers[sid]
            server.free = max(0, server.free - CHUNK_SIZE)
        return chosen

    def holders(self, now: float, recorded: Mapping[ServerId, ServerRec]) -> tuple[ServerId, ...]:
        """Servers whose replicas still count (not dead: alive, waiting or suspected), by id;
        what under-replication is judged against."""
        self.watch(recorded)
        self.poll(now)
        return tuple(sorted(sid for sid, s in self._servers.items() if not s.dead))

    # --- what to record in the replicated state ---------------------------------------------

    def watch(self, recorded: Mapping[ServerId, ServerRec]) -> None:
        """Monitor the servers recorded alive that this leader has not heard from, as if
        they had sent a heartbeat when it took over (the grace period is their chance)."""
        since = self._leader_since
        if since is None:
            return
        for sid, rec in recorded.items():
            if sid not in self._servers and rec.alive:
                self._servers[sid] = _Server(rec.address, rec.capacity, rec.free, since,
                                             False, False, recorded_at=since)
                self._detector.monitor(_peer(sid), since)

    def _update(self, now: float, sid: ServerId, rec: ServerRec | None) -> ServerState | None:
        s = self._servers[sid]
        alive = not s.dead
        changed = rec is None or (rec.address, rec.capacity, rec.alive) != (
            s.address, s.capacity, alive)
        moved = rec is not None and abs(rec.free - s.free) > self.config.free_jump * max(
            1, s.capacity)
        stale = rec is not None and rec.free != s.free and (
            now - s.recorded_at >= self.config.free_interval)
        if not (changed or moved or stale):
            return None
        s.recorded_at = now
        return ServerState(sid, s.address, s.capacity, s.free, alive)

    def updates(self, now: float, recorded: Mapping[ServerId, ServerRec]) -> list[ServerState]:
        """ServerState commands that bring the recorded state in line with this view:
        new servers, changed addresses, deaths, recoveries and free-space drift."""
        if self._leader_since is None:
            return []
        self.watch(recorded)
        self.poll(now)
        out = []
        for sid in sorted(self._servers):
            update = self._update(now, sid, recorded.get(sid))
            if update is not None:
                out.append(update)
        return out

    # --- views for tools ---------------------------------------------------------------------

    def info(self, now: float, recorded: Mapping[ServerId, ServerRec]) -> list[ChunkServerInfo]:
        """`meta.servers` rows: `alive` means placeable (heard and not suspected)."""
        self.watch(recorded)
        self.poll(now)
        out = []
        for sid in sorted(set(self._servers) | set(recorded)):
            s = self._servers.get(sid)
            if s is not None:
                silent = now - s.last_seen if s.heard else -1.0
                out.append(ChunkServerInfo(sid, s.address, s.capacity, s.free,
                                           self.status(sid) is ServerStatus.ALIVE, silent))
            else:
                rec = recorded[sid]
                out.append(ChunkServerInfo(sid, rec.address, rec.capacity, rec.free, False, -1.0))
        return out

    def view(self, now: float, recorded: Mapping[ServerId, ServerRec]) -> list[ServerView]:
        """`meta.liveness` rows: every known server with the detector's opinion and reason."""
        self.watch(recorded)
        self.poll(now)
        out = []
        for sid in sorted(set(self._servers) | set(recorded)):
            rec = recorded.get(sid)
            rec_alive = rec is not None and rec.alive
            s = self._servers.get(sid)
            if s is None:  # recorded dead before this leader, never heard since
                assert rec is not None
                out.append(ServerView(sid, rec.address, ServerStatus.DEAD.value, -1.0, -1.0,
                                      -1.0, "recorded dead by an earlier leader", rec_alive))
                continue
            status = self.status(sid)
            assert status is not None
            suspected = -1.0 if s.suspected_at is None else now - s.suspected_at
            out.append(ServerView(sid, s.address, status.value,
                                  now - s.last_seen if s.heard else -1.0,
                                  self.phi(now, sid), suspected, s.reason, rec_alive))
        return out
