"""Clock-offset estimation between two nodes over the RPC layer (NTP/Cristian).

Every ddfs server answers `clock.probe` with two readings of its wall clock:
when the request arrived (t2) and just before the reply leaves (t3).  The
caller brackets the call with its own readings (t1, t4) and feeds the four
timestamps to `coord.clock.offset`, which keeps the sample with the smallest
round trip (best of N).  Used by `ddfs raft status` (and later `ddfs status`)
to show each member's skew; leases never depend on it (they send durations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from coord.clock.offset import OffsetEstimate, estimate_offset
from coord.rpc import CallContext, Request, Router, RpcClient, Semantics, request


@dataclass(frozen=True, slots=True)
class ProbeReply:
    received_ns: int  # t2: server clock when the request arrived
    sent_ns: int  # t3: server clock just before replying


@request("clock.probe", semantics=Semantics.MAYBE)
@dataclass(frozen=True, slots=True)
class ClockProbe(Request[ProbeReply]):
    pass


def add_clock_routes(router: Router, clock: Callable[[], int] = time.time_ns) -> None:
    """Serve `clock.probe` from `clock` (wall time in ns by default)."""

    def probe(req: ClockProbe, ctx: CallContext) -> ProbeReply:
        t2 = clock()
        # A plain handler runs inline; nothing happens between the two readings
        # but the reply's encoding, so t3 - t2 is the server's processing time.
        return ProbeReply(t2, clock())

    router.add(ClockProbe, probe)


async def measure_offset(
    rpc: RpcClient, address: str, *, samples: int = 8, timeout: float = 1.0,
    clock: Callable[[], int] = time.time_ns,
) -> OffsetEstimate:
    """The offset of `address`'s clock from ours (ns, positive: theirs is ahead)."""

    async def probe() -> tuple[int, int]:
        reply = await rpc.call(address, ClockProbe(), timeout=timeout)
        return reply.received_ns, reply.sent_ns

    return await estimate_offset(probe, clock, samples)
