"""The server side of RMI: export objects, serve `rmi.*` calls, collect objects
whose lease lapsed.

    rmi = RmiServer(RmiConfig())
    router = rmi.routes(Router())                 # plus the server's own handlers
    handle = rmi.export(open_file, OpenFile, ctx) # inside some handler: owned by the caller
    root = rmi.export_root(directory, Directory, "files")   # permanent, addressed by name
    nursery.start_soon(rmi.run)                   # the collector

Invariants:
* A call reaches only a live object, and only a method its interface
  declares, with arguments that bind to the declared signature; everything
  else is answered with an error code (NO_SUCH_OBJECT, NO_SUCH_METHOD,
  BAD_ARGS, BAD_RESULT) and never touches the object.
* An object returned through a method declared to return a remote interface
  is exported to the caller (pass by reference), with its own lease.
* Leases are held by the calling client's RPC node id; only it renews or
  releases them.  `run` collects lapsed objects every `collect_interval` and
  runs each one's `on_collect` hook exactly once.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable
from typing import Any

import trio

from coord.lease.types import HolderId
from coord.rmi import codec
from coord.rmi.interface import spec_of
from coord.rmi.messages import (
    Invoke,
    InvokeReply,
    Release,
    ReleaseReply,
    Renew,
    Renewed,
    RenewReply,
)
from coord.rmi.table import (
    Exported,
    Handle,
    HandleId,
    NoSuchObject,
    ObjectTable,
    RmiConfig,
    TableFull,
)
from coord.rpc import CallContext, RemoteError, Router

log = logging.getLogger(__name__)

NO_SUCH_OBJECT = "NO_SUCH_OBJECT"
NO_SUCH_METHOD = "NO_SUCH_METHOD"
BAD_ARGS = "BAD_ARGS"
BAD_RESULT = "BAD_RESULT"
TOO_MANY_OBJECTS = "TOO_MANY_OBJECTS"


def holder_of(ctx: CallContext) -> HolderId:
    """The lease holder a call speaks for: the calling client's RPC node."""
    return HolderId(f"node-{ctx.peer.node_id}")


class RmiServer:
    def __init__(self, config: RmiConfig | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.table = ObjectTable(config or RmiConfig(), rng or random.Random())
        self.collected = 0  # objects removed because their lease lapsed

    def routes(self, router: Router) -> Router:
        return router.add(Invoke, self._invoke).add(Renew, self._renew).add(
            Release, self._release)

    # ------------------------------------------------------------------ exporting

    def export(self, obj: object, iface: type, owner: CallContext | HolderId, *,
               on_collect: Callable[[], None] | None = None) -> Handle:
        """Export `obj` (implementing `iface`) to a client; returns the handle to give it."""
        holder = holder_of(owner) if isinstance(owner, CallContext) else owner
        return self.table.export(obj, spec_of(iface), holder, trio.current_time(),
                                 on_collect=on_collect)

    def export_root(self, obj: object, iface: type, name: str) -> Handle:
        """A permanent object every client can reach by `name` (no lease)."""
        return self.table.export_permanent(obj, spec_of(iface), name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect objects whose lease lapsed, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.table.config.collect_interval)
            self.collect_now()

    def collect_now(self) -> int:
        gone = self.table.collect(trio.current_time())
        for entry in gone:
            self._collected(entry)
        return len(gone)

    def _collected(self, entry: Exported) -> None:
        self.collected += 1
        if entry.on_collect is not None:
            try:
                entry.on_collect()
            except Exception:  # one object's cleanup must not stop the collector
                log.exception("on_collect of handle %d failed", entry.handle.id)

    # ------------------------------------------------------------------ handlers

    async def _invoke(self, req: Invoke, ctx: CallContext) -> InvokeReply:
        entry = self._lookup(req.handle)
        method = entry.spec.methods.get(req.method)
        if method is None:
            raise RemoteError(NO_SUCH_METHOD, f"{entry.spec.name} has no remote method "
                                              f"{req.method!r}")
        args = _arguments(req.args)
        try:
            method.signature.bind(*args)
        except TypeError as exc:
            raise RemoteError(BAD_ARGS, f"{entry.spec.name}.{req.method}: {exc}") from None
        result: Any = getattr(entry.obj, req.method)(*args)
        if inspect.isawaitable(result):
            result = await result
        if method.returns is not None and result is not None:
            result = self._export_result(result, method.returns, ctx)
        try:
            return InvokeReply(codec.pack(result))
        except codec.MarshalError as exc:
            raise RemoteError(BAD_RESULT, f"{entry.spec.name}.{req.method}: {exc}") from None

    def _lookup(self, handle: int) -> Exported:
        try:
            return self.table.lookup(HandleId(handle), trio.current_time())
        except NoSuchObject as exc:
            self._drain_lapsed()
            raise RemoteError(NO_SUCH_OBJECT, str(exc)) from None

    def _drain_lapsed(self) -> None:
        # lookup found a lapsed lease: report it (and any other) now, not at the next tick.
        self.collect_now()

    def _export_result(self, obj: object, iface_name: str, ctx: CallContext) -> Handle:
        try:
            return self.table.export(obj, spec_of(iface_name), holder_of(ctx),
                                     trio.current_time())
        except TableFull as exc:
            raise RemoteError(TOO_MANY_OBJECTS, str(exc)) from None

    def _renew(self, req: Renew, ctx: CallContext) -> RenewReply:
        now, owner = trio.current_time(), holder_of(ctx)
        duration = req.duration if req.duration > 0 else None
        return RenewReply([
            Renewed(item.handle, self.table.renew(HandleId(item.handle), owner, item.token,
                                                  now, duration))
            for item in req.items])

    def _release(self, req: Release, ctx: CallContext) -> ReleaseReply:
        now, owner = trio.current_time(), holder_of(ctx)
        released = 0
        for item in req.items:
            entry = self.table.release(HandleId(item.handle), owner, item.token, now)
            if entry is not None:
                released += 1
                if entry.on_collect is not None:
                    entry.on_collect()
        return ReleaseReply(released)


def _arguments(raw: bytes) -> list[Any]:
    try:
        args = codec.unpack(raw)
    except codec.MarshalError as exc:
        raise RemoteError(BAD_ARGS, str(exc)) from None
    if not isinstance(args, list):
        raise RemoteError(BAD_ARGS, "arguments must be a list")
    return args
