"""The load generator of `ddfs bench raft`, run in its own process:
`python -m tools.bench_raft_load PLAN.json`.

It drives etcd (HTTP/1.1 keep-alive connections to the v3 JSON gateway,
`/v3/kv/put` and `/v3/kv/range` with `serializable: false`) and ddfs (one
`KvClient`, i.e. one RPC connection and one session, per connection) with
the same workload: `clients` closed-loop callers, each issuing its next
operation when the previous one answered, values of `value_size` bytes.
Phases run interleaved, system A then system B for each phase of each round,
so that machine noise hits both alike.

Invariants:
* An operation counts only if it was issued after the warm-up and answered
  before the phase's end; its latency is recorded with the same rule, so
  throughput and percentiles describe the same operations.
* Every loop is bounded by the phase's end; every connection is closed on
  the way out (AsyncExitStack), errors included.
* An error reply (HTTP status other than 200, a KV error) ends the run with
  an exception: a benchmark that silently counts failures is worthless.
* The result file is written whole at the end, then "DONE" is printed; the
  controller reads nothing before that line.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

# The phases of one round: (operation, number of callers key in the plan).
PHASES: tuple[tuple[str, str], ...] = (("write", "one"), ("write", "many"), ("read", "many"))


class LoadError(RuntimeError):
    """An operation failed: the benchmark stops rather than count it."""


# --- HTTP/1.1 keep-alive client (enough of it for etcd's gateway) -----------------------------


class HttpConnection:
    """One keep-alive connection; one request at a time (closed loop)."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host.encode()
        self._buf = bytearray()

    @classmethod
    async def open(cls, address: str) -> HttpConnection:
        host, _, port = address.rpartition(":")
        return cls(await trio.open_tcp_stream(host, int(port)), address)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        head = (
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self._host
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n"
        )
        await self._stream.send_all(head + payload)
        status, raw = await self._response()
        if status != 200:
            raise LoadError(f"POST {path}: HTTP {status}: {raw[:200]!r}")
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def _fill(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise LoadError("the HTTP server closed the connection")
        self._buf += data

    async def _response(self) -> tuple[int, bytes]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, await self._chunked()
        length = int(headers.get("content-length", "0"))
        while len(self._buf) < length:
            await self._fill()
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return status, body

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        for _ in range(1 << 20):  # bounded: a chunked body ends with a zero-size chunk
            while (end := self._buf.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self._buf[:end]).split(b";")[0], 16)
            del self._buf[: end + 2]
            while len(self._buf) < size + 2:
                await self._fill()
            parts.append(bytes(self._buf[:size]))
            del self._buf[: size + 2]
            if size == 0:
                return b"".join(parts)
        raise LoadError("endless chunked body")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the two systems ---------------------------------------------------------------------------


class Target(Protocol):
    name: str

    async def write(self, caller: int, key: bytes, value: bytes) -> None: ...

    async def read(self, caller: int, key: bytes) -> None: ...


class EtcdTarget:
    """Every connection goes to the leader (the best case for etcd: no forwarding)."""

    name = "etcd"

    def __init__(self, connections: Sequence[HttpConnection]) -> None:
        self._conns = list(connections)

    @classmethod
    async def connect(cls, endpoints: Sequence[str], n: int, stack: AsyncExitStack) -> EtcdTarget:
        leader = await _etcd_leader(endpoints, stack)
        conns = []
        for _ in range(n):
            conn = await HttpConnection.open(leader)
            stack.push_async_callback(conn.aclose)
            conns.append(conn)
        return cls(conns)

    async def write(self, caller: int, key: bytes, value: bytes) -> None:
        await self._conns[caller].post_json(
            "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}
        )

    async def read(self, caller: int, key: bytes) -> None:
        reply = await self._conns[caller].post_json(
            "/v3/kv/range", {"key": _b64(key), "serializable": False}
        )
        if not reply.get("kvs"):
            raise LoadError(f"etcd: {key!r} not found")


async def _etcd_leader(endpoints: Sequence[str], stack: AsyncExitStack) -> str:
    """The client address of the member that every member names as leader."""
    ids: dict[str, str] = {}
    leader_id = ""
    with trio.fail_after(30):
        while True:
            for address in endpoints:
                conn = await HttpConnection.open(address)
                try:
                    st = await conn.post_json("/v3/maintenance/status", {})
                finally:
                    await conn.aclose()
                ids[str(st["header"]["member_id"])] = address
                leader_id = str(st.get("leader", ""))
            if leader_id in ids:
                return ids[leader_id]
            await trio.sleep(0.1)


