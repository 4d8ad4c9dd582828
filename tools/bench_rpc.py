"""`ddfs bench rpc`: RPC round trips and bandwidth against a raw trio echo.

The servers run in a separate process (`python -m tools.bench_rpc --serve`)
on 127.0.0.1, killed when the benchmark ends; the callers run here.  Phases,
each `--seconds` long:

- raw echo, 1 and N callers: length-prefixed 64-byte messages echoed by a
  plain trio server (one task per connection) -- the floor we compare to;
- RPC, 1 and N callers: an AT_LEAST_ONCE call carrying 64 bytes whose reply
  carries them back; each caller has its own client and connection;
- bandwidth: 1 MiB payloads, one caller, over RPC (a put whose reply is small)
  and over the raw echo server (acknowledged with 4 bytes).

Invariants: the server process is always terminated (finally), and it also
exits by itself when its stdin closes, so a crashed benchmark leaves nothing
behind.  Timings use trio's clock; nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial

import trio

from coord.rpc import (
    CallContext,
    ClientConfig,
    Request,
    Router,
    RpcClient,
    RpcServer,
    ServerConfig,
    TcpConnector,
    request,
)

_LEN = struct.Struct(">I")
_SECRET_ENV = "DDFS_BENCH_RPC_SECRET"
SMALL = 64
BIG = 1024 * 1024


@dataclass(frozen=True, slots=True)
class EchoReply:
    data: bytes


@request("bench.echo")
@dataclass(frozen=True, slots=True)
class Echo(Request[EchoReply]):
    data: bytes


@dataclass(frozen=True, slots=True)
class PutReply:
    size: int


@request("bench.put")
@dataclass(frozen=True, slots=True)
class Put(Request[PutReply]):
    data: bytes


def _echo(req: Echo, ctx: CallContext) -> EchoReply:
    return EchoReply(req.data)


def _put(req: Put, ctx: CallContext) -> PutReply:
    return PutReply(len(req.data))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)


# --- server process ---------------------------------------------------------


async def _raw_echo_handler(stream: trio.SocketStream) -> None:
    """Length-prefixed echo: 64-byte messages come back whole; big ones get a 4-byte ack."""
    buf = bytearray()
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            out = []
            while len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if len(buf) < 4 + n:
                    break
                msg = bytes(buf[: 4 + n])
                del buf[: 4 + n]
                out.append(msg if n <= SMALL else _LEN.pack(0))
            if out:
                await stream.send_all(b"".join(out))
    except trio.BrokenResourceError:
        return


async def _serve_main() -> None:
    secret = os.environ[_SECRET_ENV].encode()
    router = Router().add(Echo, _echo).add(Put, _put)
    server = RpcServer(ServerConfig(node_id=1, secret=secret, role="bench"), router)
    async with trio.open_nursery() as nursery:
        (rpc_addr, *_) = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        echo_listeners = await nursery.start(
            partial(trio.serve_tcp, _raw_echo_handler, 0, host="127.0.0.1")
        )
        echo_port = echo_listeners[0].socket.getsockname()[1]
        print(f"PORTS {rpc_addr[1]} {echo_port}", flush=True)
        # Exit when the parent goes away (our stdin closes).
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


# --- callers ------------------------------------------------------------------


Op = Callable[[], Awaitable[int]]  # one round trip; returns operations (or bytes) done


async def _timed(seconds: float, callers: int, setup: Callable[[int], Awaitable[Op]]) -> float:
    """Run `callers` loops for `seconds`; return completed operations (or bytes) per second."""
    ops = [await setup(i) for i in range(callers)]
    total = 0
    start = trio.current_time()
    end = start + seconds

    async def loop(op: Callable[[], Awaitable[int]]) -> None:
        nonlocal total
        while trio.current_time() < end:
            done = await op()  # not `total += await op()`: that reads total before awaiting
            total += done

    async with trio.open_nursery() as nursery:
        for op in ops:
            nursery.start_soon(loop, op)
    return total / (trio.current_time() - start)


async def _raw_phase(port: int, seconds: float, callers: int, size: int) -> float:
    streams: list[trio.SocketStream] = []

    async def setup(_: int) -> Callable[[], Awaitable[int]]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        streams.append(stream)
        message = _LEN.pack(size) + b"x" * size
        want = len(message) if size <= SMALL else 4

        async def op() -> int:
            await stream.send_all(message)
            got = 0
            while got < want:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("echo server closed the connection")
                got += len(data)
            return 1 if size <= SMALL else size

        return op

    try:
        return await _timed(seconds, callers, setup)
    finally:
        for stream in streams:
            await stream.aclose()


async def _rpc_phase(address: str, secret: bytes, seconds: float, callers: int, size: int) -> float:
    payload = b"x" * size
    stack = AsyncExitStack()

    async def setup(i: int) -> Callable[[], Awaitable[int]]:
        client = await stack.enter_async_context(
            RpcClient(ClientConfig(node_id=100 + i, secret=secret), TcpConnector())
        )
        await client.call(address, Echo(b""))  # connect and authenticate before timing

        async def small() -> int:
            reply = await client.call(address, Echo(payload))
            assert len(reply.data) == size
            return 1

        async def big() -> int:
            reply = await client.call(address, Put(payload))
            assert reply.size == size
            return size

        return small if size <= SMALL else big

    async with stack:
        return await _timed(seconds, callers, setup)


async def _bench(
    rpc_port: int, echo_port: int, secret: bytes, args: argparse.Namespace
) -> dict[str, float]:
    address = f"127.0.0.1:{rpc_port}"
    s, n = args.seconds, args.callers
    return {
        "raw_echo_per_s_1": await _raw_phase(echo_port, s, 1, SMALL),
        "raw_echo_per_s_64": await _raw_phase(echo_port, s, n, SMALL),
        "rpc_calls_per_s_1": await _rpc_phase(address, secret, s, 1, SMALL),
        "rpc_calls_per_s_64": await _rpc_phase(address, secret, s, n, SMALL),
        "raw_mb_per_s_1mib": await _raw_phase(echo_port, s, 1, BIG) / 1e6,
        "rpc_mb_per_s_1mib": await _rpc_phase(address, secret, s, 1, BIG) / 1e6,
    }


def _start_server(secret: bytes) -> tuple[subprocess.Popen[str], int, int]:
    env = dict(os.environ, **{_SECRET_ENV: secret.decode()})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.bench_rpc", "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORTS "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"benchmark server did not start (said {line!r})")
    _, rpc_port, echo_port = line.split()
    return proc, int(rpc_port), int(echo_port)


def _print_table(result: dict[str, float], callers: int) -> None:
    rows = [
        ("round trips/s, 1 caller", result["raw_echo_per_s_1"], result["rpc_calls_per_s_1"]),
        (f"round trips/s, {callers} callers", result["raw_echo_per_s_64"],
         result["rpc_calls_per_s_64"]),
        ("MB/s, 1 MiB payloads", result["raw_mb_per_s_1mib"], result["rpc_mb_per_s_1mib"]),
    ]
    print(f"{'':32} {'raw trio':>12} {'rpc':>12} {'rpc/raw':>8}")
    for name, raw, rpc in rows:
        print(f"{name:32} {raw:12.0f} {rpc:12.0f} {rpc / raw if raw else 0:8.0%}")


def run(args: argparse.Namespace) -> int:
    if args.serve:
        trio.run(_serve_main)
        return 0
    if args.seconds <= 0 or args.callers < 1:
        print("ddfs bench rpc: --seconds must be positive and --callers at least 1",
              file=sys.stderr)
        return 2
    secret = secrets.token_hex(16).encode()
    proc, rpc_port, echo_port = _start_server(secret)
    try:
        result = trio.run(_bench, rpc_port, echo_port, secret, args)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    result["callers"] = args.callers
    result["seconds"] = args.seconds
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result, args.callers)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m tools.bench_rpc")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
