"""The RPC layer's error vocabulary: wire codes, exception classes, and the
one place that decides which failures are transient.

Invariants:
- Every failure a caller can see is an `RpcError`; the class says what went
  wrong, `code` says it in the form that crosses the wire.
- `is_transient` is the only judge of "may a retry help?".  The client's
  retry loop asks it and nothing else, so the policy is written once.
- An error reply's code is a short upper-case string.  The framework's own
  codes are `ErrorCode` members; applications may use their own strings
  (e.g. "ENOENT") through `RemoteError`.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Codes the framework itself puts in ERROR frames."""

    BAD_REQUEST = "BAD_REQUEST"  # body did not decode or a field had the wrong type
    UNKNOWN_METHOD = "UNKNOWN_METHOD"  # no handler registered under that name
    INTERNAL = "INTERNAL"  # the handler raised something that is not a RemoteError
    TIMEOUT = "TIMEOUT"  # the caller's budget ran out while the handler ran
    CANCELLED = "CANCELLED"  # the caller cancelled the call
    OVERLOADED = "OVERLOADED"  # too many calls in flight on the connection
    SHUTTING_DOWN = "SHUTTING_DOWN"  # the server is draining
    REPLY_EXPIRED = "REPLY_EXPIRED"  # at-most-once reply dropped: refuse, never re-execute
    SESSION_UNKNOWN = "SESSION_UNKNOWN"  # at-most-once session not open (expired or restarted)
    PROTOCOL = "PROTOCOL"  # the peer broke the framing or the handshake
    AUTH_FAILED = "AUTH_FAILED"  # mutual authentication failed


class RpcError(Exception):
    """Base of every error the RPC layer raises to its users."""

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(RpcError):
    """The peer (or our own input) broke the wire protocol."""

    code = ErrorCode.PROTOCOL


class BadVersion(ProtocolError):
    """A frame's version byte is not one we speak."""


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the configured maximum."""


class MalformedFrame(ProtocolError):
    """A frame's header or body cannot be decoded (garbage, truncation, bad kind)."""


class Timeout(RpcError):
    """The call's deadline passed before a reply arrived."""

    code = ErrorCode.TIMEOUT


class Unavailable(RpcError):
    """The peer could not be reached (connect refused, no route, handshake timeout)."""

    code = "UNAVAILABLE"


class ConnectionLost(Unavailable):
    """The connection broke while the call was in flight; it may or may not have run."""


class AuthenticationError(RpcError):
    """Mutual authentication failed; never retried."""

    code = ErrorCode.AUTH_FAILED


class RemoteError(RpcError):
    """The server answered with an error reply.  Handlers raise it to send one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ReplyExpired(RemoteError):
    """An at-most-once call was retried after the server dropped its reply.

    The call may or may not have executed; the server refuses to run it again.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.REPLY_EXPIRED, message)


# Error-reply codes after which a fresh attempt may succeed.
_TRANSIENT_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.SHUTTING_DOWN})


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call later (perhaps elsewhere) may succeed.

    Timeouts count as transient: an attempt that timed out may have been lost
    in the network.  Whether a retry is *allowed* is the call semantics'
    business (see `Semantics`); this only says whether one could help.
    """
    if isinstance(exc, Unavailable | Timeout):
        return True
    if isinstance(exc, ReplyExpired):
        return False
    if isinstance(exc, RemoteError):
        return exc.code in _TRANSIENT_CODES
    return False


def error_from_reply(code: str, message: str) -> RpcError:
    """The exception a client raises for an ERROR frame with `code`."""
    if code == ErrorCode.REPLY_EXPIRED:
        return ReplyExpired(message)
    if code == ErrorCode.TIMEOUT:
        return Timeout(f"server: {message}")
    if code == ErrorCode.AUTH_FAILED:
        return AuthenticationError(message)
    if code == ErrorCode.PROTOCOL:
        return ProtocolError(f"server: {message}")
    return RemoteError(code, message)
