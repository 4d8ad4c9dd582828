"""FrameStream's direct-syscall path over real sockets: partial sends, closing
a waiting reader, cancellation and fairness while data keeps arriving, a full
socket under `flush_nowait`, and `RpcClient.notify`'s no-await fast path."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from coord.clock.lamport import LamportClock
from coord.rpc import Router, RpcClient, RpcServer, TcpConnector
from coord.rpc.transport import _FAIR_RECEIVES, FrameStream
from coord.wire.errors import ConnectionLost
from coord.wire.frame import DEFAULT_MAX_FRAME, NO_BUDGET, FrameKind, encode_frame
from tests.unit.test_rpc_common import Echo, Note, Service, client_config, server_config

BODY = 60 * 1024  # one frame per 64 KiB receive, so a backlog takes many receives


def _pair() -> tuple[FrameStream, FrameStream]:
    a, b = socket.socketpair()
    return tuple(  # type: ignore[return-value]
        FrameStream(trio.SocketStream(trio.socket.from_stdlib_socket(s)), LamportClock(), n,
                    DEFAULT_MAX_FRAME)
        for n, s in ((1, a), (2, b))
    )


async def test_big_frames_survive_partial_sends_both_ways() -> None:
    left, right = _pair()
    try:
        assert left.direct_io and right.direct_io
        big = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffer holds
        got: list[bytes] = []

        async def read(fs: FrameStream) -> None:
            frame = await fs.receive()
            assert frame is not None
            got.append(bytes(frame.body))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, right)
                nursery.start_soon(read, left)
                for fs in (left, right):
                    fs.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, big)
                    fs.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, b"tail")  # two buffers
                    await fs.flush()
        assert got == [big, big]
        with trio.fail_after(5):
            for fs in (left, right):
                frame = await fs.receive()
                assert frame is not None and bytes(frame.body) == b"tail"
    finally:
        await left.aclose()
        await right.aclose()


async def test_closing_wakes_a_waiting_reader() -> None:
    left, right = _pair()
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                outcome: list[BaseException] = []

                async def reader() -> None:
                    try:
                        await right.receive()
                    except ConnectionLost as exc:
                        outcome.append(exc)

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await right.aclose()
        assert len(outcome) == 1
    finally:
        await left.aclose()
        await right.aclose()


def _backlog(frames: int) -> tuple[socket.socket, FrameStream]:
    """A reader whose socket already holds `frames` frames of BODY bytes."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    frame = encode_frame(FrameKind.NOTIFY, 0, sender=1, lamport=1, budget_us=NO_BUDGET,
                         body=b"x" * BODY)
    a.sendall(frame * frames)
    fs = FrameStream(trio.SocketStream(trio.socket.from_stdlib_socket(b)), LamportClock(), 2,
                     DEFAULT_MAX_FRAME)
    return a, fs


async def test_a_reader_with_data_always_ready_still_yields() -> None:
    frames = 4 * _FAIR_RECEIVES  # 64 frames, under 4 MiB: fits the enlarged buffers
    writer, fs = _backlog(frames)
    try:
        others = 0

        async def other() -> None:
            nonlocal others
            while True:
                await trio.sleep(0)
                others += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.sleep(0)
            start = others
            with trio.fail_after(10):
                for _ in range(frames):
                    frame = await fs.receive()
                    assert frame is not None and len(frame.body) == BODY
            # Without the fairness yield the other task would not have run at all.
            assert others - start >= 2
            nursery.cancel_scope.cancel()
    finally:
        writer.close()
        await fs.aclose()


async def test_a_cancelled_reader_stops_although_data_is_ready() -> None:
    writer, fs = _backlog(4)
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await fs.receive()
    finally:
        writer.close()
        await fs.aclose()


async def test_flush_nowait_keeps_what_the_kernel_did_not_take() -> None:
    left, right = _pair()
    try:
        body = b"y" * 1000
        queued = 0
        # The peer does not read: the socket buffers fill up and flush_nowait says so.
        for _ in range(100_000):
            left.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, body)
            queued += 1
            if not left.flush_nowait():
                break
        else:
            pytest.fail("the socket never filled up")
        got = 0

        async def read() -> None:
            nonlocal got
            while got < queued:
                frame = await right.receive()
                assert frame is not None and bytes(frame.body) == body
                got += 1

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await left.flush()  # the unsent rest of the last frame, then nothing more
        assert got == queued
    finally:
        await left.aclose()
        await right.aclose()


async def test_notifications_over_tcp_arrive_in_order_then_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = 0
    original = FrameStream.flush_nowait

    def counting(self: FrameStream) -> bool:
        nonlocal fast
        done = original(self)
        fast += done
        return done

    monkeypatch.setattr(FrameStream, "flush_nowait", counting)
    service = Service()
    service.want_notes = 300
    server = RpcServer(server_config(), Router().include(service))
    async with trio.open_nursery() as nursery:
        ((host, port), *_) = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        address = f"{host}:{port}"
        async with RpcClient(client_config(), TcpConnector()) as client:
            with trio.fail_after(20):
                for seq in range(300):  # the first opens the connection, the rest are pooled
                    await client.notify(address, Note("n", seq))
                await service.notes_arrived.wait()
                assert (await client.call(address, Echo(b"after"))).data == b"after"
        assert [seq for _, seq, _ in service.notes] == list(range(300))
        assert fast >= 290  # nearly all took the fast path (a full socket may not)
        await server.shutdown()


async def test_without_a_spare_descriptor_the_stream_goes_through_trio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fds(fd: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr("coord.rpc.transport.os.dup", no_fds)
    left, right = _pair()
    try:
        assert not left.direct_io and not right.direct_io
        left.queue_frame(FrameKind.NOTIFY, 0, NO_BUDGET, b"still works")
        assert not left.flush_nowait()  # no direct path: the caller must await flush
        await left.flush()
        with trio.fail_after(5):
            frame = await right.receive()
        assert frame is not None and bytes(frame.body) == b"still works"
    finally:
        await left.aclose()
        await right.aclose()
