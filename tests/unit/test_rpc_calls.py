"""Calls end to end over memory streams: typing, errors, concurrency, deadlines,
cancellation, retries per semantics, notifications, Lamport time, shutdown."""

from __future__ import annotations

import math
import random

import pytest
import trio

from coord.rpc import (
    AuthenticationError,
    ConnectionLost,
    ErrorCode,
    Fault,
    FaultyStream,
    ProtocolError,
    RemoteError,
    ReplyExpired,
    Router,
    RpcServer,
    Timeout,
    Unavailable,
    is_transient,
)
from coord.rpc.client import RpcClient
from coord.wire.frame import Frame, FrameKind
from tests.unit.test_rpc_common import (
    ADDR,
    BumpAtLeastOnce,
    BumpAtMostOnce,
    BumpMaybe,
    Cluster,
    Crash,
    Echo,
    EchoReply,
    Fail,
    Note,
    Service,
    Sleep,
    Unhandled,
    client_config,
    running_server,
    server_config,
)


async def test_typed_call_round_trip() -> None:
    async with running_server() as cluster, cluster.client() as client:
        reply = await client.call(ADDR, Echo(b"\x00" * 1000, "hi"))
        assert reply == EchoReply(b"\x00" * 1000, "hi")
        assert (await client.call(ADDR, Echo(b""))).note == "from 2"  # ctx.peer is us


async def test_remote_errors_carry_code_and_message() -> None:
    async with running_server() as cluster, cluster.client() as client:
        with pytest.raises(RemoteError) as info:
            await client.call(ADDR, Fail("ENOENT", "no such inode 7"))
        assert info.value.code == "ENOENT" and "no such inode 7" in info.value.message
        with pytest.raises(RemoteError) as crash:
            await client.call(ADDR, Crash())
        assert crash.value.code == ErrorCode.INTERNAL
        assert "RuntimeError" in crash.value.message  # type only, no traceback leaks
        with pytest.raises(RemoteError) as unknown:
            await client.call(ADDR, Unhandled())
        assert unknown.value.code == ErrorCode.UNKNOWN_METHOD
        assert not is_transient(unknown.value)
        # the connection survives all of that
        assert (await client.call(ADDR, Echo(b"still"))).data == b"still"


async def test_many_concurrent_calls_share_one_connection_and_finish_out_of_order() -> None:
    async with running_server() as cluster, cluster.client() as client:
        finished: list[int] = []

        async def one(i: int) -> None:
            # later calls sleep less, so replies come back in reverse order
            await client.call(ADDR, Sleep(0.05 * (10 - i), key=str(i)))
            finished.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
                await trio.sleep(0)  # issue them in order
        assert finished == list(reversed(range(10)))
        assert cluster.net.connects == 1


async def test_pool_spreads_calls_over_connections() -> None:
    async with running_server() as cluster, cluster.client(pool_size=3) as client:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(client.call, ADDR, Sleep(0.01, key=str(i)))
        assert cluster.net.connects == 3
        assert cluster.server.connection_count == 3


async def test_server_sees_remaining_budget_and_cancels_at_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster, cluster.client(attempt_timeout=10.0) as client:
        start = trio.current_time()
        with pytest.raises(Timeout, match=r"test\.sleep"):
            await client.call(ADDR, Sleep(100.0, key="slow"), timeout=3.0)
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
        assert len(cluster.service.budgets) == 1  # the one attempt had the whole budget
        budget = cluster.service.budgets[0]
        assert budget is not None and budget == pytest.approx(3.0, abs=0.01)
        with trio.fail_after(1):
            while "slow" not in cluster.service.cancelled:
                await trio.sleep(0.01)


async def test_retryable_attempts_get_a_share_of_the_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster, cluster.client(attempt_timeout=1.0) as client:
        await client.call(ADDR, Echo(b"x"), timeout=7.5)
        budget = cluster.service.budgets[-1]
        assert budget is not None and 0.9 <= budget <= 1.0  # capped by attempt_timeout
        start = trio.current_time()
        with pytest.raises(Timeout):  # slow handler: attempts time out, retried to the deadline
            await client.call(ADDR, Sleep(50.0), timeout=2.5)
        assert trio.current_time() - start == pytest.approx(2.5, abs=0.01)
        assert len(cluster.service.budgets) >= 3  # Echo's, then 2+ attempts of Sleep


