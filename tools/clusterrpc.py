"""The RPC calls the operations tools make (`ddfs cluster`, `ddfs status`,
`ddfs fsck`): member status, leader election wait, the leader's chunk-server
view, chunk-server stats, and FS queries.

Every call is bounded by a timeout; a member or server that does not answer
is reported as an error string, never waited for indefinitely.  Leader
redirects and retries go through `coord.kv.remote.LeaderRouter`, the one
retry policy of the metadata clients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from coord.clock.rpc import measure_offset
from coord.kv.remote import KvError, LeaderRouter
from coord.raft.rpc import RaftStatus
from coord.rpc import RemoteError, RpcClient, RpcError
from fs.chunk.protocol import ChunkStat, StatReply
from fs.meta.commands import FsQuery, encode_query
from fs.meta.protocol import ChunkServers, ChunkServersReply, FsRead, FsReply
from fs.meta.results import FsResult, decode_result
from fs.types import ServerId

ATTEMPT_TIMEOUT = 2.0


class ClusterUnavailable(Exception):
    """No metadata leader answered within the time allowed."""


async def member_status(rpc: RpcClient, address: str, *, clock: bool = False,
                        timeout: float = ATTEMPT_TIMEOUT) -> dict[str, Any]:
    """`raft.status` of one member as a dict ({"address", "error"} if unreachable);
    with `clock`, also its clock offset from ours (ms) and the error bound."""
    try:
        reply = await rpc.call(address, RaftStatus(), timeout=timeout)
        row: dict[str, Any] = json.loads(reply.json)
        row.setdefault("address", address)
        if clock:
            est = await measure_offset(rpc, address, samples=4, timeout=timeout)
            row["clock_offset_ms"] = round(est.offset / 1e6, 3)
            row["clock_error_ms"] = round(est.error_bound / 1e6, 3)
        return row
    except RpcError as exc:
        return {"address": address, "error": str(exc)}


async def member_statuses(rpc: RpcClient, endpoints: Sequence[str], *,
                          clock: bool = False) -> list[dict[str, Any]]:
    """Every member's status, asked concurrently, in `endpoints` order."""
    rows: list[dict[str, Any]] = [{} for _ in endpoints]

    async def one(i: int, address: str) -> None:
        rows[i] = await member_status(rpc, address, clock=clock)

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(endpoints):
            nursery.start_soon(one, i, address)
    return rows


def agreed_leader(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The leader's row when exactly one member is leader and a majority name it."""
    leaders = [r for r in rows if r.get("role") == "leader"]
    if len(leaders) != 1:
        return None
    lead = leaders[0]
    agree = sum(1 for r in rows if r.get("leader") == lead["id"])
    return lead if agree > len(rows) // 2 else None


async def wait_leader(rpc: RpcClient, endpoints: Sequence[str],
                      timeout: float) -> dict[str, Any]:
    """Poll until a majority agrees on one leader; its status row."""
    rows: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while True:
            rows = await member_statuses(rpc, endpoints)
            lead = agreed_leader(rows)
            if lead is not None:
                return lead
            await trio.sleep(0.1)
    raise ClusterUnavailable(f"no leader within {timeout:g} s: " + "; ".join(
        f"{r.get('address')}: {r.get('error') or r.get('role')}" for r in rows))


async def chunk_servers(rpc: RpcClient, endpoints: Sequence[str],
                        timeout: float = 10.0) -> ChunkServersReply:
    """The leader's view of the chunk servers (`meta.servers`)."""
    router = LeaderRouter(endpoints, timeout=timeout)

    async def attempt(address: str) -> ChunkServersReply:
        return await rpc.call(address, ChunkServers(), timeout=ATTEMPT_TIMEOUT)

    try:
        return await router.call(attempt)
    except KvError as exc:
        raise ClusterUnavailable(str(exc)) from None


def _registered(reply: ChunkServersReply, ids: Sequence[int],
                spawned: Mapping[int, float]) -> bool:
    """Every id alive; those in `spawned` (id -> time.monotonic() of their start)
    heard from since then, so a dead predecessor's fresh-looking record is not
    mistaken for the new process."""
    now = time.monotonic()
    seen = {s.server: s for s in reply.servers if s.alive}
    for ident in ids:
        info = seen.get(ServerId(ident))
        if info is None:
            return False
        if ident in spawned and not 0 <= info.silent_for < now - spawned[ident]:
            return False
    return True


async def wait_chunk_servers(rpc: RpcClient, endpoints: Sequence[str], ids: Sequence[int],
                             timeout: float,
                             spawned: Mapping[int, float] | None = None) -> ChunkServersReply:
    """Poll until every server of `ids` is registered and alive in the leader's view
    (see `_registered` for `spawned`)."""
    reply = ChunkServersReply("none")
    with trio.move_on_after(timeout):
        while True:
            try:
                reply = await chunk_servers(rpc, endpoints, timeout=timeout)
            except ClusterUnavailable:
                await trio.sleep(0.2)
                continue
            if _registered(reply, ids, spawned or {}):
                return reply
            await trio.sleep(0.2)
    seen = sorted(s.server for s in reply.servers if s.alive)
    raise ClusterUnavailable(f"chunk servers alive after {timeout:g} s: {seen}, "
                             f"expected {sorted(ids)}")


async def chunk_stat(rpc: RpcClient, address: str,
                     timeout: float = ATTEMPT_TIMEOUT) -> StatReply | str:
    """`chunk.stat` of one server, or the error as text."""
    try:
        return await rpc.call(address, ChunkStat(), timeout=timeout)
    except RpcError as exc:
        return str(exc)


async def fs_query(rpc: RpcClient, endpoints: Sequence[str], query: FsQuery,
                   timeout: float = 10.0) -> FsResult:
    """One FS query (`fs.read`, linearizable), following leader redirects."""
    router = LeaderRouter(endpoints, timeout=timeout)
    payload = encode_query(query)

    async def attempt(address: str) -> FsReply:
        return await rpc.call(address, FsRead(payload), timeout=ATTEMPT_TIMEOUT)

    try:
        reply = await router.call(attempt)
    except KvError as exc:
        raise ClusterUnavailable(str(exc)) from None
    return decode_result(reply.result)


async def fs_query_at(rpc: RpcClient, address: str, query: FsQuery,
                      timeout: float = 10.0) -> FsResult:
    """One FS query answered by the member at `address` itself (after its ReadIndex
    barrier, so its local state has applied everything committed before the call)."""
    payload = encode_query(query)
    with trio.move_on_after(timeout):
        while True:
            try:
                reply = await rpc.call(address, FsRead(payload), timeout=ATTEMPT_TIMEOUT)
            except RemoteError as exc:
                raise ClusterUnavailable(f"{address}: {exc}") from None
            except RpcError:
                await trio.sleep(0.1)
                continue
            if reply.status == "OK":
                return decode_result(reply.result)
            await trio.sleep(0.1)
    raise ClusterUnavailable(f"{address} did not answer a read within {timeout:g} s")
