"""The KV client over a scripted RPC client, and the leader's KV service over
a scripted driver: exactly-once retries, redirects, failover, the time bound
(with and without the first try's scope-free fast path), the leader's fast
encoding path agreeing with the general one, and shared read barriers that
each started after every read they answer arrived."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import trio
import trio.testing

from coord.kv.commands import (
    Cas,
    ClientRequest,
    ExtCommand,
    LeaderCommand,
    LogRecord,
    Put,
    RegisterClient,
    decode_body,
    decode_record,
    encode_body,
)
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.remote import KvClient, KvError, KvTimeout, SessionExpired
from coord.kv.results import (
    ErrorCode,
    ErrorResult,
    PutResult,
    RegisterResult,
    Result,
    encode_result,
)
from coord.kv.service import (
    BUSY,
    NOT_LEADER,
    OK,
    UNAVAILABLE,
    KvReply,
    KvService,
    KvSubmit,
    SharedReadBarrier,
)
from coord.kv.types import ClientId, LogTime, SeqNo
from coord.raft.driver import Busy, RaftDriver, RaftUnavailable
from coord.raft.types import LogIndex, NodeId
from coord.rpc import ClientConfig, RemoteError, RpcClient
from coord.wire.errors import ConnectionLost, Timeout

A, B, C = "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"
Script = Callable[[str, KvSubmit | Any], KvReply]


class ScriptedRpc:
    """Answers each call with `script(address, request)`; records every call.
    Like the real client, a call never outlives its timeout (`hang` models a
    member that never answers)."""

    def __init__(self, script: Script) -> None:
        self.config = ClientConfig(node_id=9, secret=b"s" * 16, role="test")
        self.script = script
        self.calls: list[tuple[str, Any]] = []
        self.hang: set[str] = set()
        self.ignore_timeout = False  # a broken RPC layer: hangs past its own timeout

    async def call(self, address: str, request: Any, *, timeout: float | None = None,
                   deadline: float | None = None) -> KvReply:
        self.calls.append((address, request))
        if address in self.hang:
            if self.ignore_timeout:
                await trio.sleep_forever()
            await trio.sleep(timeout or 1.0)
            raise Timeout("no reply")
        return self.script(address, request)


def _ok(result: Result) -> KvReply:
    return KvReply(OK, encode_result(result))


def _leader_is(leader: str, result: Result | None = None) -> Script:
    def script(address: str, request: Any) -> KvReply:
        if address != leader:
            return KvReply(NOT_LEADER, leader=leader)
        if isinstance(decode_body(request.body), RegisterClient):
            return _ok(RegisterResult(ClientId(42), 10_000))
        return _ok(result or PutResult(LogIndex(5), 1))
    return script


def _client(rpc: ScriptedRpc, *, timeout: float = 10.0, attempt: float = 2.0) -> KvClient:
    return KvClient(cast(RpcClient, rpc), [A, B, C], timeout=timeout, attempt_timeout=attempt)


def _requests(rpc: ScriptedRpc) -> list[ClientRequest]:
    out = []
    for _, req in rpc.calls:
        body = decode_body(req.body)
        if isinstance(body, ClientRequest):
            out.append(body)
    return out


async def test_redirects_are_followed_and_the_leader_is_then_called_directly() -> None:
    rpc = ScriptedRpc(_leader_is(B))
    kv = _client(rpc)
    await kv.open()
    assert [a for a, _ in rpc.calls] == [A, B]  # A redirected to B at once
    rpc.calls.clear()
    for i in range(3):
        assert await kv.put(b"k%d" % i, b"v") == PutResult(LogIndex(5), 1)
    assert [a for a, _ in rpc.calls] == [B, B, B]
    reqs = _requests(rpc)
    # seq 1, 2, 3; each request acknowledges the replies before it
    assert [(r.client_id, r.seq, r.acked) for r in reqs] == [(42, 1, 0), (42, 2, 1), (42, 3, 2)]
    assert reqs[2].command == Put(b"k2", b"v")


async def test_a_retry_resends_the_same_bytes_elsewhere_after_the_leader_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    leader = [B]
    failed: list[bytes] = []

    def script(address: str, request: Any) -> KvReply:
        if address == B and leader[0] == C:
            failed.append(request.body)
            raise ConnectionLost("B died")
        return _leader_is(leader[0])(address, request)

    rpc = ScriptedRpc(script)
    kv = _client(rpc)
    await kv.open()
    await kv.put(b"a", b"1")
    leader[0] = C  # B crashes; C takes over
    rpc.calls.clear()
    await kv.put(b"b", b"2")
    bodies = [req.body for _, req in rpc.calls]
    assert rpc.calls[0][0] == B and rpc.calls[-1][0] == C
    assert len(set(bodies)) == 1 and failed  # one value, resent as is wherever it goes
    assert _requests(rpc)[-1] == ClientRequest(ClientId(42), SeqNo(2), SeqNo(1), Put(b"b", b"2"))
    assert kv.retries >= 2


async def test_a_leader_that_never_answers_costs_at_most_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rpc = ScriptedRpc(_leader_is(B))
    kv = _client(rpc, timeout=10.0, attempt=2.0)
    await kv.open()
    rpc.hang = {A, B, C}
    start = trio.current_time()
    with pytest.raises(KvTimeout):
        await kv.put(b"k", b"v")
    assert trio.current_time() - start == pytest.approx(10.0)
    assert len(rpc.calls) > 3  # the first try ran on its own bound, then the loop went on


async def test_when_an_attempt_may_outlast_the_timeout_the_scope_bounds_the_first_try(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rpc = ScriptedRpc(_leader_is(B))
    kv = _client(rpc, timeout=1.5, attempt=1.0)  # attempt + reply grace (1 s) > timeout
    await kv.open()
    rpc.hang, rpc.ignore_timeout = {B}, True
    start = trio.current_time()
    with pytest.raises(KvTimeout):
        await kv.put(b"k", b"v")
    assert trio.current_time() - start == pytest.approx(1.5)


async def test_unavailable_everywhere_times_out_with_the_last_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rpc = ScriptedRpc(lambda address, request: KvReply(UNAVAILABLE))
    kv = _client(rpc, timeout=3.0)
    with pytest.raises(KvTimeout, match="UNAVAILABLE"):
        await kv.open()


async def test_session_expired_and_permanent_errors_are_raised() -> None:
    result: list[Result] = [ErrorResult(ErrorCode.SESSION_EXPIRED, "gone")]
    rpc = ScriptedRpc(_leader_is(A))
    kv = _client(rpc)
    await kv.open()
    rpc.script = lambda address, request: _ok(result[0])
    with pytest.raises(SessionExpired):
        await kv.put(b"k", b"v")

    def refuse(address: str, request: Any) -> KvReply:
        raise RemoteError("BAD_COMMAND", "no")

    rpc.script = refuse
    with pytest.raises(KvError, match="BAD_COMMAND"):
        await kv.cas(b"k", None, b"v")
    assert _requests(rpc)[-1].command == Cas(b"k", None, b"v")


# --- the leader's service ----------------------------------------------------------------------


class ScriptedDriver:
    def __init__(self) -> None:
        self.proposed: list[bytes] = []
        self.refuse: RaftUnavailable | None = None

    async def read_barrier(self) -> LogIndex:
        return LogIndex(0)

    async def propose(self, data: bytes, *, early: bool = False) -> Applied:
        if self.refuse is not None:
            raise self.refuse
        self.proposed.append(data)
        return Applied(LogIndex(len(self.proposed)), PutResult(LogIndex(len(self.proposed)), 1))


def _service(driver: ScriptedDriver) -> KvService:
    return KvService(cast(RaftDriver[Applied], driver), cast(KVStateMachine, None),
                     {NodeId(2): B})


@pytest.mark.parametrize("body", [
    ClientRequest(ClientId(3), SeqNo(7), SeqNo(6), Put(b"k", b"v" * 256)),  # the fast path
    ClientRequest(ClientId(3), SeqNo(8), SeqNo(7), Cas(b"k", None, b"v")),  # the general one
    RegisterClient(),
])
async def test_the_service_proposes_the_stamped_body(body: Any) -> None:
    driver = ScriptedDriver()
    service = _service(driver)
    reply = await service.submit(KvSubmit(encode_body(body)), cast(Any, None))
    assert reply == KvReply(OK, encode_result(PutResult(LogIndex(1), 1)))
    record = decode_record(driver.proposed[0])
    assert record.body == body and record.timestamp > 1_700_000_000_000
    assert decode_record(driver.proposed[0]) == LogRecord(LogTime(record.timestamp), body)


@pytest.mark.parametrize("raw", [
    b"\xc1",
    encode_body(LeaderCommand(ExtCommand(1, b"x"))),
    encode_body(ClientRequest(ClientId(3), SeqNo(1), SeqNo(0), ExtCommand(1, b"x"))),
    encode_body(ClientRequest(ClientId(3), SeqNo(1), SeqNo(0), Put(b"k", b"v"))) + b"\x00",
])
async def test_the_service_refuses_what_a_client_may_not_propose(raw: bytes) -> None:
    driver = ScriptedDriver()
    with pytest.raises(RemoteError) as refused:
        await _service(driver).submit(KvSubmit(raw), cast(Any, None))
    assert refused.value.code == "BAD_COMMAND" and driver.proposed == []


async def test_the_service_redirects_with_the_leaders_client_address() -> None:
    driver = ScriptedDriver()
    raw = encode_body(ClientRequest(ClientId(3), SeqNo(1), SeqNo(0), Put(b"k", b"v")))
    driver.refuse = RaftUnavailable("not leader", NodeId(2))
    assert await _service(driver).submit(KvSubmit(raw), cast(Any, None)) == KvReply(
        NOT_LEADER, leader=B)
    driver.refuse = Busy("busy", None)
    assert await _service(driver).submit(KvSubmit(raw), cast(Any, None)) == KvReply(BUSY)


# --- shared read barriers ----------------------------------------------------------------------


class GatedBarrier:
    """A driver's read_barrier that runs until the test opens its gate."""

    def __init__(self) -> None:
        self.started: list[int] = []  # the clock value at each barrier's start
        self.gates: list[trio.Event] = []
        self.clock = 0  # a logical clock: bumped by each arrival and start
        self.fail: RaftUnavailable | None = None
        self.runners: list[str] = []  # the name of the task that ran each barrier

    async def __call__(self) -> LogIndex:
        self.clock += 1
        self.started.append(self.clock)
        self.runners.append(trio.lowlevel.current_task().name)
        gate = trio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        return LogIndex(1)


