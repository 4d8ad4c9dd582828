"""RPC over real TCP sockets on 127.0.0.1 (port 0), and a smoke run of `ddfs bench rpc`."""

from __future__ import annotations

import argparse
import json

import pytest
import trio

from coord.rpc import (
    AuthenticationError,
    ClientConfig,
    Router,
    RpcClient,
    RpcServer,
    TcpConnector,
    Unavailable,
)
from tests.unit.test_rpc_common import (
    BumpAtMostOnce,
    Echo,
    Service,
    Sleep,
    client_config,
    server_config,
)
from tools import bench_rpc


async def test_calls_over_tcp_with_large_payloads_and_concurrency() -> None:
    service = Service()
    server = RpcServer(server_config(), Router().include(service))
    async with trio.open_nursery() as nursery:
        ((host, port), *_) = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        address = f"{host}:{port}"
        async with RpcClient(client_config(), TcpConnector()) as client:
            big = bytes(range(256)) * 4096 * 4  # 4 MiB
            with trio.fail_after(20):
                assert (await client.call(address, Echo(big))).data == big
                async with trio.open_nursery() as calls:
                    for i in range(20):
                        calls.start_soon(client.call, address, Sleep(0.01, key=str(i)))
                assert (await client.call(address, BumpAtMostOnce("k"))).executions == 1
            assert len(service.executions) == 21
        async with RpcClient(client_config(secret=b"wrong"), TcpConnector()) as intruder:
            with pytest.raises(AuthenticationError):
                await intruder.call(address, Echo(b"x"))
        await server.shutdown()
        assert server.connection_count == 0


async def test_connection_refused_is_unavailable() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there any more
    config = ClientConfig(node_id=3, secret=b"s", default_timeout=2.0, attempt_timeout=0.5)
    async with RpcClient(config, TcpConnector()) as client:
        with pytest.raises(Unavailable):
            await client.call(f"127.0.0.1:{port}", Echo(b"x"))


def test_bench_rpc_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench_rpc.add_arguments(parser)
    args = parser.parse_args(["--seconds", "0.05", "--callers", "3", "--json"])
    assert bench_rpc.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("rpc_calls_per_s_1", "rpc_calls_per_s_64", "raw_echo_per_s_1",
                "raw_echo_per_s_64", "rpc_mb_per_s_1mib", "raw_mb_per_s_1mib",
                "rpc_async_calls_per_s_1", "rpc_async_calls_per_s_64", "rpc_notify_per_s_1"):
        assert result[key] > 0, key
    for phase in ("small_1", "small_3", "async_1", "async_3", "notify_1", "big_1",
                  "raw_echo_1", "raw_echo_3"):
        for side in ("client", "server"):
            # CPU clocks tick in 10 ms steps: a 50 ms phase may round to 0.
            assert result[f"cpu_ms_per_call_{phase}_{side}_cpu_ms"] >= 0
