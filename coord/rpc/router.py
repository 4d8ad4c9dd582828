"""Handler tables: which function answers which method.

Two equivalent ways to register handlers::

    router = Router()
    router.add(GetAttr, getattr_handler)

    class MetaService:
        @handles(GetAttr)
        async def getattr(self, req: GetAttr, ctx: CallContext) -> GetAttrReply: ...

    router.include(MetaService())

A handler takes (message, CallContext).  Request handlers return the reply
dataclass (or None when the reply type is None) or raise `RemoteError` to
send an error reply; notification handlers return None.

Invariants:
- `async def` handlers run in their own task (concurrent with other calls
  on the connection, cancelled when the caller's budget runs out or it
  sends CANCEL).  Plain `def` handlers run inline in the connection's task:
  cheapest, they cannot block, and must be quick.
- `add_deferred` handlers are plain `def`s that start the work and return;
  the work answers later through the `reply` callable it was given (on the
  trio thread), with the reply dataclass or a `RemoteError`.  The server
  keeps every call semantic (deadline -> TIMEOUT, CANCEL -> CANCELLED,
  exactly one reply, errors -> INTERNAL) without a task per call; a handler
  may return a callable the server calls when it stops waiting (so the work
  can drop its reference to `reply`).  Only for at-least-once methods.
- A method has at most one handler per router.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from coord.rpc.auth import PeerInfo
from coord.wire.schema import Converter, NotificationSpec, RequestSpec, Semantics, codec, spec_of

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_ddfs_rpc_handles"


class CallContext:
    """What a handler knows about the call besides its arguments.  Read-only.

    A plain slotted class rather than a frozen dataclass: one is built per
    call on the server's hot path, and frozen construction costs a
    `object.__setattr__` per field.
    """

    __slots__ = ("budget", "deadline", "lamport", "method", "peer", "request_id")

    def __init__(
        self, peer: PeerInfo, method: str, request_id: int, lamport: int,
        budget: float | None, deadline: float,
    ) -> None:
        self.peer = peer  # the authenticated caller
        self.method = method
        self.request_id = request_id  # 0 for notifications
        self.lamport = lamport  # our Lamport time after merging the message's stamp
        self.budget = budget  # the caller's remaining budget on arrival (seconds), or None
        self.deadline = deadline  # the same budget as a trio-clock deadline (inf: none)

    def __repr__(self) -> str:
        return (f"CallContext(peer={self.peer}, method={self.method!r}, "
                f"request_id={self.request_id}, budget={self.budget})")

    def remaining(self) -> float:
        """Seconds left before the caller gives up (inf if it set no deadline)."""
        if self.deadline == math.inf:
            return math.inf
        return self.deadline - trio.current_time()


# A deferred call's answer: the reply dataclass (None if its type is None) or an error.
ReplyFn = Callable[[Any], None]
# A deferred handler: (request, context, reply) -> an optional "stop, nobody waits" hook.
DeferredFn = Callable[[Any, CallContext, ReplyFn], Callable[[], None] | None]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    fn: Callable[[Any, CallContext], Any]
    is_async: bool
    decode: Converter  # raw msgpack fields -> message (raises FieldTypeError)
    semantics: Semantics | None  # None for notifications
    reply_type: type | None
    encode_reply: Converter | None  # None for notifications
    start: DeferredFn | None = None  # set for `add_deferred` routes (then fn is unused)


def handles(message_type: type) -> Callable[[F], F]:
    """Mark a method as the handler of `message_type` (collected by `Router.include`)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, message_type)
        return fn

    return mark


class Router:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    @property
    def routes(self) -> dict[str, Route]:
        return self._routes

    def add(self, message_type: type, fn: Callable[[Any, CallContext], Any]) -> Router:
        spec = spec_of(message_type)
        if spec.method in self._routes:
            raise ValueError(f"method {spec.method!r} already has a handler")
        is_async = inspect.iscoroutinefunction(fn)
        if isinstance(spec, RequestSpec):
            reply = codec(spec.reply_type)
            self._routes[spec.method] = Route(
                spec.method, fn, is_async, codec(spec.request_type).decode,
                spec.semantics, spec.reply_type, reply.encode,
            )
        else:
            assert isinstance(spec, NotificationSpec)
            self._routes[spec.method] = Route(
                spec.method, fn, is_async, codec(spec.notification_type).decode,
                None, None, None,
            )
        return self

    def add_deferred(self, message_type: type, fn: DeferredFn) -> Router:
        """Register a deferred handler (see the module docstring) for a request."""
        spec = spec_of(message_type)
        if not isinstance(spec, RequestSpec) or spec.semantics is not Semantics.AT_LEAST_ONCE:
            # The reply cache's waiting retries need an event per execution; not
            # worth building until an at-most-once method needs this path.
            raise ValueError(f"{spec.method!r}: deferred handlers serve at-least-once requests")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"{spec.method!r}: a deferred handler is a plain def")
        self.add(message_type, _never_called)
        route = self._routes[spec.method]
        self._routes[spec.method] = Route(
            route.method, _never_called, False, route.decode, route.semantics,
            route.reply_type, route.encode_reply, fn,
        )
        return self

    def include(self, service: object) -> Router:
        """Register every method of `service` marked with `@handles`."""
        found = 0
        for name in dir(type(service)):
            attr = getattr(type(service), name, None)
            message_type = getattr(attr, _MARK, None)
            if message_type is not None:
                self.add(message_type, getattr(service, name))
                found += 1
        if not found:
            raise ValueError(f"{type(service).__qualname__} has no @handles methods")
        return self


def _never_called(req: Any, ctx: CallContext) -> None:
    raise AssertionError("a deferred route is started through Route.start")
