"""`MetaLink`: the real `HeartbeatSink`, over `meta.heartbeat` and `meta.bad_replica`
(fs/meta/protocol.py) to the metadata leader.

Invariants:

* The link remembers the member that last answered OK (the leader) and
  tries it first; a NOT_LEADER reply with a hint goes to the hinted
  leader next, anything else (UNAVAILABLE, BUSY, an RPC error) moves on
  to the next member of `endpoints`.
* A call makes at most `2 * len(endpoints) + 1` attempts and is bounded by
  `timeout` seconds in total; then it raises `MetaUnavailable`.  Retries
  and backoff for these calls live here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from coord.rpc import RpcClient, RpcError
from fs.chunk.heartbeat import HeartbeatAnswer, HeartbeatReport
from fs.meta.protocol import NOT_LEADER, OK, BadReplica, Heartbeat
from fs.types import ChunkHandle, ServerId

log = logging.getLogger(__name__)


class MetaUnavailable(Exception):
    """No metadata member accepted the call within its bounds."""


class MetaLink:
    def __init__(self, rpc: RpcClient, endpoints: Sequence[str], timeout: float = 3.0) -> None:
        if not endpoints:
            raise ValueError("MetaLink needs at least one metadata endpoint")
        self._rpc = rpc
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._leader = self._endpoints[0]  # our best guess

    @property
    def leader(self) -> str:
        return self._leader

    async def _call(self, request: Any) -> Any:
        """Call the leader, following redirects; the reply has status OK."""
        target = self._leader
        tried = 0
        deadline = trio.current_time() + self._timeout
        last = "no attempt"
        while tried < 2 * len(self._endpoints) + 1 and trio.current_time() < deadline:
            tried += 1
            try:
                reply = await self._rpc.call(target, request, deadline=deadline)
            except RpcError as exc:
                last = f"{target}: {exc}"
                target = self._next(target)
                continue
            if reply.status == OK:
                self._leader = target
                return reply
            last = f"{target}: {reply.status}"
            if reply.status == NOT_LEADER and reply.leader and reply.leader != target:
                target = reply.leader
            else:
                target = self._next(target)
                await trio.sleep(min(0.05 * tried, 0.5))
        raise MetaUnavailable(f"no metadata leader took {type(request).__name__} ({last})")

    def _next(self, current: str) -> str:
        try:
            i = self._endpoints.index(current)
        except ValueError:
            return self._endpoints[0]
        return self._endpoints[(i + 1) % len(self._endpoints)]

    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        reply = await self._call(Heartbeat(
            report.server_id, report.address, report.capacity, report.free,
            tuple(report.chunks), report.full))
        return HeartbeatAnswer(list(reply.delete), reply.send_full)

    async def bad_replica(self, server_id: ServerId, handle: ChunkHandle) -> None:
        reply = await self._call(BadReplica(handle, server_id, "checksum mismatch"))
        if reply.errno:
            log.warning("leader kept bad replica of chunk %d (errno %d): it is the last one",
                        handle, reply.errno)
