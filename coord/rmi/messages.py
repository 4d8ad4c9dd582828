"""The RMI requests on the RPC layer.

Invariants: `rmi.invoke` is at-most-once (an object's method may have side
effects; a retransmission must not run it twice); renewals and releases are
idempotent, so at-least-once.  Arguments and results are opaque bytes here,
marshalled by `codec` (so handles can travel inside them).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.wire.schema import Request, Semantics, request


@dataclass(frozen=True, slots=True)
class InvokeReply:
    result: bytes  # codec.pack(return value)


@request("rmi.invoke", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class Invoke(Request[InvokeReply]):
    handle: int
    method: str
    args: bytes  # codec.pack(list of positional arguments)


@dataclass(frozen=True, slots=True)
class LeaseItem:
    handle: int
    token: int


@dataclass(frozen=True, slots=True)
class Renewed:
    handle: int
    granted: float  # seconds; 0.0: refused (the object is gone, or not ours)


@dataclass(frozen=True, slots=True)
class RenewReply:
    results: list[Renewed]


@request("rmi.renew", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Renew(Request[RenewReply]):
    items: list[LeaseItem]
    duration: float = 0.0  # 0: the server's default term


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    released: int  # how many of the items were dropped


@request("rmi.release", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Release(Request[ReleaseReply]):
    items: list[LeaseItem]
