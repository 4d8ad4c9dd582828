"""Typed messages: frozen dataclasses registered by method name, marshalled
to and from msgpack with field-type validation.

A request type names its reply type through its generic base::

    @dataclass(frozen=True, slots=True)
    class GetAttrReply:
        size: int

    @request("meta.getattr", semantics=Semantics.AT_LEAST_ONCE)
    @dataclass(frozen=True, slots=True)
    class GetAttr(Request[GetAttrReply]):
        inode: InodeId

Invariants:
- On the wire a message is a msgpack array of its field values in
  declaration order (no field names: smaller, and no per-frame reflection).
  A shorter array is accepted when the missing trailing fields have
  defaults, and extra trailing values are ignored, so fields can be added
  at the end without breaking older peers.
- Decoding checks every value against the field's annotation and raises
  `FieldTypeError` (never TypeError/ValueError from deep inside), so a
  peer's bad input becomes a BAD_REQUEST reply, not a crash.
- Per-class codecs are compiled once (lazily, so annotations may refer to
  classes defined later in the module) and cached; the hot path only runs
  the compiled closures.
- `bytes` fields travel as msgpack bin; `bytes`, `bytearray` and
  `memoryview` values are all accepted when encoding, and decode to bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

R = TypeVar("R")
T = TypeVar("T")

Converter = Callable[[Any], Any]


class FieldTypeError(ValueError):
    """A decoded value does not match its field's annotation."""


class Semantics(enum.Enum):
    """What a caller may assume about how often a call executes.

    MAYBE: sent once, never retried; on a failure the call may or may not
    have run.  AT_LEAST_ONCE: the method is idempotent; the client retries on
    transient failures and the handler may run more than once.
    AT_MOST_ONCE: the client retransmits under the same (client id, seq) and
    the server's reply cache guarantees the handler runs at most once.
    """

    MAYBE = "maybe"
    AT_LEAST_ONCE = "at-least-once"
    AT_MOST_ONCE = "at-most-once"


class Request(Generic[R]):
    """Base of request dataclasses; `R` is the reply type (a dataclass or None)."""

    __slots__ = ()


class Notification:
    """Base of one-way message dataclasses (sent with `notify`, never answered)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Codec:
    """Compiled marshalling for one dataclass (or None for empty replies)."""

    cls: type | None
    encode: Converter  # message -> msgpack-ready value
    decode: Converter  # msgpack value -> message; raises FieldTypeError


@dataclass(frozen=True, slots=True)
class RequestSpec:
    method: str
    semantics: Semantics
    request_type: type
    reply_type: type | None


@dataclass(frozen=True, slots=True)
class NotificationSpec:
    method: str
    notification_type: type


_REQUESTS: dict[str, RequestSpec] = {}
_NOTIFICATIONS: dict[str, NotificationSpec] = {}
_SPEC_OF: dict[type, RequestSpec | NotificationSpec] = {}
_CODECS: dict[type | None, Codec] = {}


def _check_name(method: str, cls: type) -> None:
    if not method or not method.isascii() or len(method) > 200:
        raise ValueError(f"bad method name {method!r}")
    old = _REQUESTS.get(method) or _NOTIFICATIONS.get(method)
    if old is None:
        return
    old_cls = old.request_type if isinstance(old, RequestSpec) else old.notification_type
    if (old_cls.__module__, old_cls.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method {method!r} is already registered to {old_cls.__qualname__}")


def _reply_type_of(cls: type) -> type | None:
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is Request:
            (arg,) = typing.get_args(base)
            if arg is None or arg is type(None):
                return None
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                return arg
            raise TypeError(f"{cls.__qualname__}: reply type must be a dataclass or None, "
                            f"not {arg!r} (forward references are not resolved)")
    raise TypeError(f"{cls.__qualname__} must subclass Request[ReplyType]")


def request(
    method: str, *, semantics: Semantics = Semantics.AT_LEAST_ONCE
) -> Callable[[type[T]], type[T]]:
    """Register a request dataclass under `method` with the given call semantics."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls) or not issubclass(cls, Request):
            raise TypeError(f"{cls.__qualname__} must be a dataclass subclassing Request[...]")
        _check_name(method, cls)
        spec = RequestSpec(method, semantics, cls, _reply_type_of(cls))
        _REQUESTS[method] = spec
        _SPEC_OF[cls] = spec
        return cls

    return register


