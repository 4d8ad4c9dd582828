"""The Raft driver and the KV service in one process, over a partitionable
in-memory transport: fast, deterministic scenarios that real-process tests
cannot stage precisely.

The planted-bug test shows the linearizability checker catching a leader
that answers reads from its local state without ReadIndex: cut off from the
majority, the old leader keeps believing it leads and serves a stale value
after a newer write completed elsewhere.  The same scenario with ReadIndex
refuses the read instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio

from coord.kv.commands import Body, ClientRequest, Get, Put, RegisterClient, encode_body, stamp
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import GetResult, RegisterResult
from coord.kv.store import MemoryKVStore
from coord.kv.types import SeqNo
from coord.lincheck import ClientId, History, KvModel, NotLinearizable, assert_linearizable
from coord.raft.config import RaftConfig
from coord.raft.driver import RaftDriver, RaftUnavailable
from coord.raft.messages import Message
from coord.raft.storage import MemoryRaftStorage
from coord.raft.types import NodeId

CONFIG = RaftConfig(election_timeout_min=0.3, election_timeout_max=0.6, heartbeat_interval=0.05)


class Net:
    """Delivers batches between in-process drivers unless the link is cut."""

    def __init__(self) -> None:
        self.drivers: dict[NodeId, RaftDriver[Applied]] = {}
        self.cut: set[frozenset[NodeId]] = set()

    def isolate(self, node: NodeId) -> None:
        self.cut |= {frozenset({node, other}) for other in self.drivers if other != node}

    def heal(self) -> None:
        self.cut.clear()

    def transport(self, me: NodeId) -> _Link:
        return _Link(self, me)


class _Link:
    def __init__(self, net: Net, me: NodeId) -> None:
        self.net, self.me = net, me

    async def send(self, peer: NodeId, messages: Sequence[Message]) -> None:
        await trio.sleep(0.001)
        if frozenset({self.me, peer}) not in self.net.cut:
            self.net.drivers[peer].deliver(messages)


class Member:
    def __init__(self, node: NodeId, ids: list[NodeId], net: Net, seed: int) -> None:
        self.fsm = KVStateMachine(MemoryKVStore())
        self.driver: RaftDriver[Applied] = RaftDriver(
            node, ids, CONFIG, MemoryRaftStorage(), self.fsm, net.transport(node),
            rng=random.Random(seed),
        )
        net.drivers[node] = self.driver

    async def submit(self, body: Body) -> Applied:
        return await self.driver.propose(stamp(body, int(trio.current_time() * 1000)))

    async def read(self, key: bytes, *, read_index: bool) -> bytes | None:
        if read_index:
            await self.driver.read_barrier()
        result = self.fsm.read(Get(key))
        assert isinstance(result, GetResult)
        return None if result.kv is None else result.kv.value


async def _leader(members: dict[NodeId, Member], exclude: NodeId | None = None) -> NodeId:
    with trio.fail_after(10):
        while True:
            leaders = [i for i, m in members.items() if m.driver.is_leader and i != exclude]
            if len(leaders) == 1:
                return leaders[0]
            await trio.sleep(0.02)


async def _stale_read_scenario(read_index: bool) -> History:
    net = Net()
    ids = [NodeId(1), NodeId(2), NodeId(3)]
    members = {i: Member(i, ids, net, seed=i) for i in ids}
    history = History()
    async with trio.open_nursery() as nursery:
        for m in members.values():
            await nursery.start(m.driver.run)
        old = await _leader(members)
        reg = (await members[old].submit(RegisterClient())).result
        assert isinstance(reg, RegisterResult)
        op = history.invoke(ClientId(1), "put", b"k", b"v1", trio.current_time())
        await members[old].submit(_request(reg, 1, Put(b"k", b"v1")))
        history.complete(op, None, trio.current_time())
        # Cut the old leader off.  With check-quorum it steps down after an
        # election timeout; read before then, as a stale leader would.
        net.isolate(old)
        new = await _leader(members, exclude=old)
        op = history.invoke(ClientId(2), "put", b"k", b"v2", trio.current_time())
        await members[new].submit(_request(reg, 2, Put(b"k", b"v2")))
        history.complete(op, None, trio.current_time())
        op = history.invoke(ClientId(3), "get", b"k", None, trio.current_time())
        try:
            with trio.fail_after(2):
                value = await members[old].read(b"k", read_index=read_index)
            history.complete(op, value, trio.current_time())
        except (RaftUnavailable, trio.TooSlowError):
            history.unknown(op)
        nursery.cancel_scope.cancel()
    return history


def _request(
    reg: RegisterResult, seq: int, command: Put, acked: int | None = None
) -> ClientRequest:
    """Request `seq`; `acked` defaults to seq - 1 (one request at a time)."""
    return ClientRequest(
        reg.client_id, SeqNo(seq), SeqNo(seq - 1 if acked is None else acked), command
    )


async def test_checker_catches_a_leader_that_reads_without_read_index() -> None:
    history = await _stale_read_scenario(read_index=False)
    with pytest.raises(NotLinearizable):
        assert_linearizable(history, KvModel(), 10.0)


async def test_read_index_refuses_the_stale_read() -> None:
    history = await _stale_read_scenario(read_index=True)
    assert_linearizable(history, KvModel(), 10.0)


async def test_proposals_commit_on_every_member_in_order() -> None:
    net = Net()
    ids = [NodeId(1), NodeId(2), NodeId(3)]
    members = {i: Member(i, ids, net, seed=10 + i) for i in ids}
    async with trio.open_nursery() as nursery:
        for m in members.values():
            await nursery.start(m.driver.run)
        leader = await _leader(members)
        reg = (await members[leader].submit(RegisterClient())).result
        assert isinstance(reg, RegisterResult)
        async with trio.open_nursery() as writers:
            for n in range(1, 41):
                # Concurrent requests: none may claim the others' replies were received.
                writers.start_soon(members[leader].submit,
                                   _request(reg, n, Put(b"k%d" % n, b"v%d" % n), acked=0))
        with trio.fail_after(5):
            while min(m.fsm.applied_index for m in members.values()) < members[
                leader
            ].fsm.applied_index:
                await trio.sleep(0.01)
        dumps = [m.fsm.dump() for m in members.values()]
        assert dumps[0] == dumps[1] == dumps[2]
        for n in range(1, 41):
            assert await members[leader].read(b"k%d" % n, read_index=True) == b"v%d" % n
        nursery.cancel_scope.cancel()


def test_encode_body_is_what_the_service_decodes() -> None:
    # The service decodes what the client library encodes (one codec, both ends).
    from coord.kv.commands import decode_body

    body = RegisterClient()
    assert decode_body(encode_body(body)) == body
