"""Bad input against a live server: every malformed class by hand, then
hypothesis over random and mutated bytes.  The server must answer with an
error or close the connection, never crash or hang, and keep serving."""

from __future__ import annotations

import logging
import struct

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord.rpc import ErrorCode
from coord.wire.frame import VERSION, FrameKind, encode_frame
from tests.unit.test_rpc_common import (
    ADDR,
    Cluster,
    Echo,
    RawPeer,
    error_of,
    raw_peer,
    request_body,
    running_server,
)

VALID = request_body("test.echo", [b"payload", "n"])


async def _still_serves(cluster: Cluster) -> None:
    async with cluster.client() as client:
        with trio.fail_after(5):
            assert (await client.call(ADDR, Echo(b"alive"))).data == b"alive"


async def _answer_then_still_usable(peer: RawPeer, body: bytes) -> tuple[str, str]:
    """Send a bad REQUEST body; expect an error reply, then a good call on the same link."""
    frame = await peer.call_raw(11, body)
    assert frame is not None and frame.request_id == 11
    error = error_of(frame)
    good = await peer.call_raw(12, VALID)
    assert good is not None and good.kind == FrameKind.RESPONSE and good.request_id == 12
    return error


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"\xc1\xc1\xc1", ErrorCode.BAD_REQUEST, "msgpack"),  # garbage msgpack
        (msgpack.packb([1, 2]), ErrorCode.BAD_REQUEST, "method"),  # wrong shape
        (request_body("no.such.method", []), ErrorCode.UNKNOWN_METHOD, "no.such.method"),
        (request_body("test.echo", ["not-bytes", "n"]), ErrorCode.BAD_REQUEST, "Echo.data"),
        (request_body("test.echo", [b"x", 5]), ErrorCode.BAD_REQUEST, "Echo.note"),
        (request_body("test.echo", "not-a-list"), ErrorCode.BAD_REQUEST, "array"),
        (request_body("test.bump_amo", ["k", 0.0]), ErrorCode.BAD_REQUEST, "session"),
        (request_body("test.echo", [b"x"], [1, -2, 3]), ErrorCode.BAD_REQUEST, "session"),
        (request_body("test.note", ["x", 1]), ErrorCode.UNKNOWN_METHOD, "test.note"),
    ],
)
async def test_bad_request_bodies_get_an_error_reply_and_the_link_survives(
    body: bytes, code: str, needle: str
) -> None:
    async with running_server() as cluster, raw_peer(cluster) as peer:
        got_code, message = await _answer_then_still_usable(peer, body)
        assert got_code == code and needle in message
        assert cluster.service.budgets == [None]  # only the good call ran


def _with_version(raw: bytes, version: int) -> bytes:
    return bytes([version]) + raw[1:]


def _with_kind(raw: bytes, kind: int) -> bytes:
    return raw[:5] + bytes([kind]) + raw[6:]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: _with_version(p.frame(FrameKind.REQUEST, 1, VALID), VERSION + 1), "version"),
        (lambda p: struct.pack(">BI", VERSION, 1 << 24) + b"x" * 100, "exceeds"),
        (lambda p: struct.pack(">BI", VERSION, 2) + b"xx", "shorter"),
        (lambda p: _with_kind(p.frame(FrameKind.REQUEST, 1, VALID), 0xEE), "kind"),
        (lambda p: p.frame(FrameKind.RESPONSE, 1, b"\x90"), "unexpected RESPONSE"),
        (lambda p: p.frame(FrameKind.HELLO, 0, b"\x80"), "unexpected HELLO"),
        (lambda p: encode_frame(FrameKind.REQUEST, 1, sender=999, lamport=1,
                                budget_us=0, body=VALID), "frame from node 999"),
    ],
)
async def test_broken_framing_gets_a_protocol_error_and_the_connection_closes(
    make: object, needle: str
) -> None:
    async with running_server(max_frame_size=1 << 20) as cluster:
        async with raw_peer(cluster) as peer:
            await peer.send(make(peer))  # type: ignore[operator]
            with trio.fail_after(5):
                frame = await peer.receive()
                assert frame is not None and frame.request_id == 0
                code, message = error_of(frame)
                assert code == ErrorCode.PROTOCOL and needle in message
                assert await peer.receive() is None  # and then it hangs up
        await _still_serves(cluster)


async def test_truncated_frame_then_eof_closes_quietly() -> None:
    async with running_server() as cluster:
        async with raw_peer(cluster) as peer:
            await peer.send(peer.frame(FrameKind.REQUEST, 1, VALID)[:-4])
            await peer.stream.send_eof()  # type: ignore[attr-defined]
            with trio.fail_after(5):
                frame = await peer.receive()
                if frame is not None:  # it may say why before closing
                    assert error_of(frame)[0] == ErrorCode.PROTOCOL
                    assert await peer.receive() is None
        await _still_serves(cluster)


async def test_a_bad_notification_is_dropped_without_closing() -> None:
    async with running_server() as cluster, raw_peer(cluster) as peer:
        await peer.send(peer.frame(FrameKind.NOTIFY, 0, msgpack.packb(["test.note", [1, 1]])))
        await peer.send(peer.frame(FrameKind.NOTIFY, 0, b"\xc1"))
        good = await peer.call_raw(3, VALID)
        assert good is not None and good.kind == FrameKind.RESPONSE
        assert cluster.service.notes == []


# --- hypothesis ---------------------------------------------------------------

_FRAME_KINDS = [int(k) for k in FrameKind]


def _mutate(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for pos, val in zip(positions, values, strict=False):
        if out:
            out[pos % len(out)] = val
    return bytes(out)


class _ErrorLogs(logging.Handler):
    """Collects ERROR records: the server logs bugs of its own at that level."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _attack(payload: bytes, authenticate: bool) -> None:
    errors = _ErrorLogs()
    logger = logging.getLogger("coord.rpc")
    logger.addHandler(errors)
    try:
        async with running_server(max_frame_size=1 << 16, handshake_timeout=2.0) as cluster:
            async with raw_peer(cluster, authenticate=authenticate) as peer:
                with trio.fail_after(10):
                    await peer.send(payload)
                    await peer.stream.send_eof()  # type: ignore[attr-defined]
                    # Drain until the server closes: it must, since we sent EOF.
                    for _ in range(10_000):
                        if await peer.receive() is None:
                            break
            await _still_serves(cluster)
    except ExceptionGroup as group:  # unwrap the harness's nursery for a readable failure
        raise group.exceptions[0] from None
    finally:
        logger.removeHandler(errors)
    assert errors.records == [], [r.getMessage() for r in errors.records]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200), authenticate=st.booleans())
def test_random_bytes_never_crash_or_hang_the_server(payload: bytes, authenticate: bool) -> None:
    trio.run(_attack, payload, authenticate)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(_FRAME_KINDS),
    positions=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
    values=st.lists(st.integers(min_value=0, max_value=255), max_size=4),
    body=st.sampled_from([VALID, request_body("test.bump_amo", ["k", 0.0], [1, 1, 1]),
                          msgpack.packb(["test.note", ["t", 1]]), b""]),
    repeat=st.integers(min_value=1, max_value=3),
)
def test_mutated_valid_frames_never_crash_or_hang_the_server(
    kind: int, positions: list[int], values: list[int], body: bytes, repeat: int
) -> None:
    peer = RawPeer(None)  # type: ignore[arg-type]  # only used to build frames
    frame = encode_frame(FrameKind(kind), 5, sender=peer.node_id, lamport=1,
                         budget_us=1_000_000, body=body)
    trio.run(_attack, _mutate(frame, positions, values) * repeat, True)
