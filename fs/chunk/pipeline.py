"""Moving data between chunk servers: the push chain.  (The primary's calls
to its secondaries - prepares, decisions - are in fs/chunk/primary.py.)

Invariants:

* `forward_push` delivers a push to the servers of a chain in chain order,
  each of which forwards to the rest before it answers (store-and-forward
  per message; a large write pipelines when the client cuts it into parts).
  A server that cannot be reached is skipped and the rest of the chain is
  tried without it, so one dead server does not starve the others; the
  result lists exactly the servers that acknowledged the data.
* Every call is bounded by the deadline passed in (trio clock).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import trio

from coord.rpc import RpcClient, RpcError
from fs.chunk.protocol import ChunkPush

log = logging.getLogger(__name__)

ANSWER_SLACK = 0.2  # seconds kept back from a hop's budget to answer our own caller


def hop_deadline(deadline: float, limit: float) -> float:
    """The deadline for a call made on behalf of a caller whose deadline is
    `deadline`: a little earlier (to answer in time), at most `limit` away."""
    now = trio.current_time()
    if math.isinf(deadline):
        return now + limit
    return min(deadline - ANSWER_SLACK, now + limit)


async def forward_push(
    rpc: RpcClient, chain: Sequence[str], make: Callable[[list[str]], ChunkPush],
    deadline: float,
) -> list[str]:
    """Push to chain[0] (which forwards to the rest), skipping dead servers.

    `make(rest)` builds the push for the head with `rest` as its chain.
    Returns the addresses that confirmed they hold the data.
    """
    remaining = list(chain)
    while remaining and trio.current_time() < deadline:
        head, rest = remaining[0], remaining[1:]
        try:
            reply = await rpc.call(head, make(rest), deadline=deadline)
        except RpcError as exc:
            log.info("push to %s failed (%s); skipping it", head, exc)
            remaining = rest
            continue
        return [head, *reply.stored]
    return []
