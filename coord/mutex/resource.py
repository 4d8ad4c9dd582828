"""The protected resource of `ddfs coord run mutex`: a fencing guard plus an audit.

Holders announce `enter` (with their fencing token) when they start acting
on the resource and `exit` when they stop.  The resource refuses an `enter`
whose token is older than one it has accepted (`FencingGuard`), and audits
mutual exclusion: a violation is an accepted `enter` while another holder
was inside, *if that other holder later exits* (a holder killed inside never
exits and is rightly overtaken; one that exits was alive and acting).

Invariants: the accepted tokens never decrease; `violations` counts each
overlapping pair once; nothing here reads a clock or does I/O (the RPC
handlers in coord.mutex.node call it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coord.lease.fencing import FenceAccepted, FencingGuard
from coord.lease.types import FencingToken, ResourceId
from coord.wire.schema import Request, Semantics, request

RESOURCE = ResourceId("mutex-resource")


@dataclass(slots=True)
class ProtectedResource:
    guard: FencingGuard = field(default_factory=FencingGuard)
    inside: dict[str, FencingToken] = field(default_factory=dict)  # holder -> its token
    overlapped: dict[str, set[str]] = field(default_factory=dict)  # holder -> who entered over it
    accepted: int = 0
    stale: int = 0  # enters refused for an old token
    violations: int = 0
    log: list[tuple[str, str, int, bool]] = field(default_factory=list)  # (what, who, token, ok)

    def enter(self, holder: str, token: FencingToken) -> bool:
        verdict = self.guard.check(RESOURCE, token)
        ok = isinstance(verdict, FenceAccepted)
        self.log.append(("enter", holder, int(token), ok))
        if not ok:
            self.stale += 1
            return False
        self.accepted += 1
        for other in self.inside:
            if other != holder:
                self.overlapped.setdefault(other, set()).add(holder)
        self.inside[holder] = token
        return True

    def exit(self, holder: str, token: FencingToken) -> None:
        self.log.append(("exit", holder, int(token), True))
        if self.inside.get(holder) != token:
            return
        del self.inside[holder]
        # The holder was alive and inside while these entered: mutual exclusion broke.
        self.violations += len(self.overlapped.pop(holder, set()))


@dataclass(frozen=True, slots=True)
class ResReply:
    ok: bool
    reason: str = ""


@request("mutex.res.enter", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ResEnter(Request[ResReply]):
    holder: str
    token: int


@request("mutex.res.exit", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ResExit(Request[ResReply]):
    holder: str
    token: int
