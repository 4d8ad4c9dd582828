"""The file system on a metadata server: the plugin `ddfs meta` runs.

`FsPlugin` adds the FS tables to the member's state store, the FS
extension to its state machine, the fs.* / meta.* routes and the leader's
background reconciliation of chunk-server records (see fs.meta.service).
`serve_member` / `MemberConfig` are re-exported from coord.kv.server, which
`tools/meta.py` uses: a `ddfs meta` process serves raft.*, kv.*, fs.* and
meta.* on one port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from coord.kv.machine import Applied, Extension, KVStateMachine
from coord.kv.server import MemberConfig, serve_member
from coord.raft.driver import RaftDriver
from coord.raft.types import NodeId
from coord.rpc import Router, RpcClient
from fs.meta.context import FsConfig
from fs.meta.liveness import LivenessConfig
from fs.meta.machine import FsMachine
from fs.meta.service import FsService
from fs.meta.state import TABLES

__all__ = ["FsPlugin", "MemberConfig", "fs_plugin", "serve_member"]


def fs_plugin(settings: Mapping[str, Mapping[str, Any]]) -> FsPlugin:
    """The plugin for `ddfs meta`, from the config file's [fs] and [liveness] tables;
    raises ValueError (or TypeError for unknown keys) naming the bad setting."""
    fs_config = FsConfig(**dict(settings.get("fs", {}))).validate()
    liveness = LivenessConfig.from_mapping(dict(settings.get("liveness", {})))
    return FsPlugin(fs_config, liveness)


class FsPlugin:
    """The file system as a MemberPlugin of coord.kv.server.serve_kv_member."""

    def __init__(
        self, fs_config: FsConfig | None = None, liveness: LivenessConfig | None = None
    ) -> None:
        self._machine = FsMachine(fs_config)
        self._liveness = liveness
        self.service: FsService | None = None  # set by attach()

    @property
    def tables(self) -> Sequence[str]:
        return TABLES

    @property
    def extensions(self) -> Sequence[Extension]:
        return (self._machine,)

    def attach(
        self,
        driver: RaftDriver[Applied],
        fsm: KVStateMachine,
        router: Router,
        addresses: Mapping[NodeId, str],
        rpc: RpcClient,
    ) -> None:
        self.service = FsService(
            driver, fsm, addresses, fs_config=self._machine.config, liveness=self._liveness,
            rpc=rpc,
        )
        self.service.routes(router)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.service is None:
            raise RuntimeError("FsPlugin.run before attach")
        await self.service.run(task_status=task_status)
