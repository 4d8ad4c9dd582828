"""The fencing guard a protected resource (a chunk server's replica) runs.

Invariant: for each resource, the sequence of tokens `check` accepts is
non-decreasing.  A request carrying a token lower than the highest one
already accepted for that resource comes from a holder whose lease was
superseded (it paused, or its messages were slow) and is rejected, whatever
that holder believes about its lease.  Equal tokens are accepted: one lease
makes many writes.

The guard is what makes leases safe against holders that act late; the
lease timing only keeps *honest, timely* holders from overlapping.  For the
guarantee to survive a restart, the driver persists the new highest token
(`FenceAccepted.raised`) before it applies the write, and rebuilds the guard
from the persisted values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coord.lease.types import NO_TOKEN, FencingToken, ResourceId


@dataclass(frozen=True, slots=True)
class FenceAccepted:
    resource: ResourceId
    token: FencingToken
    raised: bool  # the highest token moved up: persist it before applying the write


@dataclass(frozen=True, slots=True)
class FenceRejected:
    resource: ResourceId
    token: FencingToken
    highest: FencingToken  # the newer token already accepted

    @property
    def reason(self) -> str:
        return f"stale fencing token {self.token} < {self.highest} on {self.resource}"


FenceVerdict = FenceAccepted | FenceRejected


class FencingGuard:
    """Remembers, per resource, the highest fencing token seen; rejects lower ones."""

    __slots__ = ("_highest",)

    def __init__(self, highest: Mapping[ResourceId, FencingToken] | None = None) -> None:
        self._highest: dict[ResourceId, FencingToken] = dict(highest or {})

    def check(self, resource: ResourceId, token: FencingToken) -> FenceVerdict:
        """Admit (and remember) `token` for `resource`, or reject it as stale."""
        highest = self._highest.get(resource, NO_TOKEN)
        if token <= NO_TOKEN:
            # A request with no lease at all is never admitted.
            return FenceRejected(resource, token, highest)
        if token < highest:
            return FenceRejected(resource, token, highest)
        if token == highest:
            return FenceAccepted(resource, token, raised=False)
        self._highest[resource] = token
        return FenceAccepted(resource, token, raised=True)

    def highest(self, resource: ResourceId) -> FencingToken:
        """The highest token accepted for `resource` (NO_TOKEN if none)."""
        return self._highest.get(resource, NO_TOKEN)

    def forget(self, resource: ResourceId) -> None:
        """Drop a resource that no longer exists here (e.g. a deleted chunk replica)."""
        self._highest.pop(resource, None)

    def snapshot(self) -> dict[ResourceId, FencingToken]:
        """The state to persist; `FencingGuard(snapshot)` restores it."""
        return dict(self._highest)
