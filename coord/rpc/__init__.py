"""RPC for every ddfs role: typed calls over authenticated, multiplexed connections.

See docs/rpc.md.  The public API is re-exported here::

    from coord.rpc import RpcClient, RpcServer, Router, handles, request, Request
"""

from coord.rpc.auth import PeerInfo
from coord.rpc.client import RpcClient
from coord.rpc.config import ClientConfig, RetryPolicy, ServerConfig
from coord.rpc.memory import Fault, FaultyStream, MemoryListener, MemoryNetwork
from coord.rpc.router import CallContext, Router, handles
from coord.rpc.server import RpcServer
from coord.rpc.transport import Connector, TcpConnector
from coord.wire.errors import (
    AuthenticationError,
    ConnectionLost,
    ErrorCode,
    ProtocolError,
    RemoteError,
    ReplyExpired,
    RpcError,
    Timeout,
    Unavailable,
    is_transient,
)
from coord.wire.schema import Notification, Request, Semantics, notification, request

__all__ = [
    "AuthenticationError",
    "CallContext",
    "ClientConfig",
    "ConnectionLost",
    "Connector",
    "ErrorCode",
    "Fault",
    "FaultyStream",
    "MemoryListener",
    "MemoryNetwork",
    "Notification",
    "PeerInfo",
    "ProtocolError",
    "RemoteError",
    "ReplyExpired",
    "Request",
    "RetryPolicy",
    "Router",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "Semantics",
    "ServerConfig",
    "TcpConnector",
    "Timeout",
    "Unavailable",
    "handles",
    "is_transient",
    "notification",
    "request",
]
