"""At-most-once calls: retransmission under dropped and duplicated frames, waiting
for a running first execution, eviction by low-water mark and by session
expiry, and the explicit refusal afterwards."""

from __future__ import annotations

import math

import msgpack
import pytest
import trio

from coord.rpc import ErrorCode, Fault, FaultyStream, ReplyExpired
from coord.rpc.messages import OPEN_SESSION
from coord.wire.frame import Frame, FrameKind
from tests.unit.test_rpc_common import (
    ADDR,
    BumpAtLeastOnce,
    BumpAtMostOnce,
    Cluster,
    error_of,
    raw_peer,
    request_body,
    running_server,
)


def _is_count_reply(frame: Frame) -> bool:
    """A RESPONSE carrying a CountReply ([int]), not the session-open reply ([float])."""
    if frame.kind != FrameKind.RESPONSE:
        return False
    body = msgpack.unpackb(frame.body)
    return isinstance(body, list) and len(body) == 1 and type(body[0]) is int


def _fault_server_replies(cluster: Cluster, fault: Fault, times: int) -> list[FaultyStream]:
    """Apply `fault` to the first `times` CountReply responses the server sends."""
    left = [times]
    streams: list[FaultyStream] = []

    def policy(frame: Frame) -> Fault:
        if left[0] > 0 and _is_count_reply(frame):
            left[0] -= 1
            return fault
        return Fault.PASS

    def wrap(address: str, stream: trio.abc.Stream) -> trio.abc.Stream:
        faulty = FaultyStream(stream, policy)
        streams.append(faulty)
        return faulty

    cluster.net.wrap_server = wrap
    return streams


async def test_dropped_reply_is_retransmitted_and_answered_from_the_cache(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster:
        streams = _fault_server_replies(cluster, Fault.DROP, times=2)
        async with cluster.client() as client:
            reply = await client.call(ADDR, BumpAtMostOnce("k"))
        assert reply.executions == 1
        assert cluster.service.executions == {"k": 1}  # retransmitted, never re-executed
        assert sum(s.dropped for s in streams) == 2


async def test_dropped_reply_makes_an_at_least_once_call_run_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The contrast: without the cache, the retry re-executes."""
    async with running_server() as cluster:
        _fault_server_replies(cluster, Fault.DROP, times=1)
        async with cluster.client() as client:
            reply = await client.call(ADDR, BumpAtLeastOnce("k"))
        assert reply.executions == 2


async def test_duplicated_requests_execute_once() -> None:
    async with running_server() as cluster:
        duplicated: list[FaultyStream] = []

        def wrap(address: str, stream: trio.abc.Stream) -> trio.abc.Stream:
            faulty = FaultyStream(
                stream,
                lambda f: Fault.DUPLICATE if f.kind == FrameKind.REQUEST else Fault.PASS,
            )
            duplicated.append(faulty)
            return faulty

        cluster.net.wrap_client = wrap
        async with cluster.client() as client:
            for expected in (1, 2, 3):
                assert (await client.call(ADDR, BumpAtMostOnce("k"))).executions == expected
        assert cluster.service.executions == {"k": 3}
        assert duplicated[0].duplicated >= 3


async def test_duplicated_replies_are_ignored() -> None:
    async with running_server() as cluster:
        _fault_server_replies(cluster, Fault.DUPLICATE, times=100)
        async with cluster.client() as client:
            for expected in (1, 2, 3):
                assert (await client.call(ADDR, BumpAtMostOnce("k"))).executions == expected
        assert cluster.service.executions == {"k": 3}


async def test_retry_while_the_first_execution_runs_waits_for_its_result(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster, cluster.client(attempt_timeout=1.0) as client:
        start = trio.current_time()
        reply = await client.call(ADDR, BumpAtMostOnce("slow", seconds=2.5), timeout=8.0)
        assert reply.executions == 1
        assert cluster.service.executions == {"slow": 1}
        assert trio.current_time() - start >= 2.5  # the answer is the first execution's


async def _open_raw_session(peer: object, client_id: int) -> None:
    frame = await peer.call_raw(100, request_body(OPEN_SESSION, [client_id]))  # type: ignore[attr-defined]
    assert frame is not None and frame.kind == FrameKind.RESPONSE


async def test_low_water_mark_evicts_and_retries_below_it_are_refused() -> None:
    async with running_server() as cluster, raw_peer(cluster) as peer:
        cid = 0xABC
        await _open_raw_session(peer, cid)
        one = await peer.call_raw(1, request_body("test.bump_amo", ["a", 0.0], [cid, 1, 1]))
        two = await peer.call_raw(2, request_body("test.bump_amo", ["b", 0.0], [cid, 2, 2]))
        assert one is not None and one.kind == FrameKind.RESPONSE
        assert two is not None and two.kind == FrameKind.RESPONSE
        assert len(cluster.server.reply_cache) == 1  # seq 1 dropped: the client acked it
        retry_one = await peer.call_raw(3, request_body("test.bump_amo", ["a", 0.0],
                                                        [cid, 1, 2]))
        assert retry_one is not None
        code, message = error_of(retry_one)
        assert code == ErrorCode.REPLY_EXPIRED and "seq 1" in message
        retry_two = await peer.call_raw(4, request_body("test.bump_amo", ["b", 0.0],
                                                        [cid, 2, 2]))
        assert retry_two is not None and retry_two.kind == FrameKind.RESPONSE
        assert bytes(retry_two.body) == bytes(two.body)  # the cached reply, byte for byte
        assert cluster.service.executions == {"a": 1, "b": 1}


async def test_session_expiry_drops_replies_and_refuses_without_executing(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server(session_ttl=5.0) as cluster, raw_peer(cluster) as peer:
        cid = 0xDEF
        await _open_raw_session(peer, cid)
        body = request_body("test.bump_amo", ["k", 0.0], [cid, 1, 1])
        first = await peer.call_raw(1, body)
        assert first is not None and first.kind == FrameKind.RESPONSE
        await trio.sleep(6.0)
        retry = await peer.call_raw(2, body)
        assert retry is not None
        assert error_of(retry)[0] == ErrorCode.SESSION_UNKNOWN
        assert cluster.service.executions == {"k": 1}
        assert cluster.server.reply_cache.sessions == 0


async def test_client_reports_reply_expired_when_its_retry_finds_the_session_gone(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server(session_ttl=0.5) as cluster:
        _fault_server_replies(cluster, Fault.DROP, times=1)
        async with cluster.client(attempt_timeout=1.0) as client:
            with pytest.raises(ReplyExpired, match="may have executed"):
                await client.call(ADDR, BumpAtMostOnce("k"))
            assert cluster.service.executions == {"k": 1}  # never executed twice
            # a fresh call moves to a fresh session and works
            assert (await client.call(ADDR, BumpAtMostOnce("k"))).executions == 2


async def test_fresh_call_after_the_server_forgot_the_session_opens_a_new_one() -> None:
    async with running_server() as cluster, cluster.client() as client:
        assert (await client.call(ADDR, BumpAtMostOnce("k"))).executions == 1
        assert cluster.server.reply_cache.expire(now=math.inf)  # as after a server restart
        assert (await client.call(ADDR, BumpAtMostOnce("k"))).executions == 2
        assert cluster.service.executions == {"k": 2}
        assert cluster.server.reply_cache.sessions == 1


async def test_acknowledgements_keep_the_cache_small() -> None:
    async with running_server() as cluster, cluster.client() as client:
        for _ in range(50):
            await client.call(ADDR, BumpAtMostOnce("k"))
        assert len(cluster.server.reply_cache) <= 1
