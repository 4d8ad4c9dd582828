"""`ddfs bench rpc`: RPC round trips and bandwidth against a raw trio echo.

The servers run in a separate process (`python -m tools.bench_rpc --serve`)
on 127.0.0.1, killed when the benchmark ends; the callers run here.  Phases,
each `--seconds` long:

- raw echo, 1 and N callers: length-prefixed 64-byte messages echoed by a
  plain trio server (one task per connection) -- the floor we compare to;
- RPC, 1 and N callers: an AT_LEAST_ONCE call carrying 64 bytes whose reply
  carries them back; each caller has its own client and connection;
- RPC with an `async def` handler, 1 and N callers (the shape of `kv.submit`:
  the server runs the handler as a task with the caller's deadline);
- notify: one-way notifications (the shape of Raft's `raft.batch`), one
  sender, each followed by a tiny call now and then so the sender cannot
  run ahead of the server unboundedly;
- bandwidth: 1 MiB payloads, one caller, over RPC (a put whose reply is small)
  and over the raw echo server (acknowledged with 4 bytes).

Every RPC phase also reports CPU milliseconds per call of the calling
process (`getrusage`) and of the server process (`/proc/<pid>/stat`): the
machine has few cores, so CPU per call is the figure that decides
throughput under load, and it is far steadier than rates on a shared box.

Invariants: the server process is always terminated (finally), and it also
exits by itself when its stdin closes, so a crashed benchmark leaves nothing
behind.  Timings use trio's clock; nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    Notification,
    Request,
    Router,
    RpcClient,
    RpcServer,
    ServerConfig,
    TcpConnector,
    notification,
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


@request("bench.echo_async")
@dataclass(frozen=True, slots=True)
class EchoAsync(Request[EchoReply]):
    data: bytes


@notification("bench.note")
@dataclass(frozen=True, slots=True)
class Note(Notification):
    data: bytes


def _echo(req: Echo, ctx: CallContext) -> EchoReply:
    return EchoReply(req.data)


async def _echo_async(req: EchoAsync, ctx: CallContext) -> EchoReply:
    return EchoReply(req.data)


def _note(msg: Note, ctx: CallContext) -> None:
    pass


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
    router = (Router().add(Echo, _echo).add(Put, _put).add(EchoAsync, _echo_async)
              .add(Note, _note))
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


@dataclass(slots=True)
class _Cpu:
    """CPU seconds used so far by this process and by the server process."""

    server_pid: int

    def sample(self) -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(f"/proc/{self.server_pid}/stat") as f:
            # Fields after the command name (which may hold spaces): utime, stime are 14, 15.
            fields = f.read().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
        return usage.ru_utime + usage.ru_stime, ticks / os.sysconf("SC_CLK_TCK")


async def _timed(seconds: float, callers: int, setup: Callable[[int], Awaitable[Op]],
                 cpu: _Cpu | None = None, out: dict[str, float] | None = None,
                 name: str = "") -> float:
    """Run `callers` loops for `seconds`; return completed operations (or bytes) per second.

    With `cpu` and `out`, also store `<name>_client_cpu_ms` and `<name>_server_cpu_ms`:
    CPU milliseconds per operation of each process over the timed part.
    """
    ops = [await setup(i) for i in range(callers)]
    total = 0
    count = 0
    before = cpu.sample() if cpu is not None else (0.0, 0.0)
    start = trio.current_time()
    end = start + seconds

    async def loop(op: Callable[[], Awaitable[int]]) -> None:
        nonlocal total, count
        while trio.current_time() < end:
            done = await op()  # not `total += await op()`: that reads total before awaiting
            total += done
            count += 1

    async with trio.open_nursery() as nursery:
        for op in ops:
            nursery.start_soon(loop, op)
    elapsed = trio.current_time() - start
    if cpu is not None and out is not None and count:
        after = cpu.sample()
        out[f"{name}_client_cpu_ms"] = (after[0] - before[0]) * 1000 / count
        out[f"{name}_server_cpu_ms"] = (after[1] - before[1]) * 1000 / count
    return total / elapsed


async def _raw_phase(port: int, seconds: float, callers: int, size: int,
                     cpu: _Cpu | None = None, out: dict[str, float] | None = None) -> float:
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
        return await _timed(seconds, callers, setup, cpu, out, f"raw_echo_{callers}")
    finally:
        for stream in streams:
            await stream.aclose()


#: Notifications sent per round in the notify phase, before one call that
#: proves the server has read them all (frames on a connection are in order).
_NOTES_PER_ROUND = 32


async def _rpc_phase(address: str, secret: bytes, seconds: float, callers: int, kind: str,
                     cpu: _Cpu, out: dict[str, float]) -> float:
    payload = b"x" * (BIG if kind == "big" else SMALL)
    stack = AsyncExitStack()

    async def setup(i: int) -> Callable[[], Awaitable[int]]:
        client = await stack.enter_async_context(
            RpcClient(ClientConfig(node_id=100 + i, secret=secret), TcpConnector())
        )
        await client.call(address, Echo(b""))  # connect and authenticate before timing

        async def small() -> int:
            reply = await client.call(address, Echo(payload))
            assert len(reply.data) == len(payload)
            return 1

        async def small_async() -> int:
            reply = await client.call(address, EchoAsync(payload))
            assert len(reply.data) == len(payload)
            return 1

        async def notes() -> int:
            for _ in range(_NOTES_PER_ROUND):
                await client.notify(address, Note(payload))
            await client.call(address, Echo(b""))
            return _NOTES_PER_ROUND

        async def big() -> int:
            reply = await client.call(address, Put(payload))
            assert reply.size == len(payload)
            return len(payload)

        return {"small": small, "async": small_async, "notify": notes, "big": big}[kind]

    name = f"{kind}_{callers}"
    async with stack:
        rate = await _timed(seconds, callers, setup, cpu, out, name)
    if kind == "notify":  # per notification, not per round
        for side in ("client", "server"):
            out[f"{name}_{side}_cpu_ms"] /= _NOTES_PER_ROUND
    return rate


async def _bench(
    rpc_port: int, echo_port: int, secret: bytes, args: argparse.Namespace, server_pid: int
) -> dict[str, float]:
    address = f"127.0.0.1:{rpc_port}"
    s, n = args.seconds, args.callers
    cpu = _Cpu(server_pid)
    out: dict[str, float] = {}
    rates = {
        "raw_echo_per_s_1": await _raw_phase(echo_port, s, 1, SMALL, cpu, out),
        "raw_echo_per_s_64": await _raw_phase(echo_port, s, n, SMALL, cpu, out),
        "rpc_calls_per_s_1": await _rpc_phase(address, secret, s, 1, "small", cpu, out),
        "rpc_calls_per_s_64": await _rpc_phase(address, secret, s, n, "small", cpu, out),
        "rpc_async_calls_per_s_1": await _rpc_phase(address, secret, s, 1, "async", cpu, out),
        "rpc_async_calls_per_s_64": await _rpc_phase(address, secret, s, n, "async", cpu, out),
        "rpc_notify_per_s_1": await _rpc_phase(address, secret, s, 1, "notify", cpu, out),
        "raw_mb_per_s_1mib": await _raw_phase(echo_port, s, 1, BIG) / 1e6,
        "rpc_mb_per_s_1mib": await _rpc_phase(address, secret, s, 1, "big", cpu, out) / 1e6,
    }
    cpu_ms = {f"cpu_ms_per_call_{k}": v for k, v in out.items()}
    return {**rates, **cpu_ms}


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
    print(f"async handler: {result['rpc_async_calls_per_s_1']:.0f} calls/s with 1 caller, "
          f"{result['rpc_async_calls_per_s_64']:.0f} with {callers}; "
          f"notify: {result['rpc_notify_per_s_1']:.0f}/s")
    print(f"{'CPU ms per call':32} {'client':>12} {'server':>12}")
    for key in sorted(k for k in result if k.endswith("_client_cpu_ms")):
        phase = key.removeprefix("cpu_ms_per_call_").removesuffix("_client_cpu_ms")
        server = result[key.replace("_client_", "_server_")]
        print(f"{phase:32} {result[key]:12.4f} {server:12.4f}")


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
        result = trio.run(_bench, rpc_port, echo_port, secret, args, proc.pid)
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
