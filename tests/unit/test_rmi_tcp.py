"""RMI over real TCP on 127.0.0.1: a proxy's calls and its lease renewals
cross a socket, and the object is collected once its client is gone."""

from __future__ import annotations

import pytest
import trio

from coord.lease.types import LeaseConfig
from coord.rmi import NoSuchObject, RmiClient, RmiConfig, RmiServer
from coord.rpc import ClientConfig, Router, RpcClient, RpcServer, ServerConfig, TcpConnector
from tests.unit.test_rmi import SECRET, Directory, MemDir

CONFIG = RmiConfig(lease=LeaseConfig(duration=0.6, max_duration=2.0, epsilon=0.05),
                   collect_interval=0.1)


async def test_proxy_calls_and_lease_renewals_over_tcp() -> None:
    rmi = RmiServer(CONFIG)
    root = MemDir()
    rmi.export_root(root, Directory, "files")
    server = RpcServer(ServerConfig(node_id=1, secret=SECRET, role="files"),
                       rmi.routes(Router()))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ((host, port), *_) = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
            await nursery.start(rmi.run)
            address = f"{host}:{port}"
            client = RpcClient(ClientConfig(node_id=9, secret=SECRET), TcpConnector())
            async with client as rpc:
                async with RmiClient(rpc) as keeper:
                    f = await keeper.root(Directory, address, "files").open("t", create=True)
                    await trio.sleep(1.5)  # 2.5 lease terms: only renewals keep it alive
                    assert await f.write(0, b"tcp") == 3 and await f.read(0, 3) == b"tcp"
                    assert keeper.renewals >= 2 and rmi.collected == 0
                await trio.sleep(0.6 + 0.05 + 0.3)  # the client is gone: the lease lapses
                with pytest.raises(NoSuchObject):
                    await f.read(0, 3)
            assert rmi.collected == 1 and bytes(root.files["t"].data) == b"tcp"
            await server.shutdown()
            nursery.cancel_scope.cancel()
