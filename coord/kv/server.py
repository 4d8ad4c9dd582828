"""One member of the replicated KV store: LMDB storage, the KV state
machine, the Raft driver and one RPC server for peers and clients.

`serve_kv_member(config, plugins)` is the generic member: each `MemberPlugin`
adds tables to the store, extensions to the state machine (other state
machines on the same log), RPC routes and a background task.
`serve_member(config)` is what `ddfs meta` runs: the KV store plus the file
system (`fs.meta.server`); the file system lives in fs/, so it is imported
lazily here to keep coord/ free of file-system imports at module level.

Membership: a member started with `join=True` starts with an empty log and
no configuration (it never campaigns); it asks the cluster at
`join_endpoints` to add it as a learner and then learns everything,
configuration and addresses included, from the leader's log.  Whenever the
configuration changes, the transport and the services' address book (used
for leader hints) learn the addresses it carries.

Lifecycle: `serve_member` opens the stores, starts the RPC server and the
driver, reports readiness through `task_status.started(address)` and runs
until cancelled; on the way out it stops accepting, cancels the driver and
closes the LMDB environments (no transaction is open at that point: every
storage call runs to completion in its worker thread before the trio task
that awaited it can be cancelled).
"""

from __future__ import annotations

import json
import logging
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
from coord.raft.membership import ChangeKind, Membership
from coord.raft.rpc import RaftChange, RpcTransport, add_digest_route, add_raft_routes
from coord.raft.snapfile import SnapshotFiles
from coord.raft.types import NodeId
from coord.raft.wal_store import WalRaftStorage
from coord.rpc import (
    ClientConfig,
    Router,
    RpcClient,
    RpcError,
    RpcServer,
    ServerConfig,
    TcpConnector,
)
from coord.rpc.transport import parse_tcp_address

log = logging.getLogger(__name__)


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
    # Joining an existing cluster: `members` is just {node_id: own address}; the node
    # starts empty and asks these endpoints to add it as a learner.
    join: bool = False
    join_endpoints: tuple[str, ...] = ()

    def validate(self) -> MemberConfig:
        if self.node_id not in self.members:
            raise ValueError(f"node {self.node_id} is not among the members {sorted(self.members)}")
        if self.join:
            if not self.join_endpoints:
                raise ValueError("joining needs the endpoints of the existing cluster")
        elif len(self.members) % 2 == 0:
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
) -> tuple[WalRaftStorage, LmdbKVStore]:
    """The Raft log and the state store (with every plugin's tables); both or neither."""
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # The Raft log: LMDB behind a write-ahead log (one sequential fdatasync per
    # persist instead of LMDB's two random-offset syncs; coord/raft/wal_store.py).
    storage = WalRaftStorage(config.data_dir / "raft")
    try:
        tables = [t for p in plugins for t in p.tables]
        # Unsynced state commits: the Raft log is what is durable (lmdb_state docstring).
        return storage, LmdbKVStore(config.data_dir / "kv", tables=tables, sync_commits=False)
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
            bootstrap = (
                Membership.of(()) if config.join
                else Membership.of(config.members, (), config.members)
            )
            driver: RaftDriver[Applied] = RaftDriver(
                config.node_id,
                list(config.members),
                config.raft,
                storage,
                fsm,
                transport,
                rng=random.Random(),
                membership=bootstrap,
                snapshots=snapshots,
            )
            addresses = dict(config.members)  # live address book: leader hints
            addresses.update(driver.core.membership.address_book())
            transport.learn(driver.core.membership)

            def learn(m: Membership) -> None:
                transport.learn(m)
                addresses.update(m.address_book())

            driver.on_membership.append(learn)
            router = Router()
            add_raft_routes(router, driver, {"address": config.address})
            add_digest_route(router, fsm)
            KvService(driver, fsm, addresses).routes(router)
            watches = WatchService(fsm)
            watches.attach()
            watches.routes(router)
            for plugin in plugins:
                plugin.attach(driver, fsm, router, addresses, peers_rpc)
            server = RpcServer(
                ServerConfig(node_id=config.node_id, secret=config.secret, role="meta"), router
            )
            host, port = parse_tcp_address(config.address)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_tcp, host, port)
                await nursery.start(driver.run)
                for plugin in plugins:
                    await nursery.start(plugin.run)
                if config.join and not driver.core.membership.members:
                    nursery.start_soon(_ask_to_join, config, peers_rpc, transport,
                                       name="raft-join")
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


async def _ask_to_join(config: MemberConfig, rpc: RpcClient, transport: RpcTransport) -> None:
    """Ask the cluster to add this node as a learner, following leader hints,
    until it is a member (retrying: the cluster may be electing or busy).  The
    reply's address book lets us answer the leader before our log reaches the
    configuration entry that names it."""
    change = RaftChange(ChangeKind.ADD_LEARNER.value, int(config.node_id), config.address)
    hint: str | None = None
    for attempt in range(600):  # ~5 minutes at most
        address = hint or config.join_endpoints[attempt % len(config.join_endpoints)]
        hint = None
        try:
            reply = await rpc.call(address, change, timeout=15.0)
        except RpcError as exc:
            log.info("join via %s: %s", address, exc)
        else:
            if reply.members:
                book = {NodeId(int(k)): v for k, v in json.loads(reply.members).items()}
                transport.learn(Membership.of((), (), book))
            if reply.status == "OK" or "already a member" in reply.message:
                log.warning("node %d: joined the cluster as a learner (%s)",
                            config.node_id, reply.message)
                return
            if reply.status == "NOT_LEADER" and reply.leader:
                hint = reply.leader
                continue
            log.info("join via %s: %s %s", address, reply.status, reply.message)
        await trio.sleep(0.5)
    log.error("node %d: could not join the cluster at %s", config.node_id, config.join_endpoints)
