"""A whole chunk server: store, RPC service, heartbeats, under one nursery.

`serve_chunk_server(config, sink)` opens the store (recovering it), serves
`chunk.*` on `config.listen`, reports to the metadata leader through
`sink`, and reports readiness with a `RunningChunkServer` (its address and
`stop()`).  `stop()` is the graceful way out: no new calls are accepted,
calls in progress get `drain_timeout` to finish, then everything else is
cancelled.  Cancelling directly is abrupt but still safe: store calls
already in worker threads are waited for (trio does not abandon them) and
the store is closed only after every task has ended, so no store call
ever runs against a closed index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from coord.rpc import ClientConfig, Router, RpcClient, RpcServer, ServerConfig, TcpConnector
from coord.rpc.transport import parse_tcp_address
from fs.chunk.disk import DiskChunkStore
from fs.chunk.heartbeat import HeartbeatSink, Reporter, heartbeat_loop
from fs.chunk.service import ChunkService, ServiceConfig
from fs.types import CHUNK_SIZE, ServerId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkServerConfig:
    server_id: ServerId
    listen: str  # host:port to bind (port 0: any)
    data_dir: Path
    secret: bytes
    meta_endpoints: tuple[str, ...] = ()
    advertise: str = ""  # address told to the leader; default: the bound address
    heartbeat_interval: float = 1.0
    full_report_every: int = 60  # heartbeats; deltas in between
    staging_bytes: int = 256 << 20
    staging_ttl: float = 60.0
    order_wait: float = 5.0
    rpc_timeout: float = 30.0  # default budget of our calls to other servers

    def validate(self) -> ChunkServerConfig:
        if not 0 <= self.server_id < 1 << 63:
            raise ValueError(f"server id {self.server_id} out of range")
        parse_tcp_address(self.listen)
        for endpoint in self.meta_endpoints:
            parse_tcp_address(endpoint)
        if self.heartbeat_interval <= 0 or self.rpc_timeout <= 0:
            raise ValueError("heartbeat_interval and rpc_timeout must be positive")
        if self.staging_bytes < CHUNK_SIZE:
            raise ValueError(f"staging must hold at least one chunk ({CHUNK_SIZE} bytes)")
        if not self.secret:
            raise ValueError("the cluster secret must not be empty")
        return self


@dataclass
class RunningChunkServer:
    address: str  # "host:port" it serves on (the advertised one)
    service: ChunkService
    _rpc: RpcServer
    _scope: trio.CancelScope

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, let running calls finish (bounded), then end."""
        with trio.move_on_after(drain_timeout):
            await self._rpc.shutdown()
        self._scope.cancel()


async def serve_chunk_server(
    config: ChunkServerConfig, sink: HeartbeatSink, *,
    task_status: trio.TaskStatus[RunningChunkServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the chunk server until stopped or cancelled."""
    config.validate()
    store = await trio.to_thread.run_sync(DiskChunkStore, config.data_dir, config.server_id)
    try:
        await _serve(config, store, sink, task_status)
    finally:
        store.close()


async def _serve(config: ChunkServerConfig, store: DiskChunkStore, sink: HeartbeatSink,
                 task_status: trio.TaskStatus[RunningChunkServer]) -> None:
    host, port = parse_tcp_address(config.listen)
    # Bind first, so the advertised address carries the real port when 0 was asked.
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    address = config.advertise or f"{bound_host}:{bound_port}"
    client_config = ClientConfig(node_id=config.server_id, secret=config.secret, role="chunk",
                                 default_timeout=config.rpc_timeout,
                                 attempt_timeout=min(5.0, config.rpc_timeout))
    async with RpcClient(client_config, TcpConnector()) as peers, \
            trio.open_nursery() as nursery:
        service = ChunkService(
            ServiceConfig(server_id=config.server_id, address=address,
                          staging_bytes=config.staging_bytes, staging_ttl=config.staging_ttl,
                          order_wait=config.order_wait),
            store, peers, sink)
        rpc_server = RpcServer(
            ServerConfig(node_id=config.server_id, secret=config.secret, role="chunk"),
            Router().include(service))
        await nursery.start(rpc_server.serve, listeners)
        nursery.start_soon(service.run, name="chunk service background")
        reporter = Reporter(config.server_id, address, config.full_report_every)
        nursery.start_soon(heartbeat_loop, sink, reporter, service.snapshot,
                           service.delete_if_unchanged, config.heartbeat_interval,
                           name="heartbeat")
        log.info("chunk server %d serving on %s, data in %s", config.server_id, address,
                 config.data_dir)
        task_status.started(RunningChunkServer(address, service, rpc_server,
                                               nursery.cancel_scope))
