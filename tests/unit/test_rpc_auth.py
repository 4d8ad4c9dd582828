"""Mutual authentication: the sans-IO handshake, then both directions end to end."""

from __future__ import annotations

import logging

import msgpack
import pytest
import trio

from coord.rpc import AuthenticationError, ClientConfig, RpcClient
from coord.rpc.auth import NONCE_SIZE, ClientHandshake, PeerInfo, ServerHandshake
from coord.wire import MalformedFrame
from coord.wire.frame import FrameKind
from tests.unit.test_rpc_common import (
    ADDR,
    SECRET,
    Echo,
    RawPeer,
    client_config,
    error_of,
    running_server,
)

CLIENT = PeerInfo(2, "client")
SERVER = PeerInfo(1, "meta")


def _pair(client_secret: bytes, server_secret: bytes) -> tuple[ClientHandshake, ServerHandshake]:
    return (ClientHandshake(client_secret, CLIENT, b"c" * NONCE_SIZE),
            ServerHandshake(server_secret, SERVER, b"s" * NONCE_SIZE))


def test_matching_secrets_authenticate_both_sides() -> None:
    client, server = _pair(SECRET, SECRET)
    proof = client.on_challenge(server.on_hello(client.hello()))
    assert client.server == SERVER
    assert server.on_proof(proof) == CLIENT


def test_client_detects_a_server_without_the_secret() -> None:
    client, server = _pair(SECRET, b"other")
    with pytest.raises(AuthenticationError, match="cluster secret mismatch"):
        client.on_challenge(server.on_hello(client.hello()))
    assert client.server is None


def test_server_detects_a_client_without_the_secret() -> None:
    _, server = _pair(SECRET, SECRET)
    challenge = server.on_hello(ClientHandshake(b"x", CLIENT, b"c" * NONCE_SIZE).hello())
    # A client that does not know the secret can only guess a proof.
    forged = msgpack.packb({"proof": b"\x00" * 32})
    assert challenge
    with pytest.raises(AuthenticationError, match="cluster secret mismatch"):
        server.on_proof(forged)


def test_reflected_server_proof_is_not_a_client_proof() -> None:
    """An attacker who relays the server's own proof back must fail (role in the MAC)."""
    client, server = _pair(SECRET, SECRET)
    challenge = msgpack.unpackb(server.on_hello(client.hello()))
    with pytest.raises(AuthenticationError):
        server.on_proof(msgpack.packb({"proof": challenge["proof"]}))


def test_proof_is_bound_to_both_nonces() -> None:
    """A proof recorded in one session does not work in another."""
    client, server = _pair(SECRET, SECRET)
    proof = client.on_challenge(server.on_hello(client.hello()))
    server2 = ServerHandshake(SECRET, SERVER, b"t" * NONCE_SIZE)
    server2.on_hello(client.hello())
    with pytest.raises(AuthenticationError):
        server2.on_proof(proof)


@pytest.mark.parametrize(
    "body",
    [b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"id": "x", "role": "r",
                                                            "nonce": b"n"}),
     msgpack.packb({"id": 1, "role": "r", "nonce": b"short"})],
)
def test_malformed_hello_is_a_protocol_error(body: bytes) -> None:
    _, server = _pair(SECRET, SECRET)
    with pytest.raises(MalformedFrame):
        server.on_hello(body)


def test_proof_before_hello_is_a_protocol_error() -> None:
    _, server = _pair(SECRET, SECRET)
    with pytest.raises(MalformedFrame):
        server.on_proof(msgpack.packb({"proof": b"x"}))


async def test_client_with_wrong_secret_is_refused_on_both_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server() as cluster:
        service = cluster.service
        async with RpcClient(client_config(secret=b"wrong"), cluster.net) as client:
            with caplog.at_level(logging.WARNING, logger="coord.rpc.server"), pytest.raises(
                AuthenticationError, match="cluster secret mismatch"
            ):
                await client.call(ADDR, Echo(b"x"))
            with trio.fail_after(5):
                while not any("refused connection" in r.message for r in caplog.records):
                    await trio.sleep(0.01)
        assert service.executions == {} and service.budgets == []  # nothing was served
        assert any("cluster secret mismatch" in r.getMessage() for r in caplog.records)


async def test_server_with_wrong_secret_is_refused_on_both_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        running_server(secret=b"server-has-another-secret") as cluster,
        RpcClient(client_config(), cluster.net) as client,
    ):
        with caplog.at_level(logging.WARNING, logger="coord.rpc.server"), pytest.raises(
            AuthenticationError, match="cluster secret mismatch"
        ) as info:
            await client.call(ADDR, Echo(b"x"))
        assert "server node 1" in str(info.value)
        with trio.fail_after(5):
            while not any("client refused our proof" in r.getMessage()
                          for r in caplog.records):
                await trio.sleep(0.01)


async def test_authentication_errors_are_not_retried() -> None:
    async with running_server() as cluster:
        async with RpcClient(client_config(secret=b"wrong"), cluster.net) as client:
            with pytest.raises(AuthenticationError):
                await client.call(ADDR, Echo(b"x"))
        assert cluster.net.connects == 1


async def test_silent_peer_is_dropped_after_the_handshake_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_server(handshake_timeout=2.0) as cluster:
        stream = await cluster.net.connect(ADDR)
        peer = RawPeer(stream)
        start = trio.current_time()
        assert await peer.receive() is None  # the server hung up on us
        assert 2.0 <= trio.current_time() - start < 3.0
        await stream.aclose()
        # and it still serves others
        async with cluster.client() as client:
            assert (await client.call(ADDR, Echo(b"ok"))).data == b"ok"


async def test_requests_before_authentication_are_refused() -> None:
    async with running_server() as cluster:
        stream = await cluster.net.connect(ADDR)
        peer = RawPeer(stream)
        await peer.send(peer.frame(FrameKind.REQUEST, 1, msgpack.packb(["test.echo", None,
                                                                        [b"x", ""]])))
        frame = await peer.receive()
        assert frame is not None
        code, message = error_of(frame)
        assert code == "PROTOCOL" and "HELLO" in message
        assert await peer.receive() is None
        await stream.aclose()
        assert cluster.service.budgets == []


async def test_empty_secret_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        ClientConfig(node_id=1, secret=b"")
