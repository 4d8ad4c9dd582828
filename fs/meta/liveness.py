"""The metadata leader's soft state about chunk servers: liveness, space, placement.

Sans-IO: every method takes `now` (seconds on the leader's monotonic clock).
Nothing here is replicated - a new leader starts empty and rebuilds it from
heartbeats within one heartbeat interval.  What the replicated state needs
(address, capacity, free space, alive) the leader writes with `ServerState`
leader commands, computed by `updates()` from the difference between this
view and the recorded one.

Invariants:

* a server is live iff a heartbeat arrived within `dead_after` seconds;
* a server recorded alive that this leader never heard from is reported
  dead only once the leader has led for `dead_after` seconds (it had its
  chance to send a heartbeat);
* `placement(n)` returns at most n distinct live servers, most free space
  first (ties by id), and charges each one chunk of space so the next
  placements before the next heartbeat spread out;
* free-space updates to the replicated state are rate-limited
  (`free_interval`) unless a server's free space moved by more than
  `free_jump` of its capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fs.meta.commands import ServerState
from fs.meta.protocol import ChunkServerInfo, Heartbeat
from fs.meta.state import ServerRec
from fs.types import CHUNK_SIZE, ServerId


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    dead_after: float = 5.0  # seconds of silence before a server counts as dead
    free_interval: float = 30.0  # seconds between free-space updates to the state
    free_jump: float = 0.05  # fraction of capacity that forces an earlier update

    def validate(self) -> LivenessConfig:
        if self.dead_after <= 0 or self.free_interval <= 0 or not 0 < self.free_jump <= 1:
            raise ValueError(f"bad liveness config {self}")
        return self


@dataclass(slots=True)
class _Server:
    address: str
    capacity: int
    free: int  # last reported, minus the chunks placed since
    last_seen: float
    full_seen: bool  # this leader got a full replica report from it
    recorded_at: float = float("-inf")  # when its free space was last written to the state


class Liveness:
    def __init__(self, config: LivenessConfig | None = None) -> None:
        self.config = (config or LivenessConfig()).validate()
        self._servers: dict[ServerId, _Server] = {}
        self._leader_since: float | None = None

    # --- leadership -------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._leader_since is not None

    def lead(self, now: float) -> None:
        """This member is the leader (idempotent); the view starts empty."""
        if self._leader_since is None:
            self._leader_since = now
            self._servers.clear()

    def step_down(self) -> None:
        self._leader_since = None
        self._servers.clear()

    def warming_up(self, now: float) -> bool:
        """Too early to tell live from dead: leading for less than `dead_after` and
        no server heard yet (placement would wrongly say ENOSPC)."""
        if self._leader_since is None:
            return True
        return not self.live(now) and now - self._leader_since < self.config.dead_after

    # --- heartbeats -------------------------------------------------------------------------

    def heartbeat(self, now: float, hb: Heartbeat) -> bool:
        """Record a heartbeat; returns whether the leader still wants a full report."""
        old = self._servers.get(hb.server)
        full_seen = hb.full or (old is not None and old.full_seen)
        recorded_at = old.recorded_at if old is not None else float("-inf")
        self._servers[hb.server] = _Server(
            hb.address, hb.capacity, hb.free, now, full_seen, recorded_at
        )
        return not full_seen

    def is_live(self, now: float, server: ServerId) -> bool:
        s = self._servers.get(server)
        return s is not None and now - s.last_seen <= self.config.dead_after

    def live(self, now: float) -> tuple[ServerId, ...]:
        """Live servers, most free space first (ties by id)."""
        alive = [(sid, s) for sid, s in self._servers.items() if self.is_live(now, sid)]
        alive.sort(key=lambda item: (-item[1].free, item[0]))
        return tuple(sid for sid, _ in alive)

    def placement(self, now: float, n: int) -> tuple[ServerId, ...]:
        chosen = self.live(now)[:n]
        for sid in chosen:
            server = self._servers[sid]
            server.free = max(0, server.free - CHUNK_SIZE)
        return chosen

    # --- what to record in the replicated state ---------------------------------------------

    def _update(self, now: float, sid: ServerId, rec: ServerRec | None) -> ServerState | None:
        s = self._servers[sid]
        alive = self.is_live(now, sid)
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
        """ServerState commands that bring the recorded state in line with this view."""
        if self._leader_since is None:
            return []
        out = []
        for sid in sorted(self._servers):
            update = self._update(now, sid, recorded.get(sid))
            if update is not None:
                out.append(update)
        patient = now - self._leader_since >= self.config.dead_after
        for sid, rec in sorted(recorded.items()):
            if sid not in self._servers and rec.alive and patient:
                out.append(ServerState(sid, rec.address, rec.capacity, rec.free, False))
        return out

    def info(self, now: float, recorded: Mapping[ServerId, ServerRec]) -> list[ChunkServerInfo]:
        out = []
        for sid in sorted(set(self._servers) | set(recorded)):
            s = self._servers.get(sid)
            if s is not None:
                out.append(ChunkServerInfo(sid, s.address, s.capacity, s.free,
                                           self.is_live(now, sid), now - s.last_seen))
            else:
                rec = recorded[sid]
                out.append(ChunkServerInfo(sid, rec.address, rec.capacity, rec.free, False, -1.0))
        return out
