"""Raft tuning knobs as one frozen value with a `validate()` that checks their relations.

Invariants enforced by `validate()`:
* 0 < heartbeat_interval < election_timeout_min <= election_timeout_max, so a live
  leader's heartbeats reach followers several times per election timeout;
* lease reads (if on) last election_timeout_min - clock_drift_bound > 0 and
  need check-quorum;
* the byte and count limits are positive, so replication always makes progress
  (one entry larger than `max_append_bytes` is still sent alone);
* snapshot_every >= 0 (0 disables snapshots), keep_tail >= 0;
* 0 <= follower_apply_delay < election_timeout_min;
* commit_notify_delay >= 0 (a heartbeat tells the commit index anyway).

Times are plain numbers in the same unit as the `now` the driver passes to the
core (seconds for real drivers, ticks in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A RaftConfig whose fields contradict each other."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    election_timeout_min: float = 1.0  # randomized timeout is drawn from [min, max)
    election_timeout_max: float = 2.0
    heartbeat_interval: float = 0.1  # leader -> follower heartbeat period
    max_append_entries: int = 256  # entries per AppendEntries message
    max_append_bytes: int = 1 << 20  # payload bytes per AppendEntries message
    max_inflight: int = 64  # unacknowledged AppendEntries per follower (pipelining)
    max_inflight_bytes: int = 8 << 20  # unacknowledged payload bytes per follower
    max_uncommitted_bytes: int = 64 << 20  # leader refuses proposals beyond this
    max_apply_bytes: int = 4 << 20  # committed payload handed out per Ready
    check_quorum: bool = True  # leader steps down without a recent majority (§6.2)
    pre_vote: bool = True  # pre-vote phase before a real election (thesis §9.6)
    # Leader-lease reads (thesis §6.4.1, coord/raft/lease.py): off by default; safe only
    # if no two members' clocks disagree by more than clock_drift_bound over one
    # election_timeout_min.  Needs check_quorum (a leader without a quorum steps down).
    lease_reads: bool = False
    clock_drift_bound: float = 0.1  # same unit as the timeouts
    max_learner_lag: int = 1000  # a learner further behind than this is not promoted
    # Snapshots (used by drivers; the core only uses the chunk size): a snapshot is
    # taken every `snapshot_every` applied entries (0: never), and the log is then
    # compacted up to snapshot index - `keep_tail`, so a follower a little behind
    # still catches up from the log instead of a whole snapshot.
    snapshot_every: int = 10000
    keep_tail: int = 1000
    snapshot_chunk_bytes: int = 1 << 20  # bytes per InstallSnapshot message
    # A follower (driver only) lets committed entries wait up to this long to be
    # applied together in one state-store commit, unless a read waits for them
    # (see RaftDriver._applier): nobody waits for a follower's apply otherwise.
    follower_apply_delay: float = 0.01
    # A leader tells followers a new commit index with the next append, or after
    # this long in an append of its own (a follower waiting for a read is told at
    # once); so an idle follower's apply lags by about this much.
    commit_notify_delay: float = 0.02

    def validate(self) -> RaftConfig:
        """Return self if consistent, else raise ConfigError naming the broken relation."""
        if not 0 < self.heartbeat_interval < self.election_timeout_min:
            raise ConfigError(
                f"need 0 < heartbeat_interval ({self.heartbeat_interval}) < "
                f"election_timeout_min ({self.election_timeout_min})"
            )
        if self.election_timeout_max < self.election_timeout_min:
            raise ConfigError(
                f"election_timeout_max ({self.election_timeout_max}) < "
                f"election_timeout_min ({self.election_timeout_min})"
            )
        if self.lease_reads and not (
            self.check_quorum and 0 <= self.clock_drift_bound < self.election_timeout_min
        ):
            raise ConfigError(
                "lease_reads needs check_quorum and 0 <= clock_drift_bound "
                f"({self.clock_drift_bound}) < election_timeout_min ({self.election_timeout_min})"
            )
        for name in (
            "max_learner_lag",
            "max_append_entries",
            "max_append_bytes",
            "max_inflight",
            "max_inflight_bytes",
            "max_uncommitted_bytes",
            "max_apply_bytes",
            "snapshot_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_inflight_bytes < self.max_append_bytes:
            raise ConfigError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) < "
                f"max_append_bytes ({self.max_append_bytes}): one full append could never fly"
            )
        if self.snapshot_every < 0 or self.keep_tail < 0:
            raise ConfigError(
                f"snapshot_every ({self.snapshot_every}) and keep_tail ({self.keep_tail}) "
                "must be >= 0"
            )
        if not 0 <= self.follower_apply_delay < self.election_timeout_min:
            raise ConfigError(
                f"need 0 <= follower_apply_delay ({self.follower_apply_delay}) < "
                f"election_timeout_min ({self.election_timeout_min})"
            )
        if self.commit_notify_delay < 0:
            raise ConfigError(f"commit_notify_delay must be >= 0, got {self.commit_notify_delay}")
        return self
