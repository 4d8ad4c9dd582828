"""Mutual authentication by a shared cluster secret.  Sans-IO.

Exchange (frame kinds from `coord.wire.frame`)::

    client -> server  HELLO      {id, role, nonce_c}
    server -> client  CHALLENGE  {id, role, nonce_s, proof_s}
    client -> server  PROOF      {proof_c}            (or ERROR AUTH_FAILED)
    server -> client  WELCOME    {}                   (or ERROR AUTH_FAILED)

    proof_x = HMAC-SHA256(secret, DOMAIN || x || transcript)
    transcript = msgpack [client id, client role, server id, server role,
                          nonce_c, nonce_s]

Invariants:
- Each side's proof covers both fresh nonces, so a recorded proof is
  useless in another session (no replay).
- The proof names the side that made it ("server"/"client") and both node
  ids and roles, so a proof cannot be reflected back to its maker, nor
  relayed between other pairs of nodes.
- The client checks the server's proof before proving itself, so a client
  never authenticates to a server that does not know the secret; a server
  serves no request before it has checked the client's proof.
- Comparisons are constant-time (`hmac.compare_digest`).
- Malformed handshake bodies raise `MalformedFrame`; a wrong proof raises
  `AuthenticationError` naming the likely cause (a secret mismatch).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import msgpack

from coord.wire.errors import AuthenticationError, MalformedFrame

DOMAIN = b"ddfs-rpc-auth-v1\x00"
NONCE_SIZE = 32
_MAX_ROLE = 64


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is on the other end, after authentication."""

    node_id: int
    role: str


def _proof(secret: bytes, side: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, DOMAIN + side + b"\x00" + transcript, hashlib.sha256).digest()


def _transcript(client: PeerInfo, server: PeerInfo, nonce_c: bytes, nonce_s: bytes) -> bytes:
    packed: bytes = msgpack.packb(
        [client.node_id, client.role, server.node_id, server.role, nonce_c, nonce_s]
    )
    return packed


def _unpack_map(body: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedFrame(f"{what}: body is not msgpack ({type(exc).__name__})") from None
    if type(value) is not dict:
        raise MalformedFrame(f"{what}: body is not a map")
    return value


def _field(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if type(value) is not kind:
        raise MalformedFrame(f"{what}: field {key!r} missing or not {kind.__name__}")
    return value


def _peer(body: dict[str, Any], what: str) -> tuple[PeerInfo, bytes]:
    node_id = _field(body, "id", int, what)
    role = _field(body, "role", str, what)
    nonce = _field(body, "nonce", bytes, what)
    if not 0 <= node_id < 1 << 64 or len(role) > _MAX_ROLE or len(nonce) != NONCE_SIZE:
        raise MalformedFrame(f"{what}: id, role or nonce out of range")
    return PeerInfo(node_id, role), nonce


def _check_secret(secret: bytes) -> None:
    if not secret:
        raise ValueError("the cluster secret must not be empty")


class ClientHandshake:
    """The client's side: `hello()`, then `on_challenge(body)` returns the PROOF body."""

    def __init__(self, secret: bytes, me: PeerInfo, nonce: bytes) -> None:
        _check_secret(secret)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        self._secret = secret
        self._me = me
        self._nonce = nonce
        self.server: PeerInfo | None = None  # set once the server's proof verified

    def hello(self) -> bytes:
        body: bytes = msgpack.packb(
            {"id": self._me.node_id, "role": self._me.role, "nonce": self._nonce}
        )
        return body

    def on_challenge(self, body: bytes | memoryview) -> bytes:
        """Verify the server; return our proof.  Raises AuthenticationError on mismatch."""
        fields = _unpack_map(body, "CHALLENGE")
        server, nonce_s = _peer(fields, "CHALLENGE")
        proof_s = _field(fields, "proof", bytes, "CHALLENGE")
        transcript = _transcript(self._me, server, self._nonce, nonce_s)
        if not hmac.compare_digest(proof_s, _proof(self._secret, b"server", transcript)):
            raise AuthenticationError(
                f"cluster secret mismatch: server node {server.node_id} ({server.role}) "
                "could not prove it knows our cluster secret"
            )
        self.server = server
        packed: bytes = msgpack.packb({"proof": _proof(self._secret, b"client", transcript)})
        return packed


class ServerHandshake:
    """The server's side: `on_hello(body)` returns CHALLENGE; `on_proof(body)` the peer."""

    def __init__(self, secret: bytes, me: PeerInfo, nonce: bytes) -> None:
        _check_secret(secret)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        self._secret = secret
        self._me = me
        self._nonce = nonce
        self._client: PeerInfo | None = None
        self._transcript = b""

    def on_hello(self, body: bytes | memoryview) -> bytes:
        if self._client is not None:
            raise MalformedFrame("HELLO sent twice")
        client, nonce_c = _peer(_unpack_map(body, "HELLO"), "HELLO")
        self._client = client
        self._transcript = _transcript(client, self._me, nonce_c, self._nonce)
        packed: bytes = msgpack.packb(
            {
                "id": self._me.node_id,
                "role": self._me.role,
                "nonce": self._nonce,
                "proof": _proof(self._secret, b"server", self._transcript),
            }
        )
        return packed

    def on_proof(self, body: bytes | memoryview) -> PeerInfo:
        """Verify the client; return who it is.  Raises AuthenticationError on mismatch."""
        if self._client is None:
            raise MalformedFrame("PROOF before HELLO")
        proof_c = _field(_unpack_map(body, "PROOF"), "proof", bytes, "PROOF")
        if not hmac.compare_digest(proof_c, _proof(self._secret, b"client", self._transcript)):
            raise AuthenticationError(
                f"cluster secret mismatch: client node {self._client.node_id} "
                f"({self._client.role}) could not prove it knows our cluster secret"
            )
        return self._client
