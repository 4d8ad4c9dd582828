"""Raft over the RPC layer: the peer transport and the `raft.*` methods.

Peers exchange Raft messages as one-way `raft.batch` notifications (a
message batch per frame; replies are ordinary Raft messages going the other
way), so a slow or dead peer never blocks the sender.  `raft.status` answers
what `ddfs raft status` shows; `clock.probe` lets it estimate each member's
clock offset; `raft.digest` hashes the member's whole state (the bytes a
snapshot of it would hold) so tests and tools can check replicas agree.

Invariant: a malformed batch from an authenticated peer is logged and
dropped; it never reaches the core and never ends the connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
import xxhash

from coord.clock.rpc import add_clock_routes
from coord.raft.codec import CodecError, decode_batch, encode_batch
from coord.raft.driver import RaftDriver, status_dict
from coord.raft.messages import Message
from coord.raft.snapdriver import SnapshotStateMachine
from coord.raft.types import NodeId
from coord.rpc import (
    CallContext,
    Notification,
    Request,
    Router,
    RpcClient,
    Semantics,
    notification,
    request,
)

log = logging.getLogger(__name__)


@notification("raft.batch")
@dataclass(frozen=True, slots=True)
class RaftBatch(Notification):
    payload: bytes  # coord.raft.codec batch


@dataclass(frozen=True, slots=True)
class StatusReply:
    json: str  # status_dict() as JSON: stable keys for tools and tests


@request("raft.status", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class RaftStatus(Request[StatusReply]):
    pass


@dataclass(frozen=True, slots=True)
class DigestReply:
    applied: int  # the applied index the digest covers
    digest: int  # xxh3_64 of the state's snapshot bytes
    size: int


@request("raft.digest", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class RaftDigest(Request[DigestReply]):
    pass


class _Hasher:
    def __init__(self) -> None:
        self.hash = xxhash.xxh3_64()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def add_digest_route(router: Router, fsm: SnapshotStateMachine) -> None:
    """Register `raft.digest`: a hash of the whole state at its applied index."""

    async def on_digest(req: RaftDigest, ctx: CallContext) -> DigestReply:
        sink = _Hasher()
        applied = await trio.to_thread.run_sync(fsm.write_snapshot, sink)
        return DigestReply(int(applied), sink.hash.intdigest(), sink.size)

    router.add(RaftDigest, on_digest)


class RpcTransport:
    """The driver's Transport: notifications through a shared RpcClient."""

    def __init__(self, client: RpcClient, addresses: Mapping[NodeId, str]) -> None:
        self._client = client
        self._addresses = dict(addresses)

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None:
        await self._client.notify(
            self._addresses[peer], RaftBatch(encode_batch(messages)), timeout=1.0
        )


def add_raft_routes(router: Router, driver: RaftDriver[Any], extra: Mapping[str, Any]) -> None:
    """Register `raft.batch` and `raft.status` for `driver` on `router`."""

    def on_batch(msg: RaftBatch, ctx: CallContext) -> None:
        try:
            messages = decode_batch(msg.payload)
        except CodecError as exc:
            log.warning("dropping a malformed raft batch from %s: %s", ctx.peer, exc)
            return
        driver.deliver(messages)

    def on_status(req: RaftStatus, ctx: CallContext) -> StatusReply:
        return StatusReply(json.dumps({**status_dict(driver.status()), **extra}))

    router.add(RaftBatch, on_batch)
    router.add(RaftStatus, on_status)
    add_clock_routes(router)