async def test_cancelling_the_caller_cancels_the_handler(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster, cluster.client() as client:
        with trio.move_on_after(0.5):
            await client.call(ADDR, Sleep(100.0, key="abandoned"))
        with trio.fail_after(1):
            while "abandoned" not in cluster.service.cancelled:
                await trio.sleep(0.01)
        assert (await client.call(ADDR, Echo(b"after"))).data == b"after"


async def test_only_idempotent_calls_are_retried() -> None:
    async with running_server() as cluster, cluster.client() as client:
        service = cluster.service
        with pytest.raises(RemoteError) as info:
            await client.call(ADDR, BumpMaybe("maybe", fail_first=1))
        assert info.value.code == ErrorCode.OVERLOADED and is_transient(info.value)
        assert service.executions["maybe"] == 1  # MAYBE: never retried

        reply = await client.call(ADDR, BumpAtLeastOnce("alo", fail_first=2))
        assert reply.executions == 3  # AT_LEAST_ONCE: retried until it worked
        assert service.executions["alo"] == 3

        with pytest.raises(RemoteError):  # gives up after max_attempts (4)
            await client.call(ADDR, BumpAtLeastOnce("alo-hopeless", fail_first=100))
        assert service.executions["alo-hopeless"] == 4


async def test_permanent_errors_are_not_retried() -> None:
    async with running_server() as cluster, cluster.client() as client:
        for _ in range(2):
            with pytest.raises(RemoteError):
                await client.call(ADDR, Fail("EPERM", "no"))
        assert cluster.service.executions == {}


async def test_connection_lost_is_retried_for_idempotent_calls_only() -> None:
    """The first connection breaks after delivering the request: ALO retries, MAYBE fails."""
    async with running_server() as cluster:
        broken_once: list[str] = []

        def wrap(address: str, stream: trio.abc.Stream) -> trio.abc.Stream:
            def policy(frame: Frame) -> Fault:
                return Fault.PASS

            faulty = FaultyStream(stream, policy)
            if not broken_once:
                broken_once.append(address)
                return _HangUpAfterReply(faulty)
            return faulty

        cluster.net.wrap_server = wrap
        async with cluster.client() as client:
            reply = await client.call(ADDR, BumpAtLeastOnce("k"))
            assert reply.executions == 2  # executed, reply lost with the connection, retried
        broken_once.clear()
        async with cluster.client() as client:  # a fresh client: a fresh, doomed connection
            with pytest.raises(ConnectionLost):
                await client.call(ADDR, BumpMaybe("m"))
            assert cluster.service.executions["m"] == 1


class _HangUpAfterReply(trio.abc.Stream):
    """Server-side stream that closes instead of sending its first RESPONSE."""

    def __init__(self, inner: FaultyStream) -> None:
        self.inner = inner
        self.handshake_frames = 2  # CHALLENGE and WELCOME go through

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.handshake_frames > 0:
            self.handshake_frames -= 1
            await self.inner.send_all(data)
            return
        await self.inner.aclose()
        raise trio.BrokenResourceError("hung up")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_unreachable_peer_is_unavailable_and_retried_with_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster, cluster.client() as client:
        start = trio.current_time()
        with pytest.raises(Unavailable, match="nowhere"):
            await client.call("nowhere", Echo(b"x"))
        elapsed = trio.current_time() - start
        assert 0 < elapsed <= 0.01 + 0.02 + 0.04  # three jittered backoffs, capped per attempt
        with pytest.raises(Unavailable):
            await client.call("nowhere", BumpMaybe("x"))


async def test_notifications_are_one_way_and_ordered() -> None:
    async with running_server() as cluster, cluster.client() as client:
        cluster.service.want_notes = 5
        for i in range(5):
            await client.notify(ADDR, Note("hello", i))
        with trio.fail_after(5):
            await cluster.service.notes_arrived.wait()
        assert [seq for _, seq, _ in cluster.service.notes] == [0, 1, 2, 3, 4]
        with pytest.raises(TypeError):
            await client.notify(ADDR, Echo(b"x"))  # a request is not a notification
        with pytest.raises(TypeError):
            await client.call(ADDR, Note("x", 1))  # type: ignore[arg-type]


async def test_lamport_time_is_stamped_and_merged_on_every_frame() -> None:
    async with running_server() as cluster, cluster.client() as client:
        cluster.server.clock.observe(1000)  # the server is far ahead
        before = client.clock.time
        await client.call(ADDR, Echo(b"x"))
        assert client.clock.time > 1000  # merged the reply's stamp
        seen_by_handler = cluster.service.lamports[-1]
        await client.call(ADDR, Echo(b"y"))
        assert cluster.service.lamports[-1] > seen_by_handler
        assert cluster.service.lamports[-1] > before
        assert cluster.server.clock.time >= cluster.service.lamports[-1]


async def test_graceful_shutdown_finishes_running_calls_then_refuses() -> None:
    async with running_server() as cluster, cluster.client() as client:
        results: list[int] = []

        async def slow() -> None:
            results.append((await client.call(ADDR, Sleep(0.2, key="inflight"))).executions)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0.05)
            await cluster.server.shutdown()
            assert results == [1]  # shutdown waited for the running handler
        assert cluster.server.connection_count == 0
        with pytest.raises(Unavailable):
            await client.call(ADDR, Echo(b"x"), timeout=0.5)


