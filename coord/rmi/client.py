"""The client side of RMI: typed proxies and the lease keeper.

    async with RmiClient(rpc) as rmi:               # runs the lease keeper
        files = rmi.root(Directory, address, "files")   # typed as Directory
        f = await files.open("a.txt")               # -> a proxy typed as OpenFile
        data = await f.read(0, 100)                 # one rmi.invoke RPC
        await rmi.release(f)

Invariants:
* A proxy has exactly the methods its interface declares, with the declared
  signatures: a call binds its arguments locally (a wrong call fails like a
  local one, before anything is sent) and becomes one at-most-once
  `rmi.invoke`.  A method declared to return a remote interface returns a
  proxy for the object the server exported.
* Every leased handle this client received is renewed by the keeper before
  `renew_fraction` of its term has passed, counted from the *start* of the
  call that brought it (the server granted it later, so this is early, never
  late).  A refused renewal means the object is gone: the handle is dropped.
* When the client stops (`async with` exits, or the process dies) nothing is
  renewed any more: the server collects the objects when their leases lapse.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

import trio

from coord.rmi import codec
from coord.rmi.interface import InterfaceSpec, MethodSpec, spec_of
from coord.rmi.messages import Invoke, LeaseItem, Release, Renew
from coord.rmi.server import NO_SUCH_OBJECT
from coord.rmi.table import PERMANENT, Handle, permanent_id
from coord.rpc import RemoteError, RpcClient, RpcError

T = TypeVar("T")


class NoSuchObject(RemoteError):
    """The handle names no live object: released, collected after its lease
    lapsed, or its server restarted."""

    def __init__(self, message: str) -> None:
        super().__init__(NO_SUCH_OBJECT, message)


@dataclass(slots=True)
class _Lease:
    address: str
    handle: Handle
    renew_at: float  # our clock


class Proxy:
    """Base of generated proxy classes (one per interface)."""

    __slots__ = ("_rmi_address", "_rmi_client", "_rmi_handle")

    def __init__(self, client: RmiClient, handle: Handle, address: str) -> None:
        self._rmi_client = client
        self._rmi_handle = handle
        self._rmi_address = address

    def __repr__(self) -> str:
        h = self._rmi_handle
        return f"<{h.interface} proxy {h.id} at {self._rmi_address}>"


def handle_of(proxy: object) -> Handle:
    if not isinstance(proxy, Proxy):
        raise TypeError(f"{proxy!r} is not a remote object proxy")
    return proxy._rmi_handle


class RmiClient:
    def __init__(self, rpc: RpcClient, *, renew_fraction: float = 0.5,
                 call_timeout: float | None = None) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be in (0, 1)")
        self._rpc = rpc
        self._fraction = renew_fraction
        self._timeout = call_timeout
        self._leases: dict[tuple[str, int], _Lease] = {}
        self._wake = trio.Event()  # set when a lease is added (the keeper re-plans)
        self._stack = AsyncExitStack()  # owns the keeper's nursery while open
        self.renewals = 0  # renew RPCs sent, for tests
        self.lost = 0  # handles whose renewal was refused

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RmiClient:
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._stack.callback(nursery.cancel_scope.cancel)  # runs before the nursery exits
        nursery.start_soon(self._keeper, name="rmi-lease-keeper")
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.__aexit__(et, ev, tb)

    # ------------------------------------------------------------------ proxies

    # `iface` is typed Callable[..., T] rather than type[T] because mypy refuses
    # Protocol classes where a type[T] is expected ("only concrete class").
    def proxy(self, iface: Callable[..., T], handle: Handle, address: str) -> T:
        """A typed proxy for `handle` at `address`; its lease (if any) is renewed from now."""
        spec = spec_of(cast(type, iface))
        if handle.interface != spec.name:
            raise TypeError(f"handle is a {handle.interface}, not a {spec.name}")
        self._track(address, handle, trio.current_time())
        return cast(T, _proxy_class(spec)(self, handle, address))

    def root(self, iface: Callable[..., T], address: str, name: str) -> T:
        """The permanent object `name` at `address` (see `RmiServer.export_root`)."""
        spec = spec_of(cast(type, iface))
        return self.proxy(iface, Handle(permanent_id(name), spec.name, PERMANENT, 0.0), address)

    async def release(self, proxy: object) -> None:
        """Give the object back now (else it lives until its lease lapses)."""
        handle = handle_of(proxy)
        address = cast(Proxy, proxy)._rmi_address
        self._leases.pop((address, handle.id), None)
        if handle.token != PERMANENT:
            await self._rpc.call(address, Release([LeaseItem(handle.id, handle.token)]),
                                 timeout=self._timeout)

    # ------------------------------------------------------------------ calls

    async def invoke(self, proxy: Proxy, method: MethodSpec, args: list[Any]) -> Any:
        started = trio.current_time()
        req = Invoke(proxy._rmi_handle.id, method.name, codec.pack(args))
        try:
            reply = await self._rpc.call(proxy._rmi_address, req, timeout=self._timeout)
        except RemoteError as exc:
            if exc.code == NO_SUCH_OBJECT:
                self._leases.pop((proxy._rmi_address, proxy._rmi_handle.id), None)
                raise NoSuchObject(exc.message) from None
            raise
        result = codec.unpack(reply.result)
        if method.returns is not None and isinstance(result, Handle):
            self._track(proxy._rmi_address, result, started)
            return _proxy_class(spec_of(method.returns))(self, result, proxy._rmi_address)
        return result

    # ------------------------------------------------------------------ leases

    def _track(self, address: str, handle: Handle, anchor: float) -> None:
        if handle.token == PERMANENT:
            return
        self._leases[(address, handle.id)] = _Lease(
            address, handle, anchor + handle.lease * self._fraction)
        self._wake.set()

    async def _keeper(self) -> None:
        while True:
            due = min((lease.renew_at for lease in self._leases.values()), default=math.inf)
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            by_address: dict[str, list[_Lease]] = {}
            for lease in self._leases.values():
                if lease.renew_at <= now:
                    by_address.setdefault(lease.address, []).append(lease)
            for address, leases in by_address.items():
                await self._renew(address, leases, now)

    async def _renew(self, address: str, leases: list[_Lease], sent: float) -> None:
        items = [LeaseItem(x.handle.id, x.handle.token) for x in leases]
        self.renewals += 1
        try:
            reply = await self._rpc.call(address, Renew(items), timeout=self._timeout)
        except RpcError:
            for lease in leases:  # try again soon; the term still has some margin
                lease.renew_at = sent + lease.handle.lease * (1 - self._fraction) / 4
            return
        granted = {r.handle: r.granted for r in reply.results}
        for lease in leases:
            term = granted.get(lease.handle.id, 0.0)
            if term <= 0:
                self._leases.pop((address, lease.handle.id), None)
                self.lost += 1
            else:
                lease.renew_at = sent + term * self._fraction

    def tracked(self) -> int:
        """Leased handles this client is keeping alive."""
        return len(self._leases)


# ----------------------------------------------------------------------------- generation

_CLASSES: dict[str, type[Proxy]] = {}


def _proxy_class(spec: InterfaceSpec) -> type[Proxy]:
    cls = _CLASSES.get(spec.name)
    if cls is None:
        namespace: dict[str, Any] = {"__slots__": (), "__doc__": f"Remote {spec.name} proxy."}
        for name, method in spec.methods.items():
            namespace[name] = _remote_method(method)
        cls = _CLASSES[spec.name] = type(f"{spec.cls.__name__}Proxy", (Proxy,), namespace)
    return cls


def _remote_method(method: MethodSpec) -> Callable[..., Coroutine[Any, Any, Any]]:
    signature = method.signature

    async def call(self: Proxy, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)  # a wrong call fails here, like a local one
        bound.apply_defaults()
        return await self._rmi_client.invoke(self, method, list(bound.args))

    call.__name__ = call.__qualname__ = method.name
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                    *signature.parameters.values()])
    return call
