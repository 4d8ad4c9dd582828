"""A small declarative msgpack codec for the FS commands, queries and results.

The FS encodings are persisted (commands in the Raft log, results in the
session reply cache), so each message's wire form is pinned by an explicit
spec: a tag number and the list of (field name, kind) in wire order, written
next to the class.  A message travels as ``[tag, field, ...]``.

Invariants:

* decoding returns a fully validated value or raises `CodecError` (never a
  TypeError/KeyError/ValueError from deep inside), so a malformed entry is
  a deterministic BAD_COMMAND on every replica;
* tags of one `Registry` are unique; tags are persisted: add new ones,
  never renumber or reuse them;
* `decode(encode(m)) == m` for every registered message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from coord.kv.codec import CodecError, as_bool, as_bytes, as_int, as_list, as_str, pack, unpack
from fs.types import (
    Attr,
    ChunkHandle,
    ChunkLocation,
    ChunkVersion,
    Cred,
    DirEntry,
    InodeId,
    ServerId,
    SetAttrFields,
    StatFs,
)

M = TypeVar("M")

_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Kind:
    """How one field travels: `enc` to a msgpack value, `dec` back (raising CodecError)."""

    enc: Callable[[Any], Any]
    dec: Callable[[Any, str], Any]


def _same(value: Any) -> Any:
    return value


def _u64(obj: object, what: str) -> int:
    value = as_int(obj, what)
    if value > _U64_MAX:
        raise CodecError(f"{what}: {value} does not fit in 64 bits")
    return value


def _opt(kind: Kind) -> Kind:
    return Kind(
        lambda v: None if v is None else kind.enc(v),
        lambda o, w: None if o is None else kind.dec(o, w),
    )


def tuple_of(kind: Kind) -> Kind:
    return Kind(
        lambda v: [kind.enc(x) for x in v],
        lambda o, w: tuple(kind.dec(x, w) for x in as_list(o, w)),
    )


U = Kind(_same, _u64)  # an unsigned 64-bit integer (ids, sizes, modes, times)
B = Kind(_same, as_bytes)
S = Kind(_same, as_str)
BOOL = Kind(_same, as_bool)
OPT_U = _opt(U)
U_TUPLE = tuple_of(U)
B_TUPLE = tuple_of(B)


def _cred_dec(obj: object, what: str) -> Cred:
    uid, gid, groups, pid = as_list(obj, what, 4)
    return Cred(
        _u64(uid, "uid"),
        _u64(gid, "gid"),
        tuple(_u64(g, "group") for g in as_list(groups, "groups")),
        _u64(pid, "pid"),
    )


CRED = Kind(lambda c: [c.uid, c.gid, list(c.groups), c.pid], _cred_dec)


def _fields_dec(obj: object, what: str) -> SetAttrFields:
    values = [None if v is None else _u64(v, what) for v in as_list(obj, what, 6)]
    mode, uid, gid, size, atime_ns, mtime_ns = values
    # times_now is not part of the fields' wire form: SetAttr carries it.
    return SetAttrFields(mode, uid, gid, size, atime_ns, mtime_ns)


SETATTR = Kind(
    lambda f: [f.mode, f.uid, f.gid, f.size, f.atime_ns, f.mtime_ns], _fields_dec
)


def _attr_enc(a: Attr) -> list[int]:
    return [
        a.inode, a.mode, a.nlink, a.uid, a.gid, a.size,
        a.atime_ns, a.mtime_ns, a.ctime_ns, a.rdev, a.blocks,
    ]


def _attr_dec(obj: object, what: str) -> Attr:
    v = [_u64(x, what) for x in as_list(obj, what, 11)]
    return Attr(InodeId(v[0]), *v[1:])


ATTR = Kind(_attr_enc, _attr_dec)


def _location_dec(obj: object, what: str) -> ChunkLocation:
    index, handle, version, replicas = as_list(obj, what, 4)
    reps = []
    for rep in as_list(replicas, "replicas"):
        server, address = as_list(rep, "replica", 2)
        reps.append((ServerId(_u64(server, "server")), as_str(address, "address")))
    return ChunkLocation(
        _u64(index, "index"),
        ChunkHandle(_u64(handle, "handle")),
        ChunkVersion(_u64(version, "version")),
        tuple(reps),
    )


LOCATION = Kind(
    lambda c: [c.index, c.handle, c.version, [[s, a] for s, a in c.replicas]], _location_dec
)


def _entry_dec(obj: object, what: str) -> DirEntry:
    name, attr, cookie = as_list(obj, what, 3)
    return DirEntry(as_bytes(name, "name"), _attr_dec(attr, "attr"), _u64(cookie, "cookie"))


ENTRY = Kind(lambda e: [e.name, _attr_enc(e.attr), e.cookie], _entry_dec)


def _statfs_dec(obj: object, what: str) -> StatFs:
    return StatFs(*(_u64(x, what) for x in as_list(obj, what, 7)))


STATFS = Kind(
    lambda s: [s.block_size, s.blocks, s.blocks_free, s.blocks_avail, s.files,
               s.files_free, s.name_max],
    _statfs_dec,
)


@dataclass(frozen=True, slots=True)
class _Spec:
    tag: int
    cls: type
    fields: tuple[tuple[str, Kind], ...]


class Registry(Generic[M]):
    """The messages of one family (commands, queries or results) by tag and class."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._by_tag: dict[int, _Spec] = {}
        self._by_cls: dict[type, _Spec] = {}

    def add(self, tag: int, cls: type, *fields: tuple[str, Kind]) -> None:
        names = {f.name for f in dataclasses.fields(cls)}
        if tag in self._by_tag or cls in self._by_cls or {n for n, _ in fields} != names:
            raise ValueError(f"bad spec for {cls.__name__} (tag {tag})")
        spec = _Spec(tag, cls, tuple(fields))
        self._by_tag[tag] = spec
        self._by_cls[cls] = spec

    def classes(self) -> tuple[type, ...]:
        return tuple(self._by_cls)

    def to_wire(self, msg: M) -> list[Any]:
        spec = self._by_cls.get(type(msg))
        if spec is None:
            raise TypeError(f"not a {self._what}: {msg!r}")
        return [spec.tag, *(kind.enc(getattr(msg, name)) for name, kind in spec.fields)]

    def from_wire(self, obj: object) -> M:
        items = as_list(obj, self._what)
        tag = as_int(items[0] if items else None, f"{self._what} tag")
        spec = self._by_tag.get(tag)
        if spec is None:
            raise CodecError(f"unknown {self._what} tag {tag}")
        if len(items) != len(spec.fields) + 1:
            raise CodecError(f"{spec.cls.__name__}: {len(items) - 1} fields")
        kwargs = {
            name: kind.dec(value, f"{spec.cls.__name__}.{name}")
            for (name, kind), value in zip(spec.fields, items[1:], strict=True)
        }
        try:
            msg: M = spec.cls(**kwargs)
        except (ValueError, TypeError) as exc:  # constructors' own checks
            raise CodecError(f"bad {spec.cls.__name__}: {exc}") from exc
        return msg

    def encode(self, msg: M) -> bytes:
        return pack(self.to_wire(msg))

    def decode(self, raw: bytes) -> M:
        try:
            return self.from_wire(unpack(raw))
        except CodecError:
            raise
        except (ValueError, TypeError) as exc:
            raise CodecError(f"bad {self._what}: {exc}") from exc
