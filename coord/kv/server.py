"""One member of the replicated KV store: LMDB storage, the KV state
machine, the Raft driver and one RPC server for peers and clients.

`serve_kv_member(config, plugins)` is the generic member: each `MemberPlugin`
adds tables to the store, extensions to the state machine (other state
machines on the same log), RPC routes and a background task.
`serve_member(config)` is what `ddfs meta` runs: the KV store plus the file
system (`fs.meta.server`); the file system lives in fs/, so it is imported
lazily here to keep coord/ free of file-system imports at module level.

Lifecycle: `serve_member` opens the stores, starts the RPC server and the
driver, reports readiness through `task_status.started(address)` and runs
until cancelled; on the way out it stops accepting, cancels the driver and
closes the LMDB environments (no transaction is open at that point: every
storage call runs to completion in its worker thread before the trio task
that awaited it can be cancelled).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import Applied, Extension, KVStateMachine
from coord.kv.service import KvService
from coord.kv.types import KVConfig
from coord.kv.watch import WatchService
from coord.raft.config import RaftConfig
from coord.raft.driver import RaftDriver
from coord.raft.lmdb_store import LmdbRaftStorage
from coord.raft.rpc import RpcTransport, add_digest_route, add_raft_routes
from coord.raft.snapfile import SnapshotFiles
from coord.raft.types import NodeId
from coord.rpc import ClientConfig, Router, RpcClient, RpcServer, ServerConfig, TcpConnector
from coord.rpc.transport import parse_tcp_address


@dataclass(frozen=True, slots=True)
class MemberConfig:
    node_id: NodeId
    members: Mapping[NodeId, str]  # every member (self included) -> "host:port"
    data_dir: Path
    secret: bytes
    raft: RaftConfig = field(default_factory=RaftConfig)
    kv: KVConfig = field(default_factory=KVConfig)
    # Settings of the plugins (file system: "fs", "liveness"), as read from the
    # config file; each plugin validates its own table.
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def validate(self) -> MemberConfig:
        if self.node_id not in self.members:
            raise ValueError(f"node {self.node_id} is not among the members {sorted(self.members)}")
        if len(self.members) % 2 == 0:
            raise ValueError(f"{len(self.members)} members: use an odd number (3 or 5)")
        for address in self.members.values():
            parse_tcp_address(address)
        self.raft.validate()
        self.kv.validate()
        return self

    @property
    def address(self) -> str:
        return self.members[self.node_id]


class MemberPlugin(Protocol):
    """Something more a member serves besides the KV store (e.g. the file system)."""

    @property
    def tables(self) -> Sequence[str]:
        """Named tables its extensions keep in the state store."""
        ...

    @property
    def extensions(self) -> Sequence[Extension]: ...

    def attach(
        self,
        driver: RaftDriver[Applied],
        fsm: KVStateMachine,
        router: Router,
        addresses: Mapping[NodeId, str],
        rpc: RpcClient,
    ) -> None:
        """Register its routes; called once the driver and the machine exist.
        `addresses` maps every member to its client address (leader hints);
        `rpc` is the member's own client (authenticated as role "meta")."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Its background work, until cancelled."""
        ...


async def serve_member(
    config: MemberConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """`ddfs meta`: the KV store and the file system on one Raft group."""
    from fs.meta.server import fs_plugin  # noqa: PLC0415 - coord must not import fs at load

    plugin = fs_plugin(config.plugin_settings)
    await serve_kv_member(config, [plugin], task_status=task_status)


def _open_stores(
    config: MemberConfig, plugins: Sequence[MemberPlugin]
) -> tuple[LmdbRaftStorage, LmdbKVStore]:
    """The Raft log and the state store (with every plugin's tables); both or neither."""
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    storage = LmdbRaftStorage(config.data_dir / "raft")
    try:
        tables = [t for p in plugins for t in p.tables]
        return storage, LmdbKVStore(config.data_dir / "kv", tables=tables)
    except BaseException:
        storage.close()
        raise


async def serve_kv_member(
    config: MemberConfig,
    plugins: Sequence[MemberPlugin] = (),
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    storage, kv_store = _open_stores(config, plugins)
    snapshots: SnapshotFiles | None = None
    try:
        if config.raft.snapshot_every > 0:
            snapshots = SnapshotFiles(config.data_dir / "snap")
        fsm = KVStateMachine(kv_store, config.kv, [e for p in plugins for e in p.extensions])
        client_cfg = ClientConfig(node_id=config.node_id, secret=config.secret, role="meta")
        async with RpcClient(client_cfg, TcpConnector()) as peers_rpc:
            transport = RpcTransport(peers_rpc, config.members)
            driver: RaftDriver[Applied] = RaftDriver(
                config.node_id,
                list(config.members),
                config.raft,
                storage,
                fsm,
                transport,
                rng=random.Random(),
                snapshots=snapshots,
            )
            router = Router()
            add_raft_routes(router, driver, {"address": config.address})
            add_digest_route(router, fsm)
            KvService(driver, fsm, config.members).routes(router)
            watches = WatchService(fsm)
            watches.attach()
            watches.routes(router)
            for plugin in plugins:
                plugin.attach(driver, fsm, router, config.members, peers_rpc)
            server = RpcServer(
                ServerConfig(node_id=config.node_id, secret=config.secret, role="meta"), router
            )
            host, port = parse_tcp_address(config.address)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_tcp, host, port)
                await nursery.start(driver.run)
                for plugin in plugins:
                    await nursery.start(plugin.run)
                task_status.started(config.address)
                try:
                    await trio.sleep_forever()
                finally:
                    watches.close()  # long polls answer now instead of holding the drain
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await server.shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        storage.close()
        kv_store.close()
        if snapshots is not None:
            snapshots.close()