async def _reader(shared: SharedReadBarrier, gb: GatedBarrier,
                  out: list[tuple[int, int, RaftUnavailable | None]]) -> None:
    gb.clock += 1
    arrived = gb.clock
    error = await shared.wait()
    out.append((arrived, len(gb.started), error))  # which barriers had started by the answer


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_reads_share_barriers_that_started_after_they_arrived() -> None:
    gb = GatedBarrier()
    shared = SharedReadBarrier(gb)
    out: list[tuple[int, int, RaftUnavailable | None]] = []
    with trio.fail_after(10):  # a bug here would hang: fail instead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_reader, shared, gb, out)
            await _settle()
            assert len(gb.started) == 1  # the first read runs a barrier
            for _ in range(10):  # these arrive while it runs: they need the next one
                nursery.start_soon(_reader, shared, gb, out)
            await _settle()
            assert len(gb.started) == 1 and out == []
            gb.gates[0].set()
            await _settle()
            assert len(out) == 1 and len(gb.started) == 2  # one barrier for all ten
            gb.gates[1].set()
    assert len(out) == 11 and len(gb.started) == 2
    for arrived, started_by_answer, error in out:
        # the barrier that answered (the last started before the answer) started after arrival
        assert gb.started[started_by_answer - 1] > arrived and error is None