def notification(method: str) -> Callable[[type[T]], type[T]]:
    """Register a one-way message dataclass under `method`."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls) or not issubclass(cls, Notification):
            raise TypeError(f"{cls.__qualname__} must be a dataclass subclassing Notification")
        _check_name(method, cls)
        spec = NotificationSpec(method, cls)
        _NOTIFICATIONS[method] = spec
        _SPEC_OF[cls] = spec
        return cls

    return register


def request_spec(method: str) -> RequestSpec | None:
    return _REQUESTS.get(method)


def notification_spec(method: str) -> NotificationSpec | None:
    return _NOTIFICATIONS.get(method)


def spec_of(cls: type) -> RequestSpec | NotificationSpec:
    spec = _SPEC_OF.get(cls)
    if spec is None:
        raise TypeError(f"{cls.__qualname__} is not a registered request or notification")
    return spec


def codec(cls: type | None) -> Codec:
    """The (cached) codec for a dataclass, or for None (an empty reply)."""
    found = _CODECS.get(cls)
    if found is None:
        found = _compile_dataclass(cls) if cls is not None else _NONE_CODEC
        _CODECS[cls] = found
    return found


# --- compilation -------------------------------------------------------------


def _fail(expected: str, value: object) -> FieldTypeError:
    return FieldTypeError(f"expected {expected}, got {type(value).__name__}")


def _identity(value: Any) -> Any:
    return value


def _decode_none(value: Any) -> None:
    if value is not None:
        raise _fail("nil", value)


_NONE_CODEC = Codec(None, lambda _msg: None, _decode_none)


def _scalar(kind: type) -> Converter:
    name = kind.__name__

    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _fail(name, value)
        return value

    return check


def _decode_float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _fail("float", value)


def _decode_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    raise _fail("bytes", value)


def _enum(kind: type[enum.Enum]) -> tuple[Converter, Converter]:
    def decode(value: Any) -> Any:
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise FieldTypeError(f"{value!r} is not a {kind.__name__}") from None

    return operator.attrgetter("value"), decode


def _sequence(item: tuple[Converter, Converter] | None, make: type) -> tuple[Converter, Converter]:
    enc, dec = item if item is not None else (_identity, _identity)

    def encode(value: Any) -> Any:
        return value if enc is _identity else [enc(v) for v in value]

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise _fail("array", value)
        return make(dec(v) for v in value) if dec is not _identity else make(value)

    return encode, decode


def _fixed_tuple(items: list[tuple[Converter, Converter]]) -> tuple[Converter, Converter]:
    def encode(value: Any) -> Any:
        return [enc(v) for (enc, _), v in zip(items, value, strict=True)]

    def decode(value: Any) -> Any:
        if type(value) is not list or len(value) != len(items):
            raise _fail(f"array of {len(items)}", value)
        return tuple(dec(v) for (_, dec), v in zip(items, value, strict=True))

    return encode, decode


def _mapping(key: tuple[Converter, Converter], val: tuple[Converter, Converter]) -> tuple[
    Converter, Converter
]:
    kenc, kdec = key
    venc, vdec = val

    def encode(value: Any) -> Any:
        return {kenc(k): venc(v) for k, v in value.items()}

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise _fail("map", value)
        return {kdec(k): vdec(v) for k, v in value.items()}

    return encode, decode


def _union(options: list[tuple[Converter, Converter]], has_none: bool) -> tuple[
    Converter, Converter
]:
    if len(options) == 1 and has_none:
        enc, dec = options[0]
        return (lambda v: None if v is None else enc(v)), (
            lambda v: None if v is None else dec(v)
        )

    def encode(value: Any) -> Any:
        # Encoding a union is only unambiguous for passthrough alternatives.
        return value

    def decode(value: Any) -> Any:
        if value is None and has_none:
            return None
        for _, dec in options:
            try:
                return dec(value)
            except FieldTypeError:
                continue
        raise _fail("one of the union's types", value)

    return encode, decode


_SCALARS: dict[Any, tuple[Converter, Converter]] = {
    int: (_identity, _scalar(int)),
    bool: (_identity, _scalar(bool)),
    str: (_identity, _scalar(str)),
    float: (_identity, _decode_float),
    bytes: (_identity, _decode_bytes),
    type(None): (_identity, _decode_none),
    None: (_identity, _decode_none),
    Any: (_identity, _identity),
    object: (_identity, _identity),
}


def _converter(tp: Any) -> tuple[Converter, Converter]:
    """(encode, decode) for one annotation."""
    while hasattr(tp, "__supertype__"):  # NewType
        tp = tp.__supertype__
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        has_none = type(None) in args
        return _union([_converter(a) for a in args if a is not type(None)], has_none)
    if origin in (list, tuple) and (origin is list or (len(args) == 2 and args[1] is ...)):
        inner = _converter(args[0]) if args else None
        return _sequence(inner, origin)
    if origin is tuple:
        return _fixed_tuple([_converter(a) for a in args])
    if origin is dict:
        return _mapping(_converter(args[0]), _converter(args[1]))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        nested = tp

        def encode(value: Any) -> Any:
            return codec(nested).encode(value)

        def decode(value: Any) -> Any:
            return codec(nested).decode(value)

        return encode, decode
    raise TypeError(f"unsupported field type {tp!r}")


def _compile_dataclass(cls: type) -> Codec:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    convs = [_converter(hints[f.name]) for f in fields]
    encoders = [enc for enc, _ in convs]
    decoders = [dec for _, dec in convs]
    required = sum(
        1 for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    n = len(fields)
    passthrough = all(enc is _identity for enc in encoders)
    getter = operator.attrgetter(*names) if n > 1 else None

    def encode(msg: Any) -> Any:
        if n == 0:
            return ()
        if n == 1:
            value = getattr(msg, names[0])
            return (value if passthrough else encoders[0](value),)
        assert getter is not None
        values = getter(msg)
        if passthrough:
            return values  # msgpack packs the tuple as an array
        return [enc(v) for enc, v in zip(encoders, values, strict=True)]

    def decode(raw: Any) -> Any:
        if type(raw) is not list:
            raise _fail(f"{cls.__name__} as an array", raw)
        if len(raw) < required:
            raise FieldTypeError(f"{cls.__name__}: {len(raw)} values, needs {required}")
        args = []
        for name, dec, value in zip(names, decoders, raw, strict=False):
            try:
                args.append(dec(value))
            except FieldTypeError as exc:
                raise FieldTypeError(f"{cls.__name__}.{name}: {exc}") from None
        try:
            return cls(*args)
        except (TypeError, ValueError) as exc:  # e.g. a __post_init__ check
            raise FieldTypeError(f"{cls.__name__}: {exc}") from None

    return Codec(cls, encode, decode)
