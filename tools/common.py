"""Shared command-line plumbing: the cluster secret, member lists, RPC clients.

The secret comes from `--secret-file`, else `$DDFS_SECRET_FILE`, else
`$DDFS_SECRET` (the value itself); a missing or empty secret is a UserError.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from coord.raft.types import NodeId
from coord.rpc import ClientConfig, RpcClient, TcpConnector
from coord.rpc.transport import parse_tcp_address
from tools.cli import UserError


def add_secret_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-file", type=Path, default=None,
        help="file holding the cluster secret (default: $DDFS_SECRET_FILE, or $DDFS_SECRET)",
    )


def read_secret(args: argparse.Namespace) -> bytes:
    path = args.secret_file or (
        Path(os.environ["DDFS_SECRET_FILE"]) if os.environ.get("DDFS_SECRET_FILE") else None
    )
    if path is not None:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise UserError(f"cannot read the cluster secret from {path}: {exc.strerror}") from None
        if not secret:
            raise UserError(f"the cluster secret file {path} is empty")
        return secret
    value = os.environ.get("DDFS_SECRET", "").encode()
    if not value:
        raise UserError("no cluster secret: pass --secret-file or set DDFS_SECRET_FILE")
    return value


def write_new_secret(path: Path) -> None:
    """Create a random secret readable only by its owner (idempotent: keeps an existing one)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def parse_members(text: str) -> dict[NodeId, str]:
    """"1=host:port,2=host:port,..." -> {1: "host:port", ...}."""
    members: dict[NodeId, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        ident, sep, address = item.partition("=")
        if not sep or not ident.isdigit():
            raise UserError(f"bad member {item!r}: expected ID=HOST:PORT")
        try:
            parse_tcp_address(address)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        members[NodeId(int(ident))] = address
    if not members:
        raise UserError("no members given")
    return members


def parse_endpoints(text: str) -> list[str]:
    """"host:port,host:port" (or ID=host:port items) -> addresses."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        address = item.partition("=")[2] if "=" in item else item
        try:
            parse_tcp_address(address)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        out.append(address)
    if not out:
        raise UserError("no endpoints given")
    return out


def add_endpoints_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", default=os.environ.get("DDFS_ENDPOINTS", "127.0.0.1:7001"),
        help="metadata members, host:port[,host:port...] (default: $DDFS_ENDPOINTS)",
    )


def rpc_client(secret: bytes, role: str = "tool") -> RpcClient:
    return RpcClient(
        ClientConfig(node_id=secrets.randbits(63), secret=secret, role=role), TcpConnector()
    )