async def test_when_a_rounds_runner_is_cancelled_its_other_readers_start_over() -> None:
    gb = GatedBarrier()
    shared = SharedReadBarrier(gb)
    out: list[tuple[int, int, RaftUnavailable | None]] = []
    scopes = {name: trio.CancelScope() for name in "ABCD"}
    answered: list[str] = []

    async def reader(name: str) -> None:
        with scopes[name]:
            await _reader(shared, gb, out)
            answered.append(name)

    with trio.fail_after(10):  # a bug here would hang: fail instead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, "A", name="A")
            await _settle()
            nursery.start_soon(reader, "B", name="B")
            nursery.start_soon(reader, "C", name="C")
            await _settle()
            gb.gates[0].set()  # A is answered; B or C runs round 2 for both
            await _settle()
            assert answered == ["A"] and len(gb.started) == 2
            nursery.start_soon(reader, "D", name="D")  # joins round 3
            await _settle()
            runner = gb.runners[1]
            scopes[runner].cancel()  # round 2 proved nothing: the other starts over
            await _settle()
            assert answered == ["A"] and len(gb.started) == 3  # a new round runs
            gb.gates[2].set()  # one round for the other and D, whichever of them runs it
    assert len(gb.started) == 3
    other = "C" if runner == "B" else "B"
    assert sorted(answered) == sorted(["A", other, "D"])
    for arrived, started_by_answer, error in out:
        assert gb.started[started_by_answer - 1] > arrived and error is None


async def test_a_failed_barrier_answers_its_whole_round_with_the_redirect() -> None:
    gb = GatedBarrier()
    shared = SharedReadBarrier(gb)
    out: list[tuple[int, int, RaftUnavailable | None]] = []
    gb.fail = RaftUnavailable("not leader", NodeId(2))
    with trio.fail_after(10):  # a bug here would hang: fail instead
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(_reader, shared, gb, out)
            await _settle()
            gb.gates[0].set()
            await _settle()
            gb.gates[1].set()
    assert len(gb.started) == 2
    assert [e is gb.fail for _, _, e in out] == [True] * 4