async def test_serve_reports_readiness_and_serves_immediately() -> None:
    net_server = RpcServer(server_config(), Router().include(Service()))
    from coord.rpc import MemoryNetwork

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        await nursery.start(net_server.serve, [net.listen("a")])
        async with RpcClient(client_config(), net) as client:
            assert (await client.call("a", Echo(b"x"))).data == b"x"
        await net_server.shutdown()


async def test_reply_of_wrong_type_from_server_is_a_protocol_error() -> None:
    """A server whose handler table disagrees with ours cannot crash the client."""
    async with running_server() as cluster, cluster.client() as client:
        cluster.server._routes["test.echo"] = cluster.server._routes["test.bump_alo"]
        with pytest.raises((ProtocolError, RemoteError)):
            await client.call(ADDR, Echo(b"x"))


async def test_at_most_once_call_uses_a_session() -> None:
    async with running_server() as cluster, cluster.client() as client:
        assert (await client.call(ADDR, BumpAtMostOnce("a"))).executions == 1
        assert (await client.call(ADDR, BumpAtMostOnce("a"))).executions == 2
        assert cluster.server.reply_cache.sessions == 1


async def test_deadline_in_the_past_fails_fast() -> None:
    async with running_server() as cluster, cluster.client() as client:
        with pytest.raises(Timeout):
            await client.call(ADDR, Echo(b"x"), deadline=trio.current_time() - 1)
        assert not math.isnan(trio.current_time())


def _drop_all_replies(cluster: Cluster) -> None:
    def wrap(address: str, stream: trio.abc.Stream) -> trio.abc.Stream:
        return FaultyStream(
            stream, lambda f: Fault.DROP if f.kind == FrameKind.RESPONSE else Fault.PASS
        )

    cluster.net.wrap_server = wrap


async def test_watchdog_fails_calls_to_an_unresponsive_server(
    autojump_clock: trio.abc.Clock,
) -> None:
    """No reply at all (not even the server's TIMEOUT): every waiting call fails
    `reply_grace` after its deadline, the reader's connection is closed."""
    async with running_server() as cluster:
        _drop_all_replies(cluster)
        async with cluster.client(reply_grace=0.5) as client:
            outcomes: list[tuple[str, float]] = []

            async def one(i: int) -> None:
                start = trio.current_time()
                with pytest.raises(Timeout):
                    await client.call(ADDR, BumpMaybe(str(i)), timeout=2.0)
                outcomes.append((str(i), trio.current_time() - start))

            async with trio.open_nursery() as nursery:
                for i in range(3):  # one reads the connection, two are parked
                    nursery.start_soon(one, i)
            assert len(outcomes) == 3
            assert all(2.0 < elapsed <= 2.5 + 0.3 for _, elapsed in outcomes)
            assert cluster.service.executions == {"0": 1, "1": 1, "2": 1}


async def test_calls_outside_async_with_use_a_precise_timer(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server() as cluster:
        _drop_all_replies(cluster)
        client = RpcClient(client_config(), cluster.net)  # no watchdog
        try:
            start = trio.current_time()
            with pytest.raises(Timeout):
                await client.call(ADDR, BumpMaybe("x"), timeout=2.0)
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)
        finally:
            await client.aclose()


class _RecordingRandom(random.Random):
    """Records the bounds of every jitter draw and returns the upper bound."""

    def __init__(self) -> None:
        super().__init__(0)
        self.caps: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.caps.append(b)
        return b


async def test_backoff_is_exponential_with_full_jitter(autojump_clock: trio.abc.Clock) -> None:
    async with running_server() as cluster:
        rng = _RecordingRandom()
        async with RpcClient(client_config(), cluster.net, rng=rng) as client:
            start = trio.current_time()
            with pytest.raises(RemoteError):
                await client.call(ADDR, BumpAtLeastOnce("k", fail_first=100))
            # 4 attempts, 3 sleeps drawn from U(0, cap) with caps 0.01 * 2**n
            assert rng.caps == [0.01, 0.02, 0.04]
            assert trio.current_time() - start == pytest.approx(0.07, abs=1e-6)


def test_transient_versus_permanent_is_decided_in_one_table() -> None:
    assert is_transient(Unavailable("x")) and is_transient(ConnectionLost("x"))
    assert is_transient(Timeout("x"))
    assert is_transient(RemoteError(ErrorCode.OVERLOADED, "x"))
    assert is_transient(RemoteError(ErrorCode.SHUTTING_DOWN, "x"))
    assert not is_transient(RemoteError(ErrorCode.BAD_REQUEST, "x"))
    assert not is_transient(RemoteError("ENOENT", "x"))
    assert not is_transient(ReplyExpired("x"))
    assert not is_transient(AuthenticationError("x"))
    assert not is_transient(ProtocolError("x"))
