"""Raft over the RPC layer: the peer transport and the `raft.*` methods.

Peers exchange Raft messages as one-way `raft.batch` notifications (a
message batch per frame; replies are ordinary Raft messages going the other
way), so a slow or dead peer never blocks the sender.  `raft.status` answers
what `ddfs raft status` shows; `clock.probe` lets it estimate each member's
clock offset; `raft.digest` hashes the member's whole state (the bytes a
snapshot of it would hold) so tests and tools can check replicas agree.
`raft.change` (add/promote/remove a member) and `raft.transfer` serve
`ddfs raft add/promote/remove/transfer`; they run on the leader and answer
NOT_LEADER with the leader's address elsewhere.

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
from coord.raft.driver import ChangeRefused, RaftDriver, RaftUnavailable, status_dict
from coord.raft.membership import ChangeKind, ConfChange, Membership
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
class ChangeReply:
    status: str  # OK, NOT_LEADER, REFUSED or UNAVAILABLE
    message: str = ""  # why, for REFUSED/UNAVAILABLE; the new configuration for OK
    leader: str = ""  # the leader's address, when known
    index: int = 0  # OK: the log index of the configuration entry / the new leader id
    members: str = ""  # JSON {id: "host:port"} of the configuration (a joiner's address book)


@request("raft.change", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class RaftChange(Request[ChangeReply]):
    kind: str  # a ChangeKind value: add-learner, add-voter, promote, remove
    node: int
    address: str = ""


@request("raft.transfer", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class RaftTransfer(Request[ChangeReply]):
    target: int = 0  # 0: the most caught-up voter


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

    def learn(self, membership: Membership) -> None:
        """A new configuration: reach new members at the addresses it carries."""
        self._addresses.update(membership.address_book())

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
    router.add(RaftChange, _change_handler(driver))
    router.add(RaftTransfer, _transfer_handler(driver))
    add_clock_routes(router)


#: How long a change or a transfer may take before the tool is told to look again.
_CHANGE_WAIT = 10.0


def _book(driver: RaftDriver[Any]) -> str:
    return json.dumps({str(k): v for k, v in driver.core.membership.address_book().items()})


def _unavailable(driver: RaftDriver[Any], exc: RaftUnavailable) -> ChangeReply:
    if isinstance(exc, ChangeRefused):
        return ChangeReply("REFUSED", str(exc), members=_book(driver))
    hint = driver.core.membership.address_book().get(exc.leader) if exc.leader else None
    if hint and exc.leader != driver.id:
        return ChangeReply("NOT_LEADER", str(exc), hint)
    return ChangeReply("UNAVAILABLE", str(exc))


def _change_handler(driver: RaftDriver[Any]) -> Any:
    async def on_change(req: RaftChange, ctx: CallContext) -> ChangeReply:
        try:
            change = ConfChange(ChangeKind(req.kind), NodeId(req.node), req.address)
        except ValueError:
            return ChangeReply("REFUSED", f"unknown change {req.kind!r}")
        try:
            with trio.fail_after(_CHANGE_WAIT):
                index = await driver.change_membership(change)
        except RaftUnavailable as exc:
            return _unavailable(driver, exc)
        except trio.TooSlowError:
            return ChangeReply("UNAVAILABLE", "the change did not commit in time; check status")
        m = driver.core.membership
        return ChangeReply("OK", f"voters={sorted(m.voters)} learners={sorted(m.learners)}",
                           index=int(index), members=_book(driver))

    return on_change


def _transfer_handler(driver: RaftDriver[Any]) -> Any:
    async def on_transfer(req: RaftTransfer, ctx: CallContext) -> ChangeReply:
        target = NodeId(req.target) if req.target else None
        try:
            leader = await driver.transfer_leadership(target)
        except RaftUnavailable as exc:
            return _unavailable(driver, exc)
        address = driver.core.membership.address_book().get(leader, "")
        return ChangeReply("OK", f"leader is now {leader}", address, int(leader))

    return on_transfer
