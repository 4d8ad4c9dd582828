"""Lease vocabulary: ids, configuration, the holder's messages and the grantor's answers.

Invariants these types carry:

* A `FencingToken` is issued by a grantor for one *new* lease and is strictly
  greater than every token that grantor (or any earlier incarnation of it whose
  high-water mark was persisted) ever sent for any resource.  A renewal keeps
  the token; only a new grant raises it.
* Every instant (`now`, `expires_at`) is seconds on the clock of the node that
  produced it (a monotonic clock).  Instants never cross the network: between
  nodes only *durations* travel (`Granted.duration`, `Denied.retry_in`),
  because two nodes' monotonic clocks share neither origin nor rate.
* `LeaseConfig.validate()` enforces `epsilon >= drift_bound * max_duration`,
  the condition under which the holder's early expiry precedes the grantor's
  late expiry in true time (docs/leases.md derives it).

All values are frozen; nothing here does I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NewType

ResourceId = NewType("ResourceId", str)  # e.g. "chunk/4711", "session/client-7"
HolderId = NewType("HolderId", str)  # e.g. "chunk-server-3", "client-7"
FencingToken = NewType("FencingToken", int)  # > 0; 0 means "none issued yet"
RequestId = NewType("RequestId", int)  # per LeaseHolder, increasing

NO_TOKEN = FencingToken(0)


class ConfigError(ValueError):
    """A configuration whose fields contradict each other (raised by `validate()`)."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Timing parameters shared by a grantor and its holders (seconds).

    `drift_bound` is rho: every clock runs at a rate within [1-rho, 1+rho] of
    true time.  CLOCK_MONOTONIC is slewed by NTP by up to 500 ppm and quartz
    adds ~100 ppm, hence the generous default of 1000 ppm.
    """

    duration: float = 10.0  # default lease term a holder asks for
    max_duration: float = 60.0  # the grantor clamps every term to this
    drift_bound: float = 1e-3  # rho
    epsilon: float = 0.1  # the margin: holder expires this much early, grantor this much late
    renew_fraction: float = 0.5  # a holder renews after this fraction of its term

    def validate(self) -> LeaseConfig:
        """Raise `ConfigError` unless the fields are consistent; return self for chaining."""
        for name in ("duration", "max_duration", "epsilon", "drift_bound", "renew_fraction"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.duration <= 0 or self.duration > self.max_duration:
            raise ConfigError(
                f"need 0 < duration <= max_duration, got {self.duration} / {self.max_duration}"
            )
        if self.drift_bound >= 1:
            raise ConfigError(f"drift_bound is a rate error (< 1), got {self.drift_bound}")
        if self.epsilon < self.min_epsilon:
            raise ConfigError(
                f"epsilon {self.epsilon} < drift_bound * max_duration = {self.min_epsilon}: "
                "a holder could outlive the grantor's view of its lease"
            )
        if not 0 < self.renew_fraction < 1:
            raise ConfigError(f"renew_fraction must be in (0, 1), got {self.renew_fraction}")
        # A holder must get to renew before its own (early) expiry of a default term.
        if self.renew_fraction * self.duration >= self.duration - self.epsilon:
            raise ConfigError(
                f"renewal at {self.renew_fraction} of {self.duration} s is not before the "
                f"holder's early expiry at {self.duration - self.epsilon} s"
            )
        return self

    @property
    def min_epsilon(self) -> float:
        """The smallest safe margin: rho * max_duration (exact, see docs/leases.md)."""
        return self.drift_bound * self.max_duration

    @property
    def recovery_wait(self) -> float:
        """How long a restarted grantor must refuse new grants (its own clock)."""
        return self.max_duration + self.epsilon


# --------------------------------------------------------------------------- holder -> grantor


class RequestKind(enum.Enum):
    ACQUIRE = "acquire"  # the holder holds no lease it knows of
    RENEW = "renew"  # the holder extends the lease identified by `token`


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """Sent by a holder; the grantor answers with `Granted` or `Denied` echoing `request_id`."""

    request_id: RequestId
    resource: ResourceId
    holder: HolderId
    kind: RequestKind
    token: FencingToken  # NO_TOKEN for ACQUIRE
    duration: float


@dataclass(frozen=True, slots=True)
class LeaseRelease:
    """Sent by a holder that has already stopped acting as holder."""

    resource: ResourceId
    holder: HolderId
    token: FencingToken


# --------------------------------------------------------------------------- grantor answers


class DenyReason(enum.Enum):
    HELD = "held by another holder"
    RECOVERING = "grantor restarted; waiting out leases it may have forgotten"
    NOT_HOLDER = "requester does not hold this lease"
    STALE_TOKEN = "token is not the current lease's token"
    EXPIRED = "lease already expired at the grantor"
    REVOKED = "lease is revoked and will not be renewed"
    INVALID = "malformed request"


@dataclass(frozen=True, slots=True)
class Granted:
    """A new lease or an extension of the current one.

    `expires_at` is on the grantor's clock and includes its late margin; the
    holder must ignore it and use `duration` from its request's send time.
    If `persist_high_water` is set, the driver must durably store it before
    sending this grant (persist before you speak).
    """

    resource: ResourceId
    holder: HolderId
    token: FencingToken
    duration: float
    expires_at: float
    renewal: bool  # True if the token was already held (an extension)
    persist_high_water: FencingToken | None = None


@dataclass(frozen=True, slots=True)
class Denied:
    resource: ResourceId
    holder: HolderId
    reason: DenyReason
    current_holder: HolderId | None  # None if free or unknown (recovering)
    retry_in: float  # seconds from now after which a new request may succeed (0: any time)


@dataclass(frozen=True, slots=True)
class Released:
    resource: ResourceId
    holder: HolderId
    token: FencingToken
    freed: bool  # False if the release did not match the current lease (a no-op)


@dataclass(frozen=True, slots=True)
class Expired:
    """Reported by `expire_due`: the grantor's late expiry passed without renewal."""

    resource: ResourceId
    holder: HolderId
    token: FencingToken
    expired_at: float  # grantor clock


@dataclass(frozen=True, slots=True)
class Revoked:
    """The lease will not be renewed; the resource is free from `free_at` (grantor clock)."""

    resource: ResourceId
    holder: HolderId
    token: FencingToken
    free_at: float


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """Who holds what, without timing: what a grantor persists (e.g. in Raft state)."""

    resource: ResourceId
    holder: HolderId
    token: FencingToken


GrantResult = Granted | Denied
