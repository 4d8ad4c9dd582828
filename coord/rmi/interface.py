"""Remote interfaces: the list of methods an exported object offers.

An interface is a class (a `typing.Protocol` reads best) whose public
`async def` methods are the remotely callable ones, registered under a
global name::

    @remote_interface("fs.OpenFile")
    class OpenFile(Protocol):
        async def read(self, offset: int, size: int) -> bytes: ...
        async def write(self, offset: int, data: bytes) -> int: ...

Invariants:
* Only the methods declared by the interface (public, `async def`, defined
  in it or in a remote interface it extends) are callable remotely; an
  object's other attributes are unreachable whatever the caller sends.
* A method whose return annotation is another remote interface returns a
  remote object: the server exports what the implementation returns and the
  caller receives a proxy for it (objects as return values).
* Names are global and unique, like RPC method names; re-registering the
  same class (a module reload) is allowed.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_MARK = "__rmi_interface__"
_REGISTRY: dict[str, type] = {}
_SPECS: dict[str, InterfaceSpec] = {}  # built lazily: annotations may name later classes


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    signature: inspect.Signature  # without `self`: what a caller must pass
    returns: str | None  # the name of the remote interface it returns, if any


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    name: str
    cls: type
    methods: dict[str, MethodSpec]


def remote_interface(name: str) -> Callable[[type[T]], type[T]]:
    """Register `cls` as the remote interface `name`."""

    def register(cls: type[T]) -> type[T]:
        if not name or len(name) > 200:
            raise ValueError(f"bad interface name {name!r}")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise ValueError(f"interface {name!r} is already registered to {old.__qualname__}")
        setattr(cls, _MARK, name)
        _REGISTRY[name] = cls
        _SPECS.pop(name, None)
        return cls

    return register


def interface_name(cls: type) -> str | None:
    """The registered name of a remote interface class (None for anything else)."""
    name = cls.__dict__.get(_MARK)
    return name if isinstance(name, str) else None


def spec_of(iface: type | str) -> InterfaceSpec:
    """The (cached) method table of a remote interface, by class or name."""
    name = iface if isinstance(iface, str) else interface_name(iface)
    if name is None or name not in _REGISTRY:
        raise TypeError(f"{iface!r} is not a registered remote interface")
    found = _SPECS.get(name)
    if found is None:
        found = _SPECS[name] = _build(name, _REGISTRY[name])
    return found


def _build(name: str, cls: type) -> InterfaceSpec:
    methods: dict[str, MethodSpec] = {}
    for klass in reversed(cls.__mro__):  # bases first: the interface's own win
        if klass is not cls and interface_name(klass) is None:
            continue
        for attr, fn in vars(klass).items():
            if attr.startswith("_") or not callable(fn):
                continue
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{cls.__qualname__}.{attr} must be `async def` to be remote")
            methods[attr] = _method(attr, fn, klass)
    if not methods:
        raise TypeError(f"remote interface {cls.__qualname__} declares no methods")
    return InterfaceSpec(name, cls, methods)


def _method(attr: str, fn: Callable[..., Any], owner: type) -> MethodSpec:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]  # drop self
    for p in params:
        # Calls travel as a positional list: every parameter must be fillable by position.
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{owner.__qualname__}.{attr}: *args, **kwargs and keyword-only "
                            "parameters cannot be remote")
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError) as exc:
        # Silently ignoring it would turn a remote-object return into a plain value.
        raise TypeError(f"{owner.__qualname__}.{attr}: annotations must resolve at module "
                        f"level ({exc})") from None
    ret = hints.get("return")
    returns = interface_name(ret) if isinstance(ret, type) else None
    return MethodSpec(attr, sig.replace(parameters=params), returns)
