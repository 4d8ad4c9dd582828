"""`MetaLink`: the real `HeartbeatSink`, over `meta.heartbeat` and `meta.bad_replica`
(fs/meta/protocol.py) to the metadata leader.

Leader discovery, NOT_LEADER redirects, backoff and the time bound are the
shared `coord.kv.remote.LeaderRouter`'s (one retry policy for every client
of the metadata service).  Invariant: each call returns an OK reply or
raises within `timeout` seconds; the heartbeat loop treats a raise as a
missed heartbeat and tries again at the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from coord.kv.remote import LeaderRouter
from coord.rpc import RpcClient
from fs.chunk.heartbeat import HeartbeatAnswer, HeartbeatReport
from fs.meta.protocol import BadReplica, BadReplicaReply, Heartbeat, HeartbeatReply
from fs.types import ChunkHandle, ServerId

log = logging.getLogger(__name__)


class MetaLink:
    def __init__(self, rpc: RpcClient, endpoints: Sequence[str], timeout: float = 3.0) -> None:
        self._rpc = rpc
        self._router = LeaderRouter(endpoints, timeout=timeout)
        self._timeout = timeout

    @property
    def leader(self) -> str | None:
        """The address of the member that last answered OK (None: unknown)."""
        return self._router.leader

    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        message = Heartbeat(report.server_id, report.address, report.capacity, report.free,
                            tuple(report.chunks), report.full)

        async def attempt(address: str) -> HeartbeatReply:
            return await self._rpc.call(address, message, timeout=self._timeout)

        reply = await self._router.call(attempt)
        return HeartbeatAnswer(list(reply.delete), reply.send_full)

    async def bad_replica(self, server_id: ServerId, handle: ChunkHandle) -> None:
        message = BadReplica(handle, server_id, "checksum mismatch")

        async def attempt(address: str) -> BadReplicaReply:
            return await self._rpc.call(address, message, timeout=self._timeout)

        reply = await self._router.call(attempt)
        if reply.errno:
            log.warning("leader kept bad replica of chunk %d (errno %d): it is the last one",
                        handle, reply.errno)