class DdfsTarget:
    """One KvClient (own RPC connection, own session) per caller."""

    name = "ddfs"

    def __init__(self, clients: Sequence[Any], status: Callable[[], Awaitable[int]]) -> None:
        self._clients = list(clients)
        self.fsyncs = status  # total fsyncs of the Raft logs of every member

    @classmethod
    async def connect(
        cls, endpoints: Sequence[str], secret: bytes, n: int, stack: AsyncExitStack
    ) -> DdfsTarget:
        from coord.kv.remote import KvClient
        from coord.raft.rpc import RaftStatus
        from tools.common import rpc_client

        clients = []
        for _ in range(n):
            rpc = await stack.enter_async_context(rpc_client(secret, role="bench"))
            kv = KvClient(rpc, endpoints, timeout=30.0, attempt_timeout=5.0)
            await kv.open()
            clients.append(kv)
        status_rpc = await stack.enter_async_context(rpc_client(secret, role="bench"))

        async def fsyncs() -> int:
            total = 0
            for address in endpoints:
                reply = await status_rpc.call(address, RaftStatus(), timeout=5.0)
                total += int(json.loads(reply.json).get("fsyncs", 0))
            return total

        return cls(clients, fsyncs)

    async def write(self, caller: int, key: bytes, value: bytes) -> None:
        await self._clients[caller].put(key, value)

    async def read(self, caller: int, key: bytes) -> None:
        if await self._clients[caller].get(key) is None:
            raise LoadError(f"ddfs: {key!r} not found")


# --- phases ------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, measured ops only

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            "ops": self.ops,
            "seconds": self.seconds,
            "per_s": self.ops / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
        }


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _key(caller: int, n: int) -> bytes:
    # 100 keys per caller: puts overwrite (the store stays small), reads find them.
    return b"bench/%03d/%03d" % (caller, n % 100)


async def run_phase(
    target: Target, op: str, callers: int, seconds: float, warmup: float, value: bytes
) -> PhaseResult:
    """`callers` closed loops for warmup + seconds; counts what finished in the window."""
    result = PhaseResult()
    start = trio.current_time() + warmup
    end = start + seconds

    async def loop(caller: int) -> None:
        n = 0
        while (t0 := trio.current_time()) < end:
            if op == "write":
                await target.write(caller, _key(caller, n), value)
            else:
                await target.read(caller, _key(caller, n))
            n += 1
            t1 = trio.current_time()
            if t0 >= start and t1 <= end:
                result.ops += 1
                result.latencies.append(t1 - t0)

    async with trio.open_nursery() as nursery:
        for caller in range(callers):
            nursery.start_soon(loop, caller)
    result.seconds = seconds
    return result


async def _prefill(target: Target, callers: int, value: bytes) -> None:
    """Write every key the read phases ask for, so a read always finds its key."""
    async def one(caller: int) -> None:
        for n in range(100):
            await target.write(caller, _key(caller, n), value)

    async with trio.open_nursery() as nursery:
        for caller in range(callers):
            nursery.start_soon(one, caller)


async def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    many, seconds, warmup = int(plan["clients"]), float(plan["seconds"]), float(plan["warmup"])
    value = b"v" * int(plan["value_size"])
    callers = {"one": 1, "many": many}
    out: dict[str, Any] = {"rounds": []}
    fsyncs = 0
    ddfs_write_seconds = 0.0
    async with AsyncExitStack() as stack:
        etcd = await EtcdTarget.connect(plan["etcd"], many, stack)
        ddfs = await DdfsTarget.connect(plan["ddfs"], plan["secret"].encode(), many, stack)
        targets: list[Target] = [etcd, ddfs]
        for target in targets:
            await _prefill(target, many, value)
        pooled: dict[str, PhaseResult] = {}
        for _ in range(int(plan["rounds"])):
            this_round: dict[str, Any] = {}
            for op, size in PHASES:
                for target in targets:
                    name = f"{target.name}_{op}_{callers[size]}"
                    before = await ddfs.fsyncs() if target is ddfs and op == "write" else 0
                    res = await run_phase(target, op, callers[size], seconds, warmup, value)
                    if target is ddfs and op == "write":
                        fsyncs += await ddfs.fsyncs() - before
                        ddfs_write_seconds += warmup + seconds
                    this_round[name] = res.summary()
                    acc = pooled.setdefault(name, PhaseResult())
                    acc.ops += res.ops
                    acc.seconds += res.seconds
                    acc.latencies += res.latencies
            out["rounds"].append(this_round)
    out["pooled"] = {name: res.summary() for name, res in pooled.items()}
    out["fsyncs"] = fsyncs
    out["ddfs_write_seconds"] = ddfs_write_seconds
    return out


def main(argv: Sequence[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    result = trio.run(run_plan, plan)
    Path(plan["out"]).write_text(json.dumps(result))
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
