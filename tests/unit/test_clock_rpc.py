"""Clock-offset estimation over the RPC layer: a server whose clock is skewed
by a known amount is measured within the estimate's error bound."""

from __future__ import annotations

import trio

from coord.clock.rpc import add_clock_routes, measure_offset
from coord.rpc import MemoryNetwork, Router, RpcClient, RpcServer
from tests.unit.test_rpc_common import client_config, server_config

SKEW_NS = 3_250_000_000  # the server's clock runs 3.25 s ahead


async def test_offset_of_a_skewed_server_is_within_the_error_bound() -> None:
    def server_clock() -> int:
        return int(trio.current_time() * 1e9) + SKEW_NS

    def client_clock() -> int:
        return int(trio.current_time() * 1e9)

    net = MemoryNetwork()
    router = Router()
    add_clock_routes(router, clock=server_clock)
    server = RpcServer(server_config(), router)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [net.listen("clock-server")])
        async with RpcClient(client_config(), net) as rpc:
            est = await measure_offset(rpc, "clock-server", samples=6, clock=client_clock)
        nursery.cancel_scope.cancel()
    assert est.accepted == 6
    assert est.contains(SKEW_NS), (est.offset, est.error_bound)
    assert est.error_bound < 0.5e9  # an in-memory round trip is far below a second
